"""First surface on the way from the camera to each joint, cast against the staged primitives.

What ``scene.ray_cast`` finds, done as Blender does it per object but against data that stay put:
every primitive of the scene is one of a few unit meshes (sphere, cylinder, box) under a world
matrix, so each ray is taken into the primitive's local space, tested against the unit mesh's
bounding box (numpy, all rays x primitives at once) and, where it passes, cast against a BVH of the
unit mesh's own triangles (built once per worker; the same triangle intersection as Blender's
mesh ray casts). The nearest hit wins. ``scene.ray_cast`` would instead rebuild the BVH of each
mannequin mesh, whose vertices move every image (~1.5 ms a person).
"""

from __future__ import annotations

import numpy as np
from mathutils import Vector
from mathutils.bvhtree import BVHTree

_BOX_MARGIN = 1e-4  # local units; the box test only culls, so it errs on the side of casting


class UnitMeshRays:
    def __init__(self, meshes: dict):
        self.kinds = list(meshes)
        self.trees, lo, hi = [], [], []
        for mesh in meshes.values():
            mesh.calc_loop_triangles()
            co = np.array([v.co[:] for v in mesh.vertices], dtype=np.float64)
            tris = [tuple(t.vertices) for t in mesh.loop_triangles]
            self.trees.append(BVHTree.FromPolygons([Vector(c) for c in co], tris, all_triangles=True))
            lo.append(co.min(axis=0) - _BOX_MARGIN)
            hi.append(co.max(axis=0) + _BOX_MARGIN)
        self.lo, self.hi = np.array(lo), np.array(hi)

    def first_hits(self, eye: np.ndarray, targets: np.ndarray, kinds: list[str], matrices: np.ndarray,
                   owners: np.ndarray) -> list[tuple[float, int] | None]:
        """Per target: (distance from ``eye``, owner of the primitive) of the first surface the ray
        from ``eye`` meets before reaching the target, or None. ``matrices`` (N, 4, 4) place the
        primitives, ``kinds`` name their unit meshes."""
        out: list[tuple[float, int] | None] = [None] * len(targets)
        if not len(targets) or not len(matrices):
            return out
        vec = targets - eye
        dist = np.linalg.norm(vec, axis=1)
        dirs = vec / dist[:, None]
        kind = np.array([self.kinds.index(k) for k in kinds])
        inv = np.linalg.inv(matrices)
        origin = inv[:, :3, :3] @ eye + inv[:, :3, 3]  # (N, 3)
        local = np.einsum("nij,rj->rni", inv[:, :3, :3], dirs)  # (R, N, 3)
        scale = np.linalg.norm(local, axis=2)
        local /= scale[..., None]
        depth = dist[:, None] * scale  # the target's distance in each primitive's local units
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (self.lo[kind] - origin) / local
            t2 = (self.hi[kind] - origin) / local
        near = np.fmax.reduce(np.fmin(t1, t2), axis=2)
        far = np.fmin.reduce(np.fmax(t1, t2), axis=2)
        candidates = (near <= far) & (far >= 0) & (near <= depth * (1 + 1e-6) + _BOX_MARGIN)
        rows, cols = np.nonzero(candidates)
        # Plain Python values for the loop: per-candidate numpy indexing would cost more than the casts.
        args = zip(rows.tolist(), kind[cols].tolist(), origin[cols].tolist(), local[rows, cols].tolist(),
                   (depth[rows, cols] * (1 + 1e-6) + 1e-9).tolist(), scale[rows, cols].tolist(), owners[cols].tolist())
        best = [np.inf] * len(targets)
        for r, k, o, d, limit, s, owner in args:
            hit = self.trees[k].ray_cast(Vector(o), Vector(d), limit)
            if hit[0] is not None and hit[3] / s < best[r]:
                best[r] = hit[3] / s  # back to world units, as Blender does
                out[r] = (best[r], owner)
        return out
