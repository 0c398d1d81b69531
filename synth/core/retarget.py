"""Retarget a mocap (BVH) pose onto the metarig, in numpy.

Input, per BVH joint, in the BVH armature's space (Z up, figure facing -Y, as Blender's BVH importer
leaves it): the *delta* rotation ``D = posed @ rest.T`` (what the clip did to the joint since its
rest pose) and the posed joint position. Each mapped metarig bone takes its joint's delta applied to
its own rest orientation, then the smallest extra rotation ("swing") that points it exactly along
the clip's segment from its joint to the end joint. Directions, not lengths, are copied, so the
clip's units and proportions do not matter and the metarig keeps its own. Bones that are not
mapped follow their parent. The result is each bone's local rotation, for :func:`rig.forward`.

Joint map (metarig bone <- first BVH joint name present; the end joint fixes its direction).
Names cover the CMU mocap BVH conversions (Hips, LowerBack, Spine, Spine1, Neck, Neck1, Head,
LeftShoulder, LeftArm, LeftForeArm, LeftHand, LeftUpLeg, LeftLeg, LeftFoot, LeftToeBase) and the
Truebones / Mixamo naming (Hips, Spine, Spine1, Spine2, Neck, Head, ...; a ``mixamorig:`` prefix is
ignored). Torso and head bones copy the full rotation without a swing (their segment ends differ
between skeletons); limb bones are swung onto their segment.

==============  =================================  ===========================
metarig bone    BVH joint                          end joint (direction)
==============  =================================  ===========================
spine           Hips                               -
spine.001       LowerBack, Spine                   -
spine.002       Spine, Spine1                      -
spine.003       Spine1, Spine2, Chest              -
spine.004       Neck                               -
spine.005       Neck1, Neck                        -
spine.006       Head                               -
shoulder.*      {side}Shoulder, {side}Collar       -
upper_arm.*     {side}Arm, {side}UpperArm          {side}ForeArm
forearm.*       {side}ForeArm, {side}LowerArm      {side}Hand
hand.*          {side}Hand                         (the hand bone's own tail)
thigh.*         {side}UpLeg, {side}UpperLeg,       {side}Leg, {side}LowerLeg
                {side}Thigh
shin.*          {side}Leg, {side}LowerLeg,         {side}Foot
                {side}Shin
foot.*          {side}Foot                         {side}ToeBase, {side}Toe
==============  =================================  ===========================
"""

from __future__ import annotations

import numpy as np

from . import rig

_TORSO = {
    "spine": ("Hips",), "spine.001": ("LowerBack", "Spine"), "spine.002": ("Spine", "Spine1"),
    "spine.003": ("Spine1", "Spine2", "Chest"), "spine.004": ("Neck",), "spine.005": ("Neck1", "Neck"),
    "spine.006": ("Head",),
}
_LIMBS = {
    "shoulder": (("{s}Shoulder", "{s}Collar"), ()),
    "upper_arm": (("{s}Arm", "{s}UpperArm"), ("{s}ForeArm", "{s}LowerArm")),
    "forearm": (("{s}ForeArm", "{s}LowerArm"), ("{s}Hand",)),
    "hand": (("{s}Hand",), ()),
    "thigh": (("{s}UpLeg", "{s}UpperLeg", "{s}Thigh"), ("{s}Leg", "{s}LowerLeg", "{s}Shin")),
    "shin": (("{s}Leg", "{s}LowerLeg", "{s}Shin"), ("{s}Foot",)),
    "foot": (("{s}Foot",), ("{s}ToeBase", "{s}Toe")),
}
JOINT_MAP: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {b: (c, ()) for b, c in _TORSO.items()}
for _bone, (_start, _end) in _LIMBS.items():
    for _suffix, _side in (("L", "Left"), ("R", "Right")):
        JOINT_MAP[f"{_bone}.{_suffix}"] = (tuple(n.format(s=_side) for n in _start),
                                           tuple(n.format(s=_side) for n in _end))
# Without these the keypoints cannot be placed.
REQUIRED = ("spine", "spine.006", "upper_arm.L", "upper_arm.R", "forearm.L", "forearm.R", "thigh.L", "thigh.R",
            "shin.L", "shin.R")


def canonical(name: str) -> str:
    return name.split(":")[-1]


def resolve(joint_names: list[str]) -> dict[str, tuple[str, str | None]]:
    """metarig bone -> (BVH joint, end joint or None); raises ValueError naming what is missing."""
    by_canon = {canonical(n): n for n in joint_names}
    out: dict[str, tuple[str, str | None]] = {}
    used: set[str] = set()
    for bone in rig.ORDER:
        if bone not in JOINT_MAP:
            continue
        starts, ends = JOINT_MAP[bone]
        # A joint drives one bone: the first candidate not taken by a bone nearer the root.
        start = next((by_canon[n] for n in starts if n in by_canon and by_canon[n] not in used), None)
        if start is None:
            continue
        used.add(start)
        end = next((by_canon[n] for n in ends if n in by_canon), None)
        out[bone] = (start, end)
    missing = [b for b in REQUIRED if b not in out]
    if missing:
        wanted = "; ".join(f"{b}: one of {', '.join(JOINT_MAP[b][0])}" for b in missing)
        raise ValueError(f"no joint for {wanted}")
    return out


def swing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit direction ``a`` onto unit direction ``b`` (Rodrigues)."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    v, c = np.cross(a, b), float(np.dot(a, b))
    if c < -1 + 1e-9:  # opposite: half a turn about any axis normal to a
        axis = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2 * np.outer(axis, axis) - np.eye(3)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1 + c)


def retarget(mapping: dict[str, tuple[str, str | None]], deltas: dict[str, np.ndarray],
             heads: dict[str, np.ndarray], tails: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """metarig bone -> local 3x3 rotation reproducing the BVH pose (see the module docstring).

    ``tails``: posed tail of each imported joint's bone; a hand without a finger joint is swung
    onto its own bone (which Blender's importer points at the hand's end site or children)."""
    posed: dict[str, np.ndarray] = {}
    basis: dict[str, np.ndarray] = {}
    for bone in rig.ORDER:
        parent = rig.PARENT[bone]
        rest = rig.REST[bone][:3, :3]
        inherited = rest if parent is None else posed[parent] @ (rig.REST[parent][:3, :3].T @ rest)
        if bone not in mapping:
            posed[bone] = inherited
            continue
        start, end = mapping[bone]
        target = deltas[start] @ rest
        ends = heads if end is not None else tails
        if end is None and tails is not None and bone.startswith("hand."):
            end = start
        if end is not None:
            direction = ends[end] - heads[start]
            if np.linalg.norm(direction) > 1e-9:
                target = swing(target[:, 1], direction) @ target
        posed[bone] = target
        basis[bone] = inherited.T @ target
    return basis
