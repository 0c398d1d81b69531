"""A user's own rigged human in Blender: import (.glb/.gltf/.fbx), posing, visibility rays.

Imports ``bpy``: use it inside a worker/child process only, like :mod:`.blender`. The maths (joint
map, retargeting, forward kinematics, keypoints) is ``synth/core/user_rig.py``; this module only
moves Blender objects and asks Blender what the camera sees.

Use::

    jm = core_user_rig.load_joint_map("maps/human.json")
    person = UserRig(jm, pass_index=p + 1)               # imports the model once per worker
    # per image
    posed = person.poser.pose(metarig_basis, person.poser.armature_matrix(orientation, location, scale))
    person.apply(posed)                                  # pose bones + armature world matrix
    ...                                                  # place camera/occluders, render
    kps, kinds = person.annotate(posed.keypoints, cam_matrix, k, person=p)

``annotate`` casts rays with ``scene.ray_cast`` against the evaluated (skinned) scene, so other
people and occluders count as "object" occlusion (``owner_of`` maps a hit object to its person
index, default -1); a hit on this person's own meshes counts as "self" only deeper than the joint's
tolerance: 1.5 x the distance from the joint to the nearest surface of its own meshes (a joint
inside its limb is visible where the camera sees that limb). Semantics are
:func:`visibility.decide`'s, as for the mannequin. Mannequin joints occluded by a user rig need the
rig's meshes in their own ray casts: :meth:`UserRig.first_hits` gives those hits.
"""

from __future__ import annotations

from pathlib import Path

import bpy  # noqa: I001  (must come first: it puts Blender's own modules on the path)
import addon_utils
import numpy as np
from mathutils import Matrix, Vector
from mathutils.bvhtree import BVHTree

from posepipe.datasets.errors import PosepipeError

from ..core import camera as cam
from ..core import user_rig as core
from ..core import visibility

_MIN_TOLERANCE = 1e-4  # world units: a joint on its own surface must not flicker to "self"


def _import(model: Path) -> list:
    """Import with Blender's bundled importer; the new objects."""
    before = set(bpy.data.objects)
    ext = model.suffix.lower()
    if ext in (".glb", ".gltf"):
        if not hasattr(bpy.ops.import_scene, "gltf"):
            addon_utils.enable("io_scene_gltf2", default_set=True)
        bpy.ops.import_scene.gltf(filepath=str(model))
    elif ext == ".fbx":
        if not hasattr(bpy.ops.import_scene, "fbx"):
            addon_utils.enable("io_scene_fbx", default_set=True)
        bpy.ops.import_scene.fbx(filepath=str(model))
    else:
        raise PosepipeError(f"{model}: unsupported model extension {ext!r} (use .glb, .gltf, .fbx)")
    return [o for o in bpy.data.objects if o not in before]


def _rides_on(obj, arm) -> bool:
    """Skinned to ``arm`` (Armature modifier) or parented under it (e.g. eyes on a bone)."""
    if any(m.type == "ARMATURE" and m.object == arm for m in obj.modifiers):
        return True
    parent = obj.parent
    while parent is not None:
        if parent == arm:
            return True
        parent = parent.parent
    return False


def rest_of(armature) -> core.RigRest:
    """The armature's rest, as :class:`core.RigRest` takes it (armature space)."""
    bones = armature.data.bones
    return core.RigRest({b.name: np.array(b.matrix_local) for b in bones},
                        {b.name: b.parent.name if b.parent else None for b in bones},
                        {b.name: float(b.length) for b in bones})


def _check_inheritance(armature, joint_map: core.JointMap) -> None:
    """The numpy forward kinematics assumes full inheritance along every chain the map uses."""
    bones = armature.data.bones
    for name in sorted(joint_map.bones()):
        bone = bones[name]
        while bone is not None:
            if not bone.use_inherit_rotation or bone.inherit_scale != "FULL":
                raise PosepipeError(f"{joint_map.model}: bone {bone.name!r} does not inherit its parent's "
                                    "rotation and scale fully; the retargeting needs it")
            bone = bone.parent


