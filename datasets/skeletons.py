"""Mapping tables from other skeletons to COCO-17.

Each skeleton lists its joints in the source's order. A joint whose name is a COCO-17 joint maps
to it; every other joint (head_top, neck, toes, face and hand points...) is kept in the store's
``extra_keypoints`` column under the name given here, never dropped. COCO-17 joints a skeleton
lacks get v=0.

Sources of the orders:
* COCO-17: the COCO person_keypoints category.
* CrowdPose-14: the CrowdPose annotation files (12 limb joints, then ``head`` (top) and ``neck``).
* AIC-14: AI Challenger keypoint annotations ("Right Shoulder", ... "Head top", "Neck").
* MPII-16: the MPII Human Pose joint ids 0..15 (r_ankle ... l_wrist), as in its native json.
* Halpe-26/136: Halpe-FullBody; 0-16 are COCO-17, 17-25 head, neck, hip, toes and heels,
  26-93 face (68 points), 94-114 left hand, 115-135 right hand (21 each).
* Human-Art-21: COCO-17 then left/right finger and toe (field ``keypoints_21``).
* COCO-WholeBody: COCO-17 in ``keypoints``; feet, face and hands come from their own fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .schema import COCO17_JOINTS, JOINT_INDEX


@dataclass(frozen=True)
class Skeleton:
    name: str
    joints: tuple[str, ...]  # canonical names in the source's order
    # Names as they appear in files, when they differ from ``joints`` (used for detection).
    file_names: tuple[str, ...] = ()
    # Extra per-annotation fields holding more joints, e.g. COCO-WholeBody's foot_kpts.
    extra_fields: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())
    # How many leading joints the source's own ``num_keypoints`` counts (None: all of them).
    # CrowdPose counts its 12 limb joints only; Halpe counts the COCO-17 body joints only.
    counted_joints: int | None = None

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    @property
    def coco_index(self) -> tuple[int, ...]:
        """For each source joint, its COCO-17 index, or -1 when it goes to extra_keypoints."""
        return tuple(JOINT_INDEX.get(j, -1) for j in self.joints)

    @property
    def extra_names(self) -> tuple[str, ...]:
        return tuple(j for j in self.joints if j not in JOINT_INDEX)


_LIMBS12 = (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
_HALPE26_EXTRA = (
    "head_top", "neck", "hip_centre", "left_big_toe", "right_big_toe",
    "left_small_toe", "right_small_toe", "left_heel", "right_heel",
)
_FACE68 = tuple(f"face_{i}" for i in range(68))
_LEFT_HAND = tuple(f"left_hand_{i}" for i in range(21))
_RIGHT_HAND = tuple(f"right_hand_{i}" for i in range(21))
_WHOLEBODY_FOOT = (
    "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel",
)

SKELETONS: dict[str, Skeleton] = {
    s.name: s
    for s in (
        Skeleton("coco17", COCO17_JOINTS),
        Skeleton("crowdpose14", _LIMBS12 + ("head_top", "neck"), file_names=_LIMBS12 + ("head", "neck"),
                 counted_joints=12),
        Skeleton(
            "aic14",
            (
                "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
                "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
                "head_top", "neck",
            ),
        ),
        Skeleton(
            "mpii16",
            (
                "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
                "pelvis", "thorax", "upper_neck", "head_top",
                "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
            ),
        ),
        Skeleton("halpe26", COCO17_JOINTS + _HALPE26_EXTRA, counted_joints=17),
        Skeleton("halpe136", COCO17_JOINTS + _HALPE26_EXTRA + _FACE68 + _LEFT_HAND + _RIGHT_HAND, counted_joints=17),
        Skeleton(
            "humanart21",
            COCO17_JOINTS + ("left_finger", "right_finger", "left_toe", "right_toe"),
        ),
        Skeleton(
            "coco_wholebody",
            COCO17_JOINTS,
            extra_fields=(
                ("foot_kpts", _WHOLEBODY_FOOT),
                ("face_kpts", _FACE68),
                ("lefthand_kpts", _LEFT_HAND),
                ("righthand_kpts", _RIGHT_HAND),
            ),
        ),
    )
}


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def get(name: str) -> Skeleton:
    try:
        return SKELETONS[name]
    except KeyError:
        raise KeyError(f"unknown skeleton {name!r}; known: {', '.join(sorted(SKELETONS))}") from None


def detect(keypoint_names: list[str], keypoints_length: int | None, annotation_keys: set[str]) -> Skeleton | None:
    """Which skeleton a COCO-style category declares, from its names (or, without names, its size)."""
    names = tuple(_norm(n) for n in keypoint_names)
    if names:
        for skel in SKELETONS.values():
            if names in (skel.joints, tuple(_norm(n) for n in skel.file_names)):
                if skel.name == "coco17" and annotation_keys & {"foot_kpts", "face_kpts"}:
                    return SKELETONS["coco_wholebody"]
                return skel
        return None
    # No names (Halpe ships an empty list): only sizes that identify one skeleton are accepted.
    by_size = {17: "coco17", 16: "mpii16", 21: "humanart21", 26: "halpe26", 136: "halpe136"}
    if keypoints_length is not None and keypoints_length % 3 == 0:
        found = by_size.get(keypoints_length // 3)
        return SKELETONS[found] if found else None
    return None
