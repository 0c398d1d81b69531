"""A small BVH (Biovision hierarchy) writer and header reader, in numpy.

:func:`write_poses` exports poses from our own sampler as a mocap clip on a CMU-named skeleton
(Hips, LowerBack, Spine, Spine1, Neck, Neck1, Head, Left/Right Shoulder, Arm, ForeArm, Hand,
UpLeg, Leg, Foot, ToeBase), so that the BVH pose source can be exercised end to end without
shipping third-party clips. Conventions, as in the CMU conversions: Y up, the figure faces +Z,
the root has 6 channels (position, then Z X Y rotation) and every other joint 3 (Z X Y rotation),
a joint's rotation is ``Rz @ Rx @ Ry`` in its parent's frame, and in the rest pose every joint's
frame is aligned with the world. The skeleton is the metarig's own, in centimetres, except that
the arms stand out horizontally (a T-pose), so reading a clip back exercises a rest pose that is
not the metarig's.

:func:`read_header` reads what the parent process must check before any Blender starts: the joint
names and the number of frames.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from . import rig
from .pose import Pose, bone_eulers, orientation_matrix

# (BVH joint, metarig bone whose head it is, parent joint)
SKELETON: tuple[tuple[str, str, str | None], ...] = (
    ("Hips", "spine", None), ("LowerBack", "spine.001", "Hips"), ("Spine", "spine.002", "LowerBack"),
    ("Spine1", "spine.003", "Spine"), ("Neck", "spine.004", "Spine1"), ("Neck1", "spine.005", "Neck"),
    ("Head", "spine.006", "Neck1"),
) + tuple(
    j for side, s in (("Left", "L"), ("Right", "R")) for j in (
        (f"{side}Shoulder", f"shoulder.{s}", "Spine1"), (f"{side}Arm", f"upper_arm.{s}", f"{side}Shoulder"),
        (f"{side}ForeArm", f"forearm.{s}", f"{side}Arm"), (f"{side}Hand", f"hand.{s}", f"{side}ForeArm"),
        (f"{side}UpLeg", f"thigh.{s}", "Hips"), (f"{side}Leg", f"shin.{s}", f"{side}UpLeg"),
        (f"{side}Foot", f"foot.{s}", f"{side}Leg"), (f"{side}ToeBase", f"foot.{s}", f"{side}Foot"),
    )
)
_ARM = {"upper_arm", "forearm", "hand"}
_CM = 100.0
# Blender (x, y, z), Z up, figure facing -Y  ->  BVH (x, y, z), Y up, figure facing +Z.
_TO_BVH = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def _rest_heads() -> dict[str, np.ndarray]:
    """Each joint's rest position (Blender axes, metres): the metarig's, arms laid out horizontally."""
    heads: dict[str, np.ndarray] = {}
    for joint, bone, parent in SKELETON:
        if joint.endswith("ToeBase"):
            heads[joint] = rig.REST[bone] @ np.array([0.0, rig.LENGTH[bone], 0.0, 1.0])
            heads[joint] = heads[joint][:3]
        elif bone.split(".")[0] in _ARM:
            pb = rig.PARENT[bone]
            sign = 1.0 if bone.endswith(".L") else -1.0
            start = heads[parent] if pb.split(".")[0] in _ARM else rig.REST[bone][:3, 3]
            length = rig.LENGTH[pb] if pb.split(".")[0] in _ARM else 0.0
            heads[joint] = start + np.array([sign * length, 0.0, 0.0])
        else:
            heads[joint] = rig.REST[bone][:3, 3].copy()
    return heads


def _end_site(joint: str, bone: str, heads: dict[str, np.ndarray]) -> np.ndarray | None:
    children = [j for j, _b, p in SKELETON if p == joint]
    if children:
        return None
    if bone.startswith("hand."):
        sign = 1.0 if bone.endswith(".L") else -1.0
        return np.array([sign * rig.LENGTH[bone], 0.0, 0.0])
    if joint.endswith("ToeBase"):
        return np.array([0.0, -0.03, 0.0])
    return rig.REST[bone][:3, :3] @ np.array([0.0, rig.LENGTH[bone], 0.0])


def _world_rotations(pose: Pose, heads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Joint -> world rotation from the BVH rest pose to ``pose`` (Blender axes)."""
    mats = rig.pose_matrices(rig.euler_basis(bone_eulers(pose.dofs)))
    turn = orientation_matrix(*pose.orientation)
    out = {}
    for joint, bone, _parent in SKELETON:
        delta = turn @ mats[bone][:3, :3] @ rig.REST[bone][:3, :3].T  # what the pose did to the bone
        if bone.split(".")[0] in _ARM:
            # The clip's rest arm points along X; turn it onto the metarig's rest arm first.
            from .retarget import swing

            sign = 1.0 if bone.endswith(".L") else -1.0
            delta = delta @ swing(np.array([sign, 0.0, 0.0]), rig.REST[bone][:3, 1])
        out[joint] = delta
    return out