class UserRig:
    """One imported user model: its armature, its meshes and the numpy poser for it."""

    def __init__(self, joint_map: core.JointMap, pass_index: int = 1, collection=None):
        self.joint_map = joint_map
        new = _import(joint_map.model)
        arms = [o for o in new if o.type == "ARMATURE"]
        if len(arms) != 1:
            raise PosepipeError(f"{joint_map.model}: expected one armature, found {len(arms)}")
        self.armature = arm = arms[0]
        self.meshes = [o for o in new if o.type == "MESH" and _rides_on(o, arm)]
        if not self.meshes:
            raise PosepipeError(f"{joint_map.model}: no mesh skinned to or parented under armature {arm.name!r}")
        shapes = {pb.custom_shape for pb in arm.pose.bones if pb.custom_shape}
        # cameras, lights and loose props of the file would show up in every image
        for obj in [o for o in new if o is not arm and o not in self.meshes and o not in shapes]:
            new.remove(obj)
            bpy.data.objects.remove(obj)
        for shape in shapes & set(new):  # bone display shapes: never rendered
            for coll in list(shape.users_collection):
                coll.objects.unlink(shape)
        new = [o for o in new if o not in shapes]
        self._own = {o.name for o in self.meshes}
        if collection is not None:  # the integrator's slot collection, to include/exclude per image
            for obj in new:
                for c in list(obj.users_collection):
                    c.objects.unlink(obj)
                collection.objects.link(obj)
        self._detach(arm)
        rest = rest_of(arm)
        self.poser = core.UserRigPoser(rest, joint_map, np.array(arm.matrix_world))  # checks the map's bones
        _check_inheritance(arm, joint_map)
        for pb in arm.pose.bones:
            pb.rotation_mode = "QUATERNION"
            for con in pb.constraints:  # imported IK etc. would fight the numpy pose
                con.mute = True
        if arm.animation_data is not None:
            arm.animation_data_clear()  # an imported action would overwrite the pose per frame
        self.set_pass_index(pass_index)

    def _detach(self, arm) -> None:
        """Armature without parent (set per image), meshes riding on it (moved with it)."""
        world = arm.matrix_world.copy()
        arm.parent = None
        arm.matrix_world = world
        for mesh in self.meshes:
            if mesh.parent != arm:
                world = mesh.matrix_world.copy()
                mesh.parent = arm
                mesh.matrix_world = world
        bpy.context.view_layer.update()

    def set_pass_index(self, index: int) -> None:
        """Object index of every mesh (Cycles' IndexOB pass gives the person's mask)."""
        for mesh in self.meshes:
            mesh.pass_index = index

    def apply(self, posed: core.PosedRig) -> None:
        """Pose bones from the numpy basis (unmapped bones at rest) and put the armature in the world."""
        identity = Matrix.Identity(4)
        for pb in self.armature.pose.bones:
            rot = posed.basis.get(pb.name)
            if rot is None:
                pb.matrix_basis = identity
            else:
                m = np.eye(4)
                m[:3, :3] = rot
                pb.matrix_basis = Matrix(m.tolist())
        self.armature.matrix_world = Matrix(np.asarray(posed.armature).tolist())

    # -- what Blender made of it ------------------------------------------------------------------

    def blender_pose(self, depsgraph=None) -> dict[str, np.ndarray]:
        """bone -> 4x4 pose matrix in world space, as Blender evaluated it (for checks)."""
        dg = depsgraph or bpy.context.evaluated_depsgraph_get()
        arm = self.armature.evaluated_get(dg)
        world = np.array(arm.matrix_world)
        return {pb.name: world @ np.array(pb.matrix) for pb in arm.pose.bones}

    def blender_keypoints(self, depsgraph=None) -> np.ndarray:
        """(17, 3) world keypoints from Blender's posed bones and the joint map."""
        # Blender's pose matrices are already in world space: no armature matrix on top.
        return core.keypoints(self.poser.rest, self.joint_map, self.blender_pose(depsgraph), np.eye(4))

    def _trees(self, depsgraph) -> list[BVHTree]:
        """World-space BVH of each evaluated (skinned) mesh."""
        trees = []
        for obj in self.meshes:
            ev = obj.evaluated_get(depsgraph)
            mesh = ev.to_mesh()
            try:
                co = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
                mesh.vertices.foreach_get("co", co)
                mw = np.array(ev.matrix_world)
                co = co.reshape(-1, 3) @ mw[:3, :3].T + mw[:3, 3]
                mesh.calc_loop_triangles()
                tris = [tuple(t.vertices) for t in mesh.loop_triangles]
            finally:
                ev.to_mesh_clear()
            if tris:
                trees.append(BVHTree.FromPolygons([Vector(c) for c in co.tolist()], tris, all_triangles=True))
        return trees

    def tolerances(self, points: np.ndarray, depsgraph=None) -> np.ndarray:
        """(N,) 1.5 x each point's distance to the nearest surface of this rig's meshes."""
        trees = self._trees(depsgraph or bpy.context.evaluated_depsgraph_get())
        out = np.full(len(points), np.inf)
        for i, p in enumerate(np.asarray(points, dtype=np.float64).tolist()):
            for tree in trees:
                hit = tree.find_nearest(Vector(p))
                if hit[0] is not None:
                    out[i] = min(out[i], hit[3])
        return np.maximum(1.5 * np.where(np.isfinite(out), out, 0.0), _MIN_TOLERANCE)

    def first_hits(self, eye: np.ndarray, targets: np.ndarray, depsgraph=None) -> list[float | None]:
        """Per target: distance from ``eye`` to the first surface of this rig on the way, or None
        (for merging into the mannequins' own ray casts)."""
        trees = self._trees(depsgraph or bpy.context.evaluated_depsgraph_get())
        out: list[float | None] = []
        for t in np.asarray(targets, dtype=np.float64):
            vec = t - eye
            dist = float(np.linalg.norm(vec))
            best = None
            for tree in trees:
                hit = tree.ray_cast(Vector(eye.tolist()), Vector((vec / dist).tolist()), dist)
                if hit[0] is not None and (best is None or hit[3] < best):
                    best = hit[3]
            out.append(best)
        return out

    def annotate(self, points: np.ndarray, cam_matrix: np.ndarray, k: cam.Intrinsics, person: int,
                 owner_of=None, depsgraph=None) -> tuple[np.ndarray, list]:
        """((17, 3) x, y, v in image pixels; per joint None/"self"/"object"), as the mannequin's are.

        ``owner_of(obj) -> int``: the person index of a hit object that is not this rig's (-1: an
        occluder; the default for everything)."""
        dg = depsgraph or bpy.context.evaluated_depsgraph_get()
        scene = bpy.context.scene
        points = np.asarray(points, dtype=np.float64)
        xy, depth = cam.project(points, cam_matrix, k)
        inside = cam.in_frame(xy, depth, k)
        tol = self.tolerances(points, dg)
        eye = cam_matrix[:3, 3]
        out = np.zeros((len(points), 3))
        kinds: list = [None] * len(points)
        for j, p in enumerate(points):
            vec = p - eye
            dist = float(np.linalg.norm(vec))
            hit = None
            if inside[j]:
                found, loc, _n, _i, obj, _m = scene.ray_cast(dg, Vector(eye.tolist()), Vector((vec / dist).tolist()),
                                                             distance=dist)
                if found:
                    owner = person if obj.name in self._own else (owner_of(obj) if owner_of else -1)
                    hit = visibility.RayHit(float((Vector(loc) - Vector(eye.tolist())).length), owner)
            v, kind = visibility.decide(bool(inside[j]), dist, hit, person, float(tol[j]))
            out[j] = (xy[j, 0], xy[j, 1], v) if v else (0.0, 0.0, 0.0)
            kinds[j] = kind
        return out, kinds
