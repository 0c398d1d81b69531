"""The mannequin and the COCO-17 keypoints, defined on the Rigify human metarig.

Everything here is plain numpy over the posed rig: the renderer hands over the world-space
head and tail of the bones in :data:`RIG_BONES` and the head bone's deform matrix (rest space
-> posed world); this module says where the body's primitives are and where each keypoint is.

Keypoints (each a documented point on the rig):

==============  ===========================================================================
nose            tail of ``nose.001``: the nose tip landmark
left/right eye  tail of ``eye.L`` / ``eye.R``: the front of the eyeball (its head is its back)
left/right ear  head of ``ear.L`` / ``ear.R``: where the ear meets the head
shoulder        head of ``upper_arm.*``: the glenohumeral joint centre
elbow           head of ``forearm.*``
wrist           head of ``hand.*``
hip             head of ``thigh.*``: the hip joint centre
knee            head of ``shin.*``
ankle           head of ``foot.*``
==============  ===========================================================================

"Left" is the body's own left (``.L`` bones), as in COCO. The mannequin is a chain of capsules
(cylinder + end spheres) along the limb and spine bones, bars across hips and shoulders, and an
ellipsoid head with a small nose, so every keypoint lies inside (or on) its own body.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from posepipe.datasets.schema import COCO17_JOINTS

from .collision import penetrations

# (COCO joint, bone, "head" or "tail")
KEYPOINT_BONES: tuple[tuple[str, str, str], ...] = (
    ("nose", "nose.001", "tail"),
    ("left_eye", "eye.L", "tail"), ("right_eye", "eye.R", "tail"),
    ("left_ear", "ear.L", "head"), ("right_ear", "ear.R", "head"),
    ("left_shoulder", "upper_arm.L", "head"), ("right_shoulder", "upper_arm.R", "head"),
    ("left_elbow", "forearm.L", "head"), ("right_elbow", "forearm.R", "head"),
    ("left_wrist", "hand.L", "head"), ("right_wrist", "hand.R", "head"),
    ("left_hip", "thigh.L", "head"), ("right_hip", "thigh.R", "head"),
    ("left_knee", "shin.L", "head"), ("right_knee", "shin.R", "head"),
    ("left_ankle", "foot.L", "head"), ("right_ankle", "foot.R", "head"),
)
assert tuple(k[0] for k in KEYPOINT_BONES) == COCO17_JOINTS

# Capsules: (name, group, from (bone, end), to (bone, end), radius in metarig units, "limb"/"torso").
_CAPSULES: tuple[tuple[str, str, tuple[str, str], tuple[str, str], float, str], ...] = (
    ("pelvis", "torso", ("spine", "head"), ("spine", "tail"), 0.12, "torso"),
    ("waist", "torso", ("spine.001", "head"), ("spine.001", "tail"), 0.11, "torso"),
    ("belly", "torso", ("spine.002", "head"), ("spine.002", "tail"), 0.12, "torso"),
    ("chest", "torso", ("spine.003", "head"), ("spine.003", "tail"), 0.13, "torso"),
    ("hips", "torso", ("thigh.L", "head"), ("thigh.R", "head"), 0.09, "torso"),
    ("shoulders", "torso", ("upper_arm.L", "head"), ("upper_arm.R", "head"), 0.065, "torso"),
    ("neck", "neck", ("spine.004", "head"), ("spine.005", "tail"), 0.05, "limb"),
) + tuple(
    cap
    for s in ("L", "R")
    for cap in (
        (f"upper_arm.{s}", f"arm.{s}", (f"upper_arm.{s}", "head"), (f"upper_arm.{s}", "tail"), 0.05, "limb"),
        (f"forearm.{s}", f"arm.{s}", (f"forearm.{s}", "head"), (f"forearm.{s}", "tail"), 0.04, "limb"),
        (f"hand.{s}", f"arm.{s}", (f"hand.{s}", "head"), (f"palm.02.{s}", "tail"), 0.035, "limb"),
        (f"thigh.{s}", f"leg.{s}", (f"thigh.{s}", "head"), (f"thigh.{s}", "tail"), 0.075, "limb"),
        (f"shin.{s}", f"leg.{s}", (f"shin.{s}", "head"), (f"shin.{s}", "tail"), 0.055, "limb"),
        (f"foot.{s}", f"leg.{s}", (f"foot.{s}", "head"), (f"foot.{s}", "tail"), 0.04, "limb"),
    )
)
CAPSULE_NAMES: tuple[str, ...] = tuple(c[0] for c in _CAPSULES)
# Parts whose groups touch by design; every other pair of groups must stay apart.
_ATTACHED = {("torso", "neck"), ("torso", "arm.L"), ("torso", "arm.R"), ("torso", "leg.L"), ("torso", "leg.R"),
             ("neck", "head")}
_ATTACH_PARTS = {"upper_arm.L", "upper_arm.R", "thigh.L", "thigh.R", "neck", "head"}

# Head ellipsoid and nose sphere in the metarig's rest space (metres of the 1.98 m metarig).
HEAD_CENTER = np.array([0.0, -0.04, 1.87])
HEAD_AXES = np.array([0.095, 0.135, 0.13])  # ears (x=0.092) sit just under the side
NOSE_CENTER = np.array([0.0, -0.183, 1.859])  # head of nose.001
NOSE_RADIUS = 0.025
FACE_TOLERANCE = 0.045  # face landmarks sit at most about this deep under the head's surface

RIG_BONES: tuple[str, ...] = tuple(sorted(
    {b for _, b, _ in KEYPOINT_BONES} | {c[2][0] for c in _CAPSULES} | {c[3][0] for c in _CAPSULES}
))
HEAD_BONE = "spine.006"


@dataclass
class Body:
    """One posed mannequin in world space."""

    capsules: np.ndarray  # (K, 2, 3) segment ends
    radii: np.ndarray  # (K,)
    names: tuple[str, ...]
    head: np.ndarray  # 4x4: unit sphere -> head ellipsoid in world
    nose: np.ndarray  # 4x4: unit sphere -> nose sphere in world
    keypoints: np.ndarray  # (17, 3) world
    scale: float = 1.0  # the armature's uniform scale

    @functools.cached_property
    def tolerances(self) -> np.ndarray:
        """(17,) how deep each keypoint may sit inside its own body. Computed on first use: only
        the pose finally kept needs it, not every re-drawn one."""
        tol = np.full(len(self.keypoints), FACE_TOLERANCE * self.scale)
        tol[5:] = _containing_radii(self.keypoints[5:], self.capsules, self.radii)
        return tol


# Rows of the (bone, end) table build_body gathers points from: the heads of RIG_BONES, then their tails.
def _row(ref: tuple[str, str]) -> int:
    return RIG_BONES.index(ref[0]) + len(RIG_BONES) * (ref[1] == "tail")


_SEG_ROWS = np.array([[_row(c[2]), _row(c[3])] for c in _CAPSULES])
_KP_ROWS = np.array([_row((bone, end)) for _, bone, end in KEYPOINT_BONES])


def build_body(rig: dict[str, tuple[np.ndarray, np.ndarray]], head_deform: np.ndarray, scale: float,
               limb_thickness: float = 1.0, torso_width: float = 1.0) -> Body:
    """``rig``: bone -> (world head, world tail); ``head_deform``: rest -> world of the head bone.

    ``scale`` is the armature's uniform scale (radii are in metarig units and scale with it).
    """
    heads = np.array([rig[name][0] for name in RIG_BONES], dtype=np.float64)
    tails = np.array([rig[name][1] for name in RIG_BONES], dtype=np.float64)
    return build_body_from_ends(heads, tails, head_deform, scale, limb_thickness, torso_width)


_BASE_RADII = np.array([c[4] for c in _CAPSULES])
_IS_TORSO = np.array([c[5] == "torso" for c in _CAPSULES])


def _affine(center: np.ndarray, axes: np.ndarray) -> np.ndarray:
    m = np.diag([*axes, 1.0])
    m[:3, 3] = center
    return m


_HEAD_SHAPE = _affine(HEAD_CENTER, HEAD_AXES)  # unit sphere -> head ellipsoid, rest space
_NOSE_SHAPE = _affine(NOSE_CENTER, np.full(3, NOSE_RADIUS))


def build_body_from_ends(heads: np.ndarray, tails: np.ndarray, head_deform: np.ndarray, scale: float,
                         limb_thickness: float = 1.0, torso_width: float = 1.0) -> Body:
    """:func:`build_body` from (B, 3) world heads and tails in :data:`RIG_BONES` order (what
    :func:`rig.posed_ends` gives), without going through a dict: this runs for every pose re-draw."""
    table = np.concatenate([heads, tails])  # see _row
    segs = table[_SEG_ROWS]
    radii = _BASE_RADII * scale * np.where(_IS_TORSO, torso_width, limb_thickness)
    head = head_deform @ _HEAD_SHAPE
    nose = head_deform @ _NOSE_SHAPE
    kps = table[_KP_ROWS]
    return Body(segs, radii, CAPSULE_NAMES, head, nose, kps, scale)


def _containing_radii(points: np.ndarray, segs: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Per point: 1.5 x the largest radius among the capsules holding it (else the smallest radius).

    A ray entering the limb obliquely (45 degrees) meets its surface ~1.4 radii before the axis.
    """
    a, b = segs[:, 0], segs[:, 1]
    ab = b - a
    t = np.einsum("jki,ki->jk", points[:, None, :] - a[None], ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-12)
    t = np.clip(t, 0, 1)
    dist = np.linalg.norm(a[None] + ab[None] * t[..., None] - points[:, None, :], axis=2)
    inside = dist <= radii
    largest = np.where(inside, radii, -np.inf).max(axis=1)
    return np.where(inside.any(axis=1), largest * 1.5, radii.min())


def check_pairs() -> np.ndarray:
    """Capsule pairs that must not overlap: different groups, unless those groups are attached there."""
    groups = [c[1] for c in _CAPSULES]
    pairs = []
    for i in range(len(_CAPSULES)):
        for j in range(i + 1, len(_CAPSULES)):
            gi, gj = groups[i], groups[j]
            if gi == gj:
                continue
            if (gi, gj) in _ATTACHED or (gj, gi) in _ATTACHED:
                if _CAPSULES[i][0] in _ATTACH_PARTS or _CAPSULES[j][0] in _ATTACH_PARTS:
                    continue
            pairs.append((i, j))
    return np.array(pairs, dtype=np.int64)


_PAIRS = check_pairs()
_FIRST, _SECOND = np.ascontiguousarray(_PAIRS.T)  # each pair's capsules, as contiguous index arrays


def interpenetration(body: Body) -> float:
    """Worst overlap of two parts that should not touch, as a share of the thinner part's radius."""
    depth = penetrations(body.capsules, body.radii, _PAIRS)
    thinner = np.minimum(body.radii[_FIRST], body.radii[_SECOND])
    return float((depth / thinner).max()) if len(depth) else 0.0
