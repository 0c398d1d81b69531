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

import functools
from dataclasses import dataclass

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
    return euler_stack([(x, y, z)])[0]


def euler_stack(angles) -> np.ndarray:
    """(N, 3, 3) XYZ Euler matrices of (N, 3) angles, built in one batch (this runs for every pose re-draw).

    Rz @ Ry @ Rx written out (a product of three stacks of matrices costs more); it agrees with
    that product to rounding (~1e-16: the product may fuse multiply-adds).
    """
    angles = np.asarray(angles, dtype=np.float64).reshape(-1, 3)
    cos, sin = np.cos(angles), np.sin(angles)
    cx, cy, cz, sx, sy, sz = cos[:, 0], cos[:, 1], cos[:, 2], sin[:, 0], sin[:, 1], sin[:, 2]
    czsy, szsy = cz * sy, sz * sy
    entries = (
        cz * cy, czsy * sx - sz * cx, czsy * cx + sz * sx,
        sz * cy, szsy * sx + cz * cx, szsy * cx - cz * sx,
        -sy, cy * sx, cy * cx,
    )
    return np.array(entries).T.reshape(-1, 3, 3)


def pose_matrices(basis: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """bone -> 4x4 pose matrix in armature space; ``basis``: bone -> 3x3 local rotation (absent: rest)."""
    out: dict[str, np.ndarray] = {}
    for name in ORDER:
        parent = PARENT[name]
        m = REST[name].copy() if parent is None else out[parent] @ _REL[name]
        rot = basis.get(name)
        if rot is not None:  # m @ [[rot, 0], [0, 1]]: only the rotation columns change
            m[:, :3] = m[:, :3] @ rot
        out[name] = m
    return out


# ------------------------------------------------------------------------------------------------
# Forward kinematics of the bones the body needs, for the pose re-draw loop
# ------------------------------------------------------------------------------------------------
# Only a few bones are rotated (15 for a sampled pose, of 30); a chain of bones at rest between
# them is a constant matrix. So each rotated bone is posed from its nearest rotated ancestor (its
# "anchor", or the armature itself) in one matrix product, all bones at the same depth of that
# smaller tree in one batch, and each wanted bone then hangs off its anchor by one more constant.
# The products are grouped differently from :func:`pose_matrices`'s bone-by-bone chain: results
# agree with it to rounding (~1e-15).

_WANTED: tuple[str, ...] = body_mod.RIG_BONES + (body_mod.HEAD_BONE,)


def _anchor(bone: str, rotated: frozenset) -> str | None:
    """Nearest strict ancestor of ``bone`` that is rotated (None: none is, the armature holds it)."""
    parent = PARENT[bone]
    while parent is not None and parent not in rotated:
        parent = PARENT[parent]
    return parent


def _rest_below(anchor: str | None, bone: str) -> np.ndarray:
    """4x4 rest of ``bone`` relative to ``anchor`` (None: to the armature): the _REL chain between them."""
    chain = []
    while bone != anchor:
        chain.append(bone)
        bone = PARENT[bone]
    m = np.eye(4)
    for name in reversed(chain):
        m = m @ (REST[name] if PARENT[name] is None else _REL[name])
    return m


@dataclass(frozen=True)
class _Plan:
    """How :func:`posed_ends` chains one set of rotated bones. The rotated bones are taken in
    ``order`` (by depth in their own tree, so that each depth is one contiguous run); slot 0 of the
    posed stack is the armature, slot k + 1 the k-th rotated bone in that order."""

    order: np.ndarray  # (R,) which of the given bones comes k-th
    rest: np.ndarray  # (R, 4, 4) each rotated bone's rest relative to its anchor, in that order
    levels: tuple[tuple[slice, slice, np.ndarray], ...]  # per depth: (its bones, their slots, their anchors' slots)
    out_slot: np.ndarray  # (W,) slot each of _WANTED hangs off (its own, if it is rotated)
    out_rest: np.ndarray  # (W, 4, 4) and its rest relative to that slot


@functools.lru_cache(maxsize=64)
def _plan(bones: tuple[str, ...]) -> _Plan:
    rotated = frozenset(bones)
    anchor = {name: _anchor(name, rotated) for name in bones}

    def depth(name: str) -> int:
        return 0 if anchor[name] is None else depth(anchor[name]) + 1

    order = sorted(range(len(bones)), key=lambda k: depth(bones[k]))
    chain = [bones[k] for k in order]
    slot = {name: k + 1 for k, name in enumerate(chain)}
    levels = []
    for d in sorted({depth(name) for name in chain}):
        run = [k for k, name in enumerate(chain) if depth(name) == d]  # contiguous: sorted by depth
        anchors = np.array([slot.get(anchor[chain[k]], 0) for k in run])
        levels.append((slice(run[0], run[-1] + 1), slice(run[0] + 1, run[-1] + 2), anchors))
    out_anchor = [name if name in slot else _anchor(name, rotated) for name in _WANTED]
    return _Plan(
        order=np.array(order, dtype=np.intp),
        rest=np.array([_rest_below(anchor[name], name) for name in chain]).reshape(-1, 4, 4),
        levels=tuple(levels),
        out_slot=np.array([slot.get(a, 0) for a in out_anchor]),
        out_rest=np.array([_rest_below(a, name) for a, name in zip(out_anchor, _WANTED)]),
    )


_RIG_LENGTHS = np.array([LENGTH[name] for name in body_mod.RIG_BONES])


def posed_ends(bones: tuple[str, ...], rotations: np.ndarray, armature: np.ndarray) -> tuple[np.ndarray, ...]:
    """World heads and tails ((B, 3) each, rows in :data:`body.RIG_BONES` order) and the head bone's
    rest -> world deform, for ``bones`` (distinct, of :data:`ORDER`) turned by ``rotations`` (N, 3, 3)."""
    plan = _plan(bones)
    local = plan.rest.copy()  # rest @ [[rot, 0], [0, 1]]: only the rotation columns change
    local[:, :, :3] = plan.rest[:, :, :3] @ rotations[plan.order]
    world = np.empty((len(bones) + 1, 4, 4))  # slot 0: the armature, then the rotated bones posed
    world[0] = armature
    for bones_at, slots_at, anchors in plan.levels:  # parents first
        np.matmul(world[anchors], local[bones_at], out=world[slots_at])
    wanted = world[plan.out_slot] @ plan.out_rest
    rig = wanted[:-1]
    heads = rig[:, :3, 3]
    tails = heads + rig[:, :3, 1] * _RIG_LENGTHS[:, None]  # the tail lies ``length`` along local +Y
    return heads, tails, wanted[-1] @ _HEAD_REST_INV


def forward(basis: dict[str, np.ndarray], armature: np.ndarray) -> tuple[dict, np.ndarray]:
    """World (head, tail) of every bone :mod:`.body` needs, and the head bone's rest -> world deform."""
    bones = tuple(name for name in ORDER if basis.get(name) is not None)
    rotations = np.array([basis[name] for name in bones], dtype=np.float64).reshape(-1, 3, 3)
    heads, tails, deform = posed_ends(bones, rotations, np.asarray(armature, dtype=np.float64))
    rig = {name: (heads[i], tails[i]) for i, name in enumerate(body_mod.RIG_BONES)}
    return rig, deform


def euler_basis(eulers: dict[str, tuple[float, float, float]]) -> dict[str, np.ndarray]:
    return dict(zip(eulers, euler_stack(list(eulers.values()))))
