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
    return _euler_stack([(x, y, z)])[0]


def _euler_stack(angles: list) -> np.ndarray:
    """(N, 3, 3) XYZ Euler matrices, built in one batch (this runs for every pose re-draw)."""
    n = len(angles)
    cos = np.array([[math.cos(a) for a in e] for e in angles]).reshape(n, 3)
    sin = np.array([[math.sin(a) for a in e] for e in angles]).reshape(n, 3)
    rx, ry, rz = np.zeros((n, 3, 3)), np.zeros((n, 3, 3)), np.zeros((n, 3, 3))
    rx[:, 0, 0] = ry[:, 1, 1] = rz[:, 2, 2] = 1.0
    rx[:, 1, 1], rx[:, 1, 2], rx[:, 2, 1], rx[:, 2, 2] = cos[:, 0], -sin[:, 0], sin[:, 0], cos[:, 0]
    ry[:, 0, 0], ry[:, 0, 2], ry[:, 2, 0], ry[:, 2, 2] = cos[:, 1], sin[:, 1], -sin[:, 1], cos[:, 1]
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1] = cos[:, 2], -sin[:, 2], sin[:, 2], cos[:, 2]
    return rz @ ry @ rx


def pose_matrices(basis: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """bone -> 4x4 pose matrix in armature space; ``basis``: bone -> 3x3 local rotation (absent: rest)."""
    out: dict[str, np.ndarray] = {}
    for name in ORDER:
        parent = PARENT[name]
        m = REST[name] if parent is None else out[parent] @ _REL[name]
        rot = basis.get(name)
        if rot is not None:  # a bone at rest has an identity basis: nothing to multiply
            local = np.eye(4)
            local[:3, :3] = rot
            m = m @ local
        out[name] = m
    return out


_RIG_LENGTHS = np.array([LENGTH[name] for name in body_mod.RIG_BONES])


def forward(basis: dict[str, np.ndarray], armature: np.ndarray) -> tuple[dict, np.ndarray]:
    """World (head, tail) of every bone :mod:`.body` needs, and the head bone's rest -> world deform."""
    pose = pose_matrices(basis)
    world = armature @ np.stack([pose[name] for name in body_mod.RIG_BONES])
    heads = world[:, :3, 3]
    tails = heads + world[:, :3, 1] * _RIG_LENGTHS[:, None]  # the tail lies ``length`` along local +Y
    rig = {name: (heads[i], tails[i]) for i, name in enumerate(body_mod.RIG_BONES)}
    head = body_mod.HEAD_BONE
    deform = armature @ pose[head] @ _HEAD_REST_INV
    return rig, deform


def euler_basis(eulers: dict[str, tuple[float, float, float]]) -> dict[str, np.ndarray]:
    return dict(zip(eulers, _euler_stack(list(eulers.values()))))
