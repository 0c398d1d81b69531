"""An Anny person slot in Blender: one mesh whose vertices, normals and clothing are rewritten per image.

Imports ``bpy``: worker processes only, like :mod:`.blender`. The mesh maths (rest shape, posing,
skinning, keypoints) is ``synth/core/anny_body.py``; the clothing rules are ``synth/core/outfit.py``.

Normals are computed here in numpy (area-weighted, summed in a fixed order) and written as the
mesh's custom normals, as the mannequin does: Blender's own are summed in parallel and vary in the
last bits between processes, which would change rendered bytes.

Visibility rays go against a BVH of the skinned triangles (``BVHTree.FromObject`` of the evaluated
mesh, built per image: ~7 ms, where building it from Python lists took ~50 ms; the object's matrix
is the identity, so its mesh space is world space, and its polygons are Anny's triangles in order,
so a hit's index is a triangle of ``AnnyModel.faces``); a joint's tolerance is 1.5 x its distance to the nearest surface of its
own mesh (at least :data:`FACE_TOLERANCE`, the depth a face landmark on the surface may have under
an eyelid or the nose's side).
"""

from __future__ import annotations

import numpy as np
from mathutils import Vector
from mathutils.bvhtree import BVHTree

import bpy

from ..core import anny_body, outfit

FACE_TOLERANCE = 0.01  # metres
MATERIALS = outfit.SLOTS  # material slot order of every Anny mesh


def vertex_normals(co: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) unit area-weighted vertex normals of a triangle mesh, summed in a fixed order."""
    fn = np.cross(co[faces[:, 1]] - co[faces[:, 0]], co[faces[:, 2]] - co[faces[:, 0]])
    out = np.zeros_like(co)
    for corner in range(3):
        for axis in range(3):
            out[:, axis] += np.bincount(faces[:, corner], weights=fn[:, axis], minlength=len(co))
    norm = np.linalg.norm(out, axis=1)
    out[norm > 0] /= norm[norm > 0, None]
    out[norm == 0] = (0.0, 0.0, 1.0)
    return out


class AnnySlot:
    """Person p as an Anny body. ``material(name, prefix, like)`` makes one of the renderer's
    attribute-driven materials (``blender._Material``); ``like`` is slot 0's, to copy."""

    def __init__(self, p: int, model: anny_body.AnnyModel, collection, material, like: "AnnySlot | None" = None):
        self.model, self.owner, self.collection = model, p, collection
        self.faces = model.faces
        self.materials = [material(f"{name}{p}", name, like and like.materials[n]) for n, name in enumerate(MATERIALS)]
        self.mesh = bpy.data.meshes.new(f"anny{p}")
        rest = model.rest(anny_body.AVERAGE_PHENOTYPE).vertices
        self.mesh.vertices.add(len(rest))
        self.mesh.loops.add(self.faces.size)
        self.mesh.polygons.add(len(self.faces))
        self.mesh.attributes["position"].data.foreach_set("vector", rest.astype(np.float32).ravel())
        self.mesh.polygons.foreach_set("loop_start", np.arange(0, self.faces.size, 3, dtype=np.int32))
        self.mesh.attributes[".corner_vert"].data.foreach_set("value", self.faces.astype(np.int32).ravel())
        self.mesh.update(calc_edges=True)
        self.mesh.attributes.new("sharp_face", "BOOLEAN", "FACE").data.foreach_set(
            "value", np.zeros(len(self.faces), dtype=bool))
        self.mesh.attributes.new("material_index", "INT", "FACE")
        for mat in self.materials:
            self.mesh.materials.append(mat.mat)
        self.mesh.attributes.new("custom_normal", "FLOAT_VECTOR", "POINT")
        self.mesh.update()
        self.face_region = model.regions[self.faces[:, 0]]  # each triangle takes its first corner's region
        self.obj = bpy.data.objects.new(f"anny{p}", self.mesh)
        self.obj.pass_index = p + 1
        collection.objects.link(self.obj)
        self.world = rest
        self.info: dict = {}
        self.tree: BVHTree | None = None

    def place(self, posed: anny_body.Posed, person) -> np.ndarray:
        """Write the skinned mesh and the person's clothing; its world keypoints."""
        skin, top, bottom, shoes, eyes, hair, iris = self.materials
        skin.set(self.obj, person.skin_rgb)
        top.set(self.obj, person.clothing_rgb, person.texture_scale)
        bottom.set(self.obj, person.trousers_rgb, person.texture_scale * 0.5)
        shoes.set(self.obj, tuple(person.outfit.get("shoes_rgb", (0.05, 0.05, 0.05))))
        eyes.set(self.obj, (0.55, 0.55, 0.52))
        hair.set(self.obj, tuple(person.outfit.get("hair_rgb", (0.04, 0.022, 0.012))))
        iris.set(self.obj, (0.03, 0.02, 0.015))
        table = outfit.region_slots(person.outfit)
        self.mesh.attributes["material_index"].data.foreach_set("value", table[self.face_region].astype(np.int32))
        co = posed.vertices
        self.mesh.attributes["position"].data.foreach_set("vector", co.astype(np.float32).ravel())
        normals = vertex_normals(co, self.faces)
        self.mesh.attributes["custom_normal"].data.foreach_set("vector", normals.astype(np.float32).ravel())
        self.mesh.vertices[0].co = co[0]  # tells the mesh its positions changed (see blender._PersonSlot)
        self.mesh.update()
        # What is rendered: float32 positions; the rays see the same surface.
        self.world = co.astype(np.float32).astype(np.float64)
        self.tree = None
        self.info = posed.info
        return posed.keypoints

    def bvh(self) -> BVHTree:
        if self.tree is None:
            self.tree = BVHTree.FromObject(self.obj, bpy.context.evaluated_depsgraph_get())
        return self.tree

    def first_hits(self, eye: np.ndarray, targets: np.ndarray) -> list[tuple[float, int] | None]:
        """Per target: (distance from ``eye``, body part index) of this body's first surface on the
        way to it, or None."""
        tree, origin, out = self.bvh(), Vector(eye.tolist()), []
        parts = self.model.face_parts.tolist()
        for t in np.asarray(targets, dtype=np.float64):
            vec = t - eye
            dist = float(np.linalg.norm(vec))
            hit = tree.ray_cast(origin, Vector((vec / dist).tolist()), dist * (1 + 1e-6) + 1e-9)
            out.append((hit[3], parts[hit[2]]) if hit[0] is not None else None)
        return out

    def tolerances(self, points: np.ndarray, hit_parts: list[int | None]) -> np.ndarray:
        """(17,) how deep each keypoint may sit under the surface of this body that its ray meets
        first (``hit_parts[j]``: that surface's part, None if none) and still be seen there: a face
        landmark :data:`FACE_TOLERANCE` (it is on the surface); a body joint met by its own parts
        (``anny_body.JOINT_PARTS``) ``SAME_PART_DEPTH``, by any other part 1.5 x its distance to
        the nearest surface (the mannequin's rule)."""
        names = anny_body.COCO17_JOINTS
        out = np.full(len(points), FACE_TOLERANCE)
        for j, part in enumerate(hit_parts):
            if names[j] in anny_body.FACE_JOINTS or part is None:
                continue
            if anny_body.PARTS[part] in anny_body.JOINT_PARTS[names[j]]:
                out[j] = anny_body.SAME_PART_DEPTH
                continue
            hit = self.bvh().find_nearest(Vector(np.asarray(points[j], dtype=np.float64).tolist()))
            out[j] = max(1.5 * hit[3], FACE_TOLERANCE) if hit[0] is not None else FACE_TOLERANCE
        return out
