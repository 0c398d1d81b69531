"""Forward kinematics of the metarig in numpy: pose bones the way Blender does, without Blender.

Blender's pose matrix of a bone (armature space) is
``pose[b] = pose[parent] @ inv(rest[parent]) @ rest[b] @ basis[b]`` (``pose[root] = rest @ basis``)
for bones that inherit rotation and scale fully, as every bone of :data:`metarig_rest.BONES` does;
``basis`` is the pose bone's local rotation. The head of a bone is ``pose[b]``'s origin and its
tail lies ``length`` along its local +Y. Computing this here (instead of posing an armature and
asking Blender's depsgraph) makes a pose re-draw cost microseconds, and lets poses be written to
BVH without Blender.
"""

from __future__ import annotations

import math

import numpy as np

from . import body as body_mod
from .metarig_rest import BONES

PARENT: dict[str, str | None] = {name: parent for name, parent, _l, _m in BONES}
LENGTH: dict[str, float] = {name: length for name, _p, length, _m in BONES}
REST: dict[str, np.ndarray] = {name: np.array(m, dtype=np.float64) for name, _p, _l, m in BONES}
ORDER: tuple[str, ...] = tuple(name for name, *_ in BONES)  # parents first
# rest of each bone relative to its parent: inv(rest[parent]) @ rest[b]
_REL: dict[str, np.ndarray] = {n: np.linalg.inv(REST[p]) @ REST[n] for n, p in PARENT.items() if p is not None}
_HEAD_REST_INV = np.linalg.inv(REST[body_mod.HEAD_BONE])


def euler_xyz(x: float, y: float, z: float) -> np.ndarray:
    """3x3 of Blender's XYZ Euler (radians): X applied first, i.e. Rz @ Ry @ Rx."""
    cx, sx, cy, sy, cz, sz = math.cos(x), math.sin(x), math.cos(y), math.sin(y), math.cos(z), math.sin(z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def pose_matrices(basis: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """bone -> 4x4 pose matrix in armature space; ``basis``: bone -> 3x3 local rotation (absent: rest)."""
    out: dict[str, np.ndarray] = {}
    for name in ORDER:
        local = np.eye(4)
        if name in basis:
            local[:3, :3] = basis[name]
        parent = PARENT[name]
        if parent is None:
            out[name] = REST[name] @ local
        else:
            out[name] = out[parent] @ _REL[name] @ local
    return out


def forward(basis: dict[str, np.ndarray], armature: np.ndarray) -> tuple[dict, np.ndarray]:
    """World (head, tail) of every bone :mod:`.body` needs, and the head bone's rest -> world deform."""
    pose = pose_matrices(basis)
    rig = {}
    for name in body_mod.RIG_BONES:
        m = armature @ pose[name]
        rig[name] = (m[:3, 3].copy(), (m @ np.array([0.0, LENGTH[name], 0.0, 1.0]))[:3])
    head = body_mod.HEAD_BONE
    deform = armature @ pose[head] @ _HEAD_REST_INV
    return rig, deform


def euler_basis(eulers: dict[str, tuple[float, float, float]]) -> dict[str, np.ndarray]:
    return {bone: euler_xyz(*e) for bone, e in eulers.items()}