def _zxy(m: np.ndarray) -> tuple[float, float, float]:
    """Degrees (z, x, y) with ``m = Rz(z) @ Rx(x) @ Ry(y)``."""
    x = math.asin(max(-1.0, min(1.0, m[2, 1])))
    y = math.atan2(-m[2, 0], m[2, 2])
    z = math.atan2(-m[0, 1], m[1, 1])
    return math.degrees(z), math.degrees(x), math.degrees(y)


def write_poses(path: str | Path, poses: list[Pose], frame_time: float = 1 / 30) -> None:
    """One frame per pose; the pelvis stays at its rest position (the pose source has no travel)."""
    from posepipe.datasets import atomic

    heads = _rest_heads()
    lines = ["HIERARCHY"]

    def emit(joint: str, bone: str, parent: str | None, depth: int) -> None:
        pad = "  " * depth
        offset = np.zeros(3) if parent is None else _TO_BVH @ (heads[joint] - heads[parent]) * _CM
        lines.append(f"{pad}{'ROOT' if parent is None else 'JOINT'} {joint}")
        lines.append(f"{pad}{{")
        lines.append(f"{pad}  OFFSET {offset[0]:.6f} {offset[1]:.6f} {offset[2]:.6f}")
        lines.append(f"{pad}  CHANNELS " + ("6 Xposition Yposition Zposition Zrotation Xrotation Yrotation"
                                            if parent is None else "3 Zrotation Xrotation Yrotation"))
        for child, cbone, cparent in SKELETON:
            if cparent == joint:
                emit(child, cbone, joint, depth + 1)
        end = _end_site(joint, bone, heads)
        if end is not None:
            e = _TO_BVH @ end * _CM
            lines.append(f"{pad}  End Site\n{pad}  {{\n{pad}    OFFSET {e[0]:.6f} {e[1]:.6f} {e[2]:.6f}\n{pad}  }}")
        lines.append(f"{pad}}}")

    emit(*SKELETON[0], 0)
    order = [j for j in _dfs_order()]
    lines += ["MOTION", f"Frames: {len(poses)}", f"Frame Time: {frame_time:.6f}"]
    parents = {j: p for j, _b, p in SKELETON}
    root = _TO_BVH @ heads["Hips"] * _CM
    for pose in poses:
        world = _world_rotations(pose, heads)
        values = [*root]
        for joint in order:
            parent = parents[joint]
            local = world[joint] if parent is None else world[parent].T @ world[joint]
            values += _zxy(_TO_BVH @ local @ _TO_BVH.T)
        lines.append(" ".join(f"{v:.6f}" for v in values))
    atomic.write_text(Path(path), "\n".join(lines) + "\n")


def _dfs_order() -> list[str]:
    out: list[str] = []

    def visit(joint: str) -> None:
        out.append(joint)
        for child, _b, parent in SKELETON:
            if parent == joint:
                visit(child)

    visit(SKELETON[0][0])
    return out


_JOINT = re.compile(r"^\s*(ROOT|JOINT)\s+(\S+)", re.M)
_FRAMES = re.compile(r"^\s*Frames:\s*(\d+)\s*$", re.M)


def read_header(path: str | Path) -> tuple[list[str], int]:
    """(joint names, frame count); ValueError with a one-line reason when it is not a BVH file."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        raise ValueError(f"cannot read it ({e.strerror})") from None
    if not text.lstrip().startswith("HIERARCHY") or "MOTION" not in text:
        raise ValueError("not a BVH file (no HIERARCHY ... MOTION sections)")
    joints = [m.group(2) for m in _JOINT.finditer(text.split("MOTION", 1)[0])]
    frames = _FRAMES.search(text)
    if not joints or frames is None or int(frames.group(1)) < 1:
        raise ValueError("no joints or no 'Frames: N' line with N >= 1")
    return joints, int(frames.group(1))
