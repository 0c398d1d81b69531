"""The Blender backend: builds a :class:`SceneSpec` with bpy, renders it, reports what it sees.

The scene is built once per worker (:class:`_Stage`) and only re-posed, moved and recoloured per
image. Poses are computed in numpy (``core/rig.py``, ``core/posing.py``); Blender is used for
rendering, the index pass, visibility rays and reading BVH clips through its bundled importer.

Only this package (``synth/renderer/``) imports ``bpy`` and Blender's ``mathutils``. It runs
inside worker processes only (one Blender per process: bpy is not thread-safe and a renderer can
abort its whole process), see worker.py.

Per-person masks come from Cycles' object-index pass, written by the compositor to a float EXR
(person p's mannequin carries ``pass_index = p + 1``, occluders 100+) and read back with numpy
(``readback.py``). Workbench has no index pass, so it renders a second, unlit, un-antialiased
image whose flat object colours encode the same indices. Visibility comes from rays cast from the
camera to each joint against the placed primitives (``rays.py``: what ``scene.ray_cast`` finds,
without rebuilding a BVH of each mannequin mesh every image).

With a user rig (``--rig``, ``user_rig.py``) each person slot holds an imported copy of the user's
model instead of a mannequin, posed by retargeting the same metarig pose; its visibility comes
from ``scene.ray_cast`` against the skinned meshes.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import bpy  # noqa: I001  (must come first: it puts Blender's own modules on the path)
import addon_utils
import bmesh
import numpy as np
from mathutils import Matrix

from ..core import anny_body
from ..core import body as body_mod
from ..core import camera as cam
from ..core import scene as scene_mod
from ..core import visibility
from ..core import posing, retarget
from ..core.pose import Pose
from ..core import user_rig as user_rig_core
from . import anny as anny_slot
from . import rays, readback, user_rig

OCCLUDER_INDEX = 100
_SKIN_PARTS = {"hand.L", "hand.R", "forearm.L", "forearm.R", "neck"}
_TROUSER_PARTS = {"pelvis", "hips", "thigh.L", "thigh.R", "shin.L", "shin.R", "foot.L", "foot.R"}


@dataclass
class PersonResult:
    keypoints: np.ndarray  # (17, 3): x, y, v in image pixels (top-left origin)
    occlusion: list  # per joint: None, "self" or "object"
    world: np.ndarray  # (17, 3) world positions
    pose: Pose
    pose_attempts: int
    interpenetration: float
    body: dict = field(default_factory=dict)  # what the record keeps of an Anny body (height, ...)


@dataclass
class RenderResult:
    rgba: np.ndarray  # (H, W, 4) uint8, top row first: Blender's render with a transparent background
    index: np.ndarray  # (H, W) int: 0 background, p+1 person p, 100+ occluders
    people: list[PersonResult]
    camera: dict
    render_seconds: float
    engine: str
    samples: int
    device: str
    timings: dict = field(default_factory=dict)


class BlenderRenderer:
    """One per worker process. The scene is built once (rigs, mannequins, occluders, lights, camera,
    world, render settings, all at full capacity and in a fixed order) and each image only re-poses,
    moves, recolours and includes/excludes those objects (a mannequin is one mesh object whose
    vertices and normals are rewritten). Building it in a fixed order whatever the
    first image is keeps the depsgraph (and so Cycles' scene) identical for a given seed however
    many images a worker rendered before it, which keeps same-seed output byte-identical."""

    def __init__(self, engine: str = "cycles", samples: int = 16, device: str = "auto", threads: int = 0,
                 clips: dict[str, str] | None = None, rig: str | None = None):
        if engine not in ("cycles", "workbench"):
            raise ValueError(f"unknown engine {engine!r}")
        self.engine, self.samples, self.threads = engine, samples, threads
        self.device = _pick_device(device) if engine == "cycles" else "CPU"
        self.clips = dict(clips or {})  # BVH clip name -> file
        self.rig = rig  # joint-map file of a user's rigged human (people are that model, not the mannequin)
        self._stage: _Stage | None = None

    def anny_model(self) -> "anny_body.AnnyModel | None":
        """The staged Anny model (None: the people are not Anny bodies, or nothing is staged yet)."""
        return self._stage.anny if self._stage is not None else None

    def stage(self, config: scene_mod.SceneConfig, workdir: Path) -> "_Stage":
        if self._stage is None:
            self._stage = _Stage(self, config, workdir)
        return self._stage

    def render(self, spec: scene_mod.SceneSpec, config: scene_mod.SceneConfig, workdir: Path,
               world_rgb: tuple[float, float, float] | None = None,
               posed: list[tuple | None] | None = None, on_render: Callable[[], None] | None = None,
               skinned: list | None = None) -> RenderResult:
        """Build ``spec`` in the stage, render it and annotate it. ``posed[p]``, when given, is
        person p's ``posing.pose_person`` result computed beforehand (numpy only, so a worker
        thread can do it during the previous render); mocap people are posed here, with Blender.
        ``on_render`` is called just before the render call, which releases the GIL for most of
        the image's time: the moment to hand other threads their work. ``skinned[p]``, when given,
        is person p's Anny body (``anny_body.skin_person``) computed beforehand likewise."""
        t0 = time.perf_counter()
        st = self.stage(config, workdir)
        people: list[PersonResult] = []
        bodies: list[body_mod.Body] = []
        for p, person in enumerate(spec.people):
            # The mannequin's body also judges a user rig's pose (interpenetration): same metarig pose.
            ready = posed[p] if posed else None
            body, pose, attempts, worst = ready or posing.pose_person(person, config, st.clips.basis)
            bodies.append(body)
            info = {}
            if st.anny is not None:
                mesh = (skinned[p] if skinned else None) or anny_body.skin_person(st.anny, person, pose, st.clips.basis)
                world = st.people[p].place(mesh, person)
                info = {"kind": "anny", **mesh.info}
            else:
                world = st.people[p].place(body, person, pose, st.clips.basis)
            people.append(PersonResult(np.zeros((17, 3)), [None] * 17, world, pose, attempts, worst, info))
        all_points = np.concatenate([res.world for res in people])
        cam_matrix, k = scene_mod.place_camera(spec.camera, all_points, spec.width, spec.height)
        st.camera.matrix_world = Matrix(cam_matrix.tolist())
        st.camera.data.lens = spec.camera.focal_mm
        for o, occ in enumerate(spec.occluders):
            target = people[occ.target].world
            centre = target.mean(axis=0)
            radius = float(np.linalg.norm(target - centre, axis=1).max())
            st.occluders[o].place(occ, scene_mod.place_occluder(occ, cam_matrix, centre, radius), st.meshes)
        centre = all_points.mean(axis=0)
        for n, light in enumerate(spec.lights):
            st.lights[n].place(light, centre)
        st.include(len(spec.people), len(spec.occluders), len(spec.lights))
        _set_world(st.world, spec, world_rgb)
        _per_image_settings(bpy.context.scene, self, spec, workdir)
        # The render operator brings the view layer up to date before rendering (and the relations
        # rebuild that including/excluding slots causes costs ~4 ms); doing it here keeps that work
        # on the clock as scene update, not inside the render call.
        bpy.context.view_layer.update()
        t_build = time.perf_counter()
        if on_render is not None:
            on_render()
        t_render = time.perf_counter()
        bpy.ops.render.render(write_still=True)
        render_s = time.perf_counter() - t_render
        if self.engine == "cycles":
            index = _read_index_exr(workdir / "index0001.exr")
        else:
            index = _workbench_index(bpy.context.scene, st, workdir)
        rgba = readback.read_tga_rgba(workdir / "rgba.tga")
        t_index = time.perf_counter()
        if st.user_rig:
            _annotate_user_rigs(people, st.people[:len(people)], cam_matrix, k)
        elif st.anny is not None:
            _annotate_anny(people, st, len(spec.occluders), cam_matrix, k)
        else:
            _annotate(people, bodies, st, len(spec.occluders), cam_matrix, k)
        t_end = time.perf_counter()
        return RenderResult(
            rgba=rgba, index=index, people=people,
            camera={"matrix": cam_matrix.round(6).tolist(), "focal_mm": spec.camera.focal_mm,
                    "elevation": spec.camera.elevation, "azimuth": spec.camera.azimuth, "roll": spec.camera.roll,
                    "fill": spec.camera.fill},
            render_seconds=render_s, engine=self.engine, samples=self.samples, device=self.device,
            timings={"build": t_build - t0, "render": render_s, "index": t_index - t_render - render_s,
                     "annotate": t_end - t_index},
        )

def _annotate(people, bodies, st: "_Stage", occluders: int, cam_matrix, k) -> None:
    """Keypoints and COCO visibility of each person, from rays cast at the placed objects."""
    slots = [*st.people[:len(bodies)], *st.occluders[:occluders]]
    matrices = np.concatenate([slot.matrices for slot in slots])
    kinds = [kind for slot in slots for kind in slot.kinds]
    owners = np.concatenate([np.full(len(slot.kinds), slot.owner) for slot in slots])
    eye = cam_matrix[:3, 3]
    points = np.concatenate([body.keypoints for body in bodies])
    xy, depth = cam.project(points, cam_matrix, k)
    inside = cam.in_frame(xy, depth, k)
    hits = dict(zip(np.flatnonzero(inside).tolist(),
                    st.rays.first_hits(eye, points[inside], kinds, matrices, owners)))
    dist, inside, xy = np.linalg.norm(points - eye, axis=1).tolist(), inside.tolist(), xy.tolist()
    for p, (res, body) in enumerate(zip(people, bodies)):
        rows = []
        for j, tolerance in enumerate(body.tolerances.tolist()):
            i = p * 17 + j
            hit = visibility.RayHit(*hits[i]) if hits.get(i) else None
            v, res.occlusion[j] = visibility.decide(inside[i], dist[i], hit, p, tolerance)
            rows.append((xy[i][0], xy[i][1], v) if v else (0.0, 0.0, 0.0))
        res.keypoints[:] = rows


def _annotate_anny(people, st: "_Stage", occluders: int, cam_matrix, k) -> None:
    """Keypoints and COCO visibility of Anny people: rays against the skinned meshes and the occluders."""
    slots = st.people[:len(people)]
    occ = st.occluders[:occluders]
    eye = cam_matrix[:3, 3]
    points = np.concatenate([res.world for res in people])
    xy, depth = cam.project(points, cam_matrix, k)
    inside = cam.in_frame(xy, depth, k)
    targets = points[inside]
    found: list[list] = [[] for _ in range(len(targets))]  # (distance, owner, part) of each surface met
    if occ:
        hits = st.rays.first_hits(eye, targets, [kind for s in occ for kind in s.kinds],
                                  np.concatenate([s.matrices for s in occ]),
                                  np.full(sum(len(s.kinds) for s in occ), -1))
        for n, hit in enumerate(hits):
            if hit:
                found[n].append((hit[0], -1, None))
    for q, slot in enumerate(slots):
        for n, hit in enumerate(slot.first_hits(eye, targets)):
            if hit is not None:
                found[n].append((hit[0], q, hit[1]))
    first = {i: min(f, key=lambda h: h[0]) for i, f in zip(np.flatnonzero(inside).tolist(), found) if f}
    dist, inside, xy = np.linalg.norm(points - eye, axis=1).tolist(), inside.tolist(), xy.tolist()
    head = anny_body.PARTS.index("head")
    for p, (res, slot) in enumerate(zip(people, slots)):
        rows = []
        own = [first[i][2] if i in first and first[i][1] == p else None for i in range(p * 17, p * 17 + 17)]
        for j, tolerance in enumerate(slot.tolerances(res.world, own).tolist()):
            i = p * 17 + j
            hit = visibility.RayHit(*first[i][:2]) if i in first else None
            v, res.occlusion[j] = visibility.decide(inside[i], dist[i], hit, p, tolerance)
            if v == 1 and j < 5 and own[j] == head:
                # A face landmark behind its own head (the person faces away): unlabelled, as COCO's
                # annotators leave a nose or eye they cannot see on a head seen from behind.
                v, res.occlusion[j] = 0, None
            rows.append((xy[i][0], xy[i][1], v) if v else (0.0, 0.0, 0.0))
        res.keypoints[:] = rows


def _annotate_user_rigs(people, slots: list["_UserRigSlot"], cam_matrix, k) -> None:
    """Keypoints and visibility of user-rig people: Blender's rays against the skinned meshes."""
    dg = bpy.context.evaluated_depsgraph_get()
    owner = {mesh.name: q for q, slot in enumerate(slots) for mesh in slot.rig.meshes}
    for p, (res, slot) in enumerate(zip(people, slots)):
        res.keypoints[:], res.occlusion[:] = slot.rig.annotate(
            res.world, cam_matrix, k, p, owner_of=lambda obj: owner.get(obj.name, -1), depsgraph=dg)


def _pick_device(device: str) -> str:
    """GPU (OptiX, then CUDA) when asked or when 'auto' finds one; CPU otherwise."""
    if device == "cpu":
        return "CPU"
    try:
        prefs = bpy.context.preferences.addons["cycles"].preferences
    except KeyError:
        return "CPU"
    for kind in ("OPTIX", "CUDA"):
        try:
            prefs.compute_device_type = kind
            prefs.get_devices()
        except (TypeError, ValueError):
            continue
        gpus = [d for d in prefs.devices if d.type == kind]
        if gpus:
            for d in prefs.devices:
                d.use = d.type == kind
            return f"GPU:{kind}"
    if device == "gpu":
        raise RuntimeError("no CUDA/OptiX GPU found for --device gpu")
    return "CPU"


MAX_PEOPLE = 3
MAX_LIGHTS = 3


class _Stage:
    """Every object a scene can use, built once per worker in a fixed order; unused slots excluded."""

    def __init__(self, r: BlenderRenderer, config: scene_mod.SceneConfig, workdir: Path):
        _clear()
        sc = bpy.context.scene
        self.meshes = _unit_meshes()
        self.rays = rays.UnitMeshRays(self.meshes)
        self.people, self.occluders = [], []
        self.user_rig = r.rig is not None
        joint_map = user_rig_core.load_joint_map(r.rig) if self.user_rig else None
        # Anny bodies (a user rig, when given, replaces any body)
        self.anny = anny_body.load_model() if config.body == "anny" and not self.user_rig else None
        for p in range(MAX_PEOPLE):
            if joint_map:
                self.people.append(_UserRigSlot(p, joint_map))
            elif self.anny is not None:
                self.people.append(anny_slot.AnnySlot(p, self.anny, _slot_collection(f"person{p}"), _Material,
                                                      self.people[0] if p else None))
            else:
                self.people.append(_PersonSlot(p, self.meshes, self.people[0] if p else None))
        for o in range(max(config.max_occluders, 0)):
            self.occluders.append(_OccluderSlot(o, self.meshes, self.occluders[0] if o else None))
        self.lights = [_LightSlot(n) for n in range(MAX_LIGHTS)]
        cam_data = bpy.data.cameras.new("camera")
        cam_data.sensor_width = cam.SENSOR_MM
        cam_data.sensor_fit = "HORIZONTAL"
        cam_data.clip_start, cam_data.clip_end = 0.01, 1000.0
        self.camera = bpy.data.objects.new("camera", cam_data)
        self.camera.rotation_mode = "QUATERNION"
        sc.collection.objects.link(self.camera)
        sc.camera = self.camera
        self.world = bpy.data.worlds.new("world")
        self.world.use_nodes = True
        sc.world = self.world
        # Every clip of the job is imported up front, so the scene is the same for every image.
        self.clips = _Clips(r.clips)
        _setup_render(sc, r, workdir)

    def include(self, people: int, occluders: int, lights: int) -> None:
        for slots, n in ((self.people, people), (self.occluders, occluders), (self.lights, lights)):
            for i, slot in enumerate(slots):
                _include(slot.collection, i < n)


class _Clips:
    """BVH clips read by Blender's bundled importer (``bpy.ops.import_anim.bvh``), retargeted per frame."""

    def __init__(self, files: dict[str, str]):
        self.armatures, self.mappings, self.cache = {}, {}, {}
        if files:
            addon_utils.enable("io_anim_bvh", default_set=True)
        for name, path in sorted(files.items()):
            bpy.ops.import_anim.bvh(filepath=str(path), frame_start=1, use_fps_scale=False,
                                    update_scene_fps=False, update_scene_duration=False)
            arm = bpy.context.object
            arm.name = f"clip:{name}"
            self.armatures[name] = arm
            self.mappings[name] = retarget.resolve([b.name for b in arm.data.bones])

    def basis(self, pose: Pose) -> dict[str, np.ndarray]:
        key = (pose.params["clip"], int(pose.params["frame"]))
        if key not in self.cache:
            arm, mapping = self.armatures[key[0]], self.mappings[key[0]]
            sc = bpy.context.scene
            sc.frame_set(1 + key[1])
            mw = np.array(arm.matrix_world)
            deltas, heads, tails = {}, {}, {}
            for joint in {j for pair in mapping.values() for j in pair if j}:
                pb = arm.pose.bones[joint]
                posed = mw @ np.array(pb.matrix)
                deltas[joint] = posed[:3, :3] @ np.linalg.inv(mw[:3, :3] @ np.array(pb.bone.matrix_local)[:3, :3])
                heads[joint] = posed[:3, 3]
                tails[joint] = (posed @ np.array([0.0, pb.length, 0.0, 1.0]))[:3]
            sc.frame_set(1)
            self.cache[key] = retarget.retarget(mapping, deltas, heads, tails)
        return self.cache[key]


def _include(coll, on: bool) -> None:
    layer = bpy.context.view_layer.layer_collection.children[coll.name]
    if layer.exclude == on:
        layer.exclude = not on


def _slot_collection(name: str):
    coll = bpy.data.collections.new(name)
    bpy.context.scene.collection.children.link(coll)
    return coll


def _clear() -> None:
    """Remove every datablock (factory scene included), so each worker starts from the same state."""
    for coll in (bpy.data.objects, bpy.data.meshes, bpy.data.armatures, bpy.data.materials, bpy.data.lights,
                 bpy.data.cameras, bpy.data.images, bpy.data.worlds, bpy.data.node_groups, bpy.data.collections):
        for block in list(coll):
            coll.remove(block)


def _unit_meshes() -> dict[str, bpy.types.Mesh]:
    out = {}
    for name, build in (
        ("sphere", lambda bm: bmesh.ops.create_uvsphere(bm, u_segments=16, v_segments=10, radius=1.0)),
        ("cylinder", lambda bm: bmesh.ops.create_cone(bm, cap_ends=True, segments=16, radius1=1.0,
                                                      radius2=1.0, depth=1.0)),
        ("box", lambda bm: bmesh.ops.create_cube(bm, size=1.0)),
    ):
        bm = bmesh.new()
        build(bm)
        mesh = bpy.data.meshes.new(name)
        bm.to_mesh(mesh)
        bm.free()
        for poly in mesh.polygons:
            poly.use_smooth = name != "box"
        mesh.materials.append(None)
        out[name] = mesh
    return out


class _Material:
    """A Principled material whose node graph never changes. Its colours and noise scale are read
    from custom properties of the object wearing it (Attribute nodes), so that a new image only sets
    those (~1 us each); writing node socket values re-ran Blender's node-tree update, ~30 us each."""

    def __init__(self, name: str, prefix: str, like: "_Material | None" = None):
        self.prefix = prefix  # of the custom properties it reads (on the object wearing it)
        if like is not None:  # the same graph reading the same names: a copy is ~50x cheaper to make
            self.mat = like.mat.copy()
            self.mat.name = name
            return
        self.mat = mat = bpy.data.materials.new(name)
        mat.use_nodes = True
        nodes, links = mat.node_tree.nodes, mat.node_tree.links
        bsdf = nodes["Principled BSDF"]
        bsdf.inputs["Roughness"].default_value = 0.6
        noise = nodes.new("ShaderNodeTexNoise")
        mix = nodes.new("ShaderNodeMix")
        mix.data_type = "RGBA"
        links.new(noise.outputs["Fac"], mix.inputs["Factor"])
        links.new(mix.outputs["Result"], bsdf.inputs["Base Color"])
        for key, output, socket in (("a", "Color", mix.inputs["A"]), ("b", "Color", mix.inputs["B"]),
                                    ("scale", "Fac", noise.inputs["Scale"])):
            attr = nodes.new("ShaderNodeAttribute")
            attr.attribute_type, attr.attribute_name = "OBJECT", f"{prefix}_{key}"
            links.new(attr.outputs[output], socket)

    def set(self, obj, rgb, texture_scale: float = 0.0) -> None:
        """Plain colour, or a woven/patterned look where noise darkens the cloth in places."""
        self.mat.diffuse_color = (*rgb, 1.0)  # what Workbench shows
        obj[f"{self.prefix}_a"] = tuple(rgb)
        obj[f"{self.prefix}_b"] = tuple(c * 0.35 for c in rgb) if texture_scale > 0 else tuple(rgb)
        obj[f"{self.prefix}_scale"] = texture_scale if texture_scale > 0 else 1.0


def _link(name: str, mesh, index: int, material, collection):
    obj = bpy.data.objects.new(name, mesh)
    obj.rotation_mode = "QUATERNION"  # matrix_world -> rotation without Euler compatibility with the last value
    obj.pass_index = index
    collection.objects.link(obj)
    # The unit meshes are shared, so each object carries its own material in its one slot.
    obj.material_slots[0].link = "OBJECT"
    obj.material_slots[0].material = material
    return obj


def _capsule_matrices(segs: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(K, 3, 4, 4): unit cylinder and the two unit spheres of each capsule (K segments, K radii)."""
    a, b = segs[:, 0], segs[:, 1]
    axis = b - a
    length = np.linalg.norm(axis, axis=1)
    z = np.where(length[:, None] > 1e-9, axis / np.maximum(length, 1e-300)[:, None], [0.0, 0.0, 1.0])
    hint = np.where(np.abs(z[:, :1]) < 0.9, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    x = np.cross(hint, z)
    x /= np.linalg.norm(x, axis=1)[:, None]
    y = np.cross(z, x)
    r = radii[:, None]
    out = np.zeros((len(segs), 3, 4, 4))
    out[:, :, 3, 3] = 1.0
    out[:, 0, :3, 0], out[:, 0, :3, 1] = x * r, y * r
    out[:, 0, :3, 2], out[:, 0, :3, 3] = z * np.maximum(length, 1e-4)[:, None], (a + b) / 2
    for n, end in ((1, a), (2, b)):
        out[:, n, [0, 1, 2], [0, 1, 2]] = r
        out[:, n, :3, 3] = end
    return out


def _as_stored(matrices: np.ndarray) -> np.ndarray:
    """The matrices as Blender keeps them (float32), for the ray casts to see what is rendered."""
    return matrices.astype(np.float32).astype(np.float64)


class _PersonSlot:
    """Person p's mannequin: one capsule (cylinder + 2 spheres) per body part, a head and a nose,
    all in ONE mesh object whose vertices are rewritten per image. (As 59 objects, every change of
    which slots are in the scene made Blender rebuild its depsgraph relations at ~17 us an object.)"""

    def __init__(self, p: int, meshes, like: "_PersonSlot | None" = None):
        self.collection = _slot_collection(f"person{p}")
        self.skin, self.shirt, self.trousers = (_Material(f"{kind}{p}", kind, like and getattr(like, kind))
                                                for kind in ("skin", "shirt", "trousers"))
        self.owner = p  # for the ray casts: whose body a hit is
        # Primitives in a fixed order: per capsule its cylinder and two end spheres, then head and nose.
        self.kinds, slots = [], []
        for name in body_mod.CAPSULE_NAMES:
            slot = 0 if name in _SKIN_PARTS else 2 if name in _TROUSER_PARTS else 1
            self.kinds += ["cylinder", "sphere", "sphere"]
            slots += [slot] * 3
        self.kinds += ["sphere", "sphere"]
        slots += [0, 0]
        self.mesh, local, normals, part_of_vertex = _joined_mesh(
            f"person{p}", [meshes[k] for k in self.kinds], slots, [self.skin.mat, self.shirt.mat, self.trousers.mat])
        # Per unit mesh: its parts, their vertices' rows in the joined mesh, its local positions and normals.
        self.groups = []
        for kind in ("cylinder", "sphere"):
            parts = np.array([i for i, k in enumerate(self.kinds) if k == kind])
            rows = np.stack([np.flatnonzero(part_of_vertex == i) for i in parts])
            self.groups.append((parts, rows, local[rows[0]], normals[rows[0]]))
        self.world, self.normals = np.zeros_like(local), np.zeros_like(normals)
        self.obj = bpy.data.objects.new(f"person{p}", self.mesh)
        self.obj.pass_index = p + 1
        self.collection.objects.link(self.obj)
        self.matrices = np.zeros((len(self.kinds), 4, 4))

    def place(self, body: body_mod.Body, person: scene_mod.PersonSpec, pose: Pose, clip_basis) -> np.ndarray:
        """Shape the mannequin as ``body``; its world keypoints."""
        self.skin.set(self.obj, person.skin_rgb)
        self.shirt.set(self.obj, person.clothing_rgb, person.texture_scale)
        self.trousers.set(self.obj, person.trousers_rgb, person.texture_scale)
        matrices = np.concatenate([_capsule_matrices(body.capsules, body.radii).reshape(-1, 4, 4),
                                   body.head[None], body.nose[None]])
        rot, inv = matrices[:, :3, :3], np.linalg.inv(matrices[:, :3, :3])
        for parts, rows, local, normals in self.groups:
            self.world[rows] = local @ rot[parts].transpose(0, 2, 1) + matrices[parts, None, :3, 3]
            # Normals as an instanced unit mesh would get them (inverse transpose), given explicitly:
            # Blender's own smooth normals of a joined mesh vary in the last bits between processes.
            self.normals[rows] = normals @ inv[parts]
        self.normals /= np.linalg.norm(self.normals, axis=1)[:, None]
        # Attribute writes: ~200x faster than ``vertices.foreach_set("co", ...)``.
        self.mesh.attributes["position"].data.foreach_set("vector", self.world.astype(np.float32).ravel())
        self.mesh.attributes["custom_normal"].data.foreach_set("vector", self.normals.astype(np.float32).ravel())
        # An attribute write does not tell the mesh its positions changed; one vertex written through
        # ``co`` does, so nothing derived from the old positions is kept (it did change renders).
        self.mesh.vertices[0].co = self.world[0]
        self.mesh.update()
        self.matrices = _as_stored(matrices)
        return body.keypoints


class _UserRigSlot:
    """Person p as the user's own rigged model (``docs/user_rig.md``): posed like the metarig by
    retargeting, with the model's own materials and proportions (scaled by the person's height)."""

    def __init__(self, p: int, joint_map):
        self.collection = _slot_collection(f"person{p}")
        self.rig = user_rig.UserRig(joint_map, pass_index=p + 1, collection=self.collection)

    def place(self, body: body_mod.Body, person: scene_mod.PersonSpec, pose: Pose, clip_basis) -> np.ndarray:
        basis, orientation = posing.metarig_basis(pose, clip_basis)
        poser = self.rig.poser
        posed = poser.pose(basis, poser.armature_matrix(orientation, person.location, person.height_scale))
        self.rig.apply(posed)
        return posed.keypoints


def _smooth_normals(co: np.ndarray, corners: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Angle-weighted vertex normals, summed in a fixed order (Blender's own are summed in parallel)."""
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    face = np.repeat(np.arange(len(sizes)), sizes)
    nxt = np.arange(len(corners)) + 1
    nxt[starts + sizes - 1] = starts  # each corner's next corner around its face
    prv = np.empty_like(nxt)
    prv[nxt] = np.arange(len(corners))
    p, a, b = co[corners], co[corners[nxt]], co[corners[prv]]
    face_n = np.zeros((len(sizes), 3))
    np.add.at(face_n, face, np.cross(p, a))  # Newell: any planar polygon, any winding-consistent fan
    face_n /= np.linalg.norm(face_n, axis=1)[:, None]
    e1, e2 = a - p, b - p
    cos = np.einsum("ij,ij->i", e1, e2) / (np.linalg.norm(e1, axis=1) * np.linalg.norm(e2, axis=1))
    out = np.zeros_like(co, dtype=np.float64)
    np.add.at(out, corners, face_n[face] * np.arccos(np.clip(cos, -1, 1))[:, None])
    return out / np.linalg.norm(out, axis=1)[:, None]


def _joined_mesh(name: str, parts: list, slots: list[int], materials: list):
    """One mesh holding a copy of each unit mesh of ``parts`` (faces keep their smoothing; material
    ``slots[i]`` for part i); with each vertex's local position and normal, and the part it belongs to."""
    geo = {}
    for part in set(parts):  # each unit mesh's arrays, read once
        co = np.zeros(len(part.vertices) * 3, np.float32)
        part.vertices.foreach_get("co", co)
        corners, sizes, smooth = (np.zeros(len(c), dt) for c, dt in (
            (part.loops, np.int32), (part.polygons, np.int32), (part.polygons, bool)))
        part.loops.foreach_get("vertex_index", corners)
        part.polygons.foreach_get("loop_total", sizes)
        part.polygons.foreach_get("use_smooth", smooth)
        geo[part.name] = (co.reshape(-1, 3), corners, sizes, smooth, _smooth_normals(co.reshape(-1, 3), corners, sizes))
    pieces = [geo[part.name] for part in parts]
    counts = np.array([len(g[0]) for g in pieces])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    co = np.concatenate([g[0] for g in pieces])
    corners = np.concatenate([g[1] + off for g, off in zip(pieces, offsets)])
    sizes = np.concatenate([g[2] for g in pieces])
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(co))
    mesh.loops.add(len(corners))
    mesh.polygons.add(len(sizes))
    mesh.attributes["position"].data.foreach_set("vector", co.ravel())
    mesh.polygons.foreach_set("loop_start", np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32))
    mesh.attributes[".corner_vert"].data.foreach_set("value", corners)  # what polygons' "vertices" sets, faster
    mesh.update(calc_edges=True)
    mesh.attributes.new("sharp_face", "BOOLEAN", "FACE").data.foreach_set(
        "value", ~np.concatenate([g[3] for g in pieces]))
    mesh.attributes.new("material_index", "INT", "FACE").data.foreach_set(
        "value", np.repeat(np.array(slots, np.int32), [len(g[2]) for g in pieces]))
    for mat in materials:
        mesh.materials.append(mat)
    mesh.attributes.new("custom_normal", "FLOAT_VECTOR", "POINT")  # Blender 4.5: the mesh's normals
    mesh.update()
    normals = np.concatenate([g[4] for g in pieces])
    return mesh, co.astype(np.float64), normals, np.repeat(np.arange(len(parts)), counts)


class _OccluderSlot:
    def __init__(self, o: int, meshes, like: "_OccluderSlot | None" = None):
        self.collection = _slot_collection(f"occluder{o}")
        self.material = _Material(f"occ{o}", "occ", like and like.material)
        self.obj = _link(f"occluder{o}", meshes["box"], OCCLUDER_INDEX + o, self.material.mat, self.collection)
        self.owner, self.kinds, self.matrices = -1, ["box"], np.eye(4)[None]

    def place(self, spec: scene_mod.OccluderSpec, matrix: np.ndarray, meshes) -> None:
        mesh = meshes["cylinder" if spec.kind == "cylinder" else "box"]
        if self.obj.data != mesh:
            self.obj.data = mesh
            self.obj.material_slots[0].link = "OBJECT"
            self.obj.material_slots[0].material = self.material.mat
        if spec.kind == "cylinder":
            matrix = matrix.copy()
            matrix[:3, 0] *= 0.5  # unit cylinder has radius 1: make its width the spec's size
            matrix[:3, 1] *= 0.5
        self.obj.matrix_world = Matrix(matrix.tolist())
        self.kinds, self.matrices = [mesh.name], _as_stored(matrix[None])
        self.material.set(self.obj, spec.rgb)


class _LightSlot:
    """One light object; its data is swapped between a sun, a point and an area light."""

    def __init__(self, n: int):
        self.collection = _slot_collection(f"light{n}")
        self.data = {kind: bpy.data.lights.new(f"light{n}.{kind}", kind) for kind in ("SUN", "POINT", "AREA")}
        self.data["AREA"].size = 1.0
        self.obj = bpy.data.objects.new(f"light{n}", self.data["SUN"])
        self.obj.rotation_mode = "QUATERNION"
        self.collection.objects.link(self.obj)

    def place(self, spec: scene_mod.LightSpec, target: np.ndarray) -> None:
        data = self.data[spec.kind]
        data.energy = spec.energy
        data.color = spec.rgb
        if self.obj.data != data:
            self.obj.data = data
        el, az = math.radians(spec.elevation), math.radians(spec.azimuth)
        direction = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        m = cam.look_at(target + 5.0 * direction, target)  # lights, like cameras, shine down their -Z
        self.obj.matrix_world = Matrix(m.tolist())


def _set_world(world, spec: scene_mod.SceneSpec, world_rgb=None) -> None:
    """Ambient light: the mean colour of the background behind the person (gradient or photo)."""
    bg = world.node_tree.nodes["Background"]
    sky = world_rgb or tuple((a + b) / 2 for a, b in zip(spec.background.top_rgb, spec.background.bottom_rgb))
    bg.inputs["Color"].default_value = (*sky, 1.0)
    bg.inputs["Strength"].default_value = spec.world_strength


def _setup_render(sc, r: BlenderRenderer, workdir: Path) -> None:
    """Settings that hold for every image of the worker."""
    render = sc.render
    render.film_transparent = True
    render.use_stamp = False
    for flag in ("date", "time", "render_time", "frame", "frame_range", "memory", "hostname", "camera",
                 "lens", "scene", "marker", "filename", "sequencer_strip", "note"):
        setattr(render, f"use_stamp_{flag}", False)
    # Persistent data would let Cycles refit rather than rebuild its BVH: the result would then depend
    # on the image rendered before.
    render.use_persistent_data = False
    if r.threads:
        render.threads_mode, render.threads = "FIXED", r.threads
    sc.view_settings.view_transform = "Standard"
    sc.view_settings.look = "None"
    sc.display_settings.display_device = "sRGB"
    render.image_settings.file_format = "TARGA_RAW"  # a scratch file read straight back, see readback.py
    render.image_settings.color_mode = "RGBA"
    sc.frame_set(1)
    sc.use_nodes = r.engine == "cycles"
    if r.engine == "cycles":
        render.engine = "CYCLES"
        sc.cycles.device = "GPU" if r.device.startswith("GPU") else "CPU"
        sc.cycles.samples = r.samples
        sc.cycles.use_adaptive_sampling = False
        sc.cycles.use_denoising = False
        sc.cycles.max_bounces = 4
        sc.view_layers[0].use_pass_object_index = True
        tree = sc.node_tree
        for node in list(tree.nodes):
            tree.nodes.remove(node)
        layers = tree.nodes.new("CompositorNodeRLayers")
        composite = tree.nodes.new("CompositorNodeComposite")
        out = tree.nodes.new("CompositorNodeOutputFile")
        out.name = "index_out"
        out.format.file_format = "OPEN_EXR"
        out.format.color_mode = "BW"
        out.format.color_depth = "32"
        out.format.exr_codec = "NONE"
        out.file_slots[0].path = "index"
        tree.links.new(layers.outputs["Image"], composite.inputs["Image"])
        tree.links.new(layers.outputs["IndexOB"], out.inputs[0])
    else:
        render.engine = "BLENDER_WORKBENCH"


def _per_image_settings(sc, r: BlenderRenderer, spec: scene_mod.SceneSpec, workdir: Path) -> None:
    render = sc.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = spec.width, spec.height, 100
    render.filepath = str(workdir / "rgba.tga")
    render.image_settings.file_format = "TARGA_RAW"
    if r.engine == "cycles":
        sc.cycles.seed = spec.seed % (2**31)
        sc.node_tree.nodes["index_out"].base_path = str(workdir)
    else:  # undo what the index render of the previous image changed
        sc.display.render_aa = "8" if r.samples >= 8 else "5" if r.samples >= 5 else "OFF"
        shading = sc.display.shading
        shading.light, shading.color_type = "STUDIO", "MATERIAL"


def _read_index_exr(path: Path) -> np.ndarray:
    # Read with numpy, not bpy.data.images: no datablock churn, so no depsgraph rebuild after it.
    index = np.rint(readback.read_exr_channel(path)).astype(np.int32)
    os.unlink(path)
    return index


def _workbench_index(sc, st: _Stage, workdir: Path) -> np.ndarray:
    """Second Workbench render, flat and unlit, with each object's index coded in its colour."""
    visible = [o for slot in (*st.people, *st.occluders) for o in slot.collection.objects
               if not bpy.context.view_layer.layer_collection.children[slot.collection.name].exclude]
    ids = sorted({o.pass_index for o in visible})
    code = {pid: (n + 1) for n, pid in enumerate(ids)}  # compact codes, far apart in colour
    step = 1.0 / (len(ids) + 1)
    for obj in visible:
        obj.color = (code[obj.pass_index] * step, 0.0, 0.0, 1.0)
    shading = sc.display.shading
    shading.light, shading.color_type = "FLAT", "OBJECT"
    sc.display.render_aa = "OFF"
    render = sc.render
    render.filepath = str(workdir / "ids.png")
    render.image_settings.file_format = "PNG"
    render.image_settings.color_depth = "16"
    main = workdir / "rgba.tga"
    keep = main.read_bytes()
    bpy.ops.render.render(write_still=True)
    main.write_bytes(keep)
    img = bpy.data.images.load(str(workdir / "ids.png"))
    img.colorspace_settings.name = "sRGB"
    w, h = img.size
    px = np.empty(w * h * 4, dtype=np.float32)
    img.pixels.foreach_get(px)
    bpy.data.images.remove(img)
    px = px.reshape(h, w, 4)[::-1]
    # Decode the nearest code; transparent pixels are background.
    expected = np.array([(n + 1) * step for n in range(len(ids))])
    red = px[..., 0]
    nearest = np.abs(red[..., None] - expected[None, None, :]).argmin(axis=2)
    out = np.array(ids, dtype=np.int32)[nearest]
    out[px[..., 3] < 0.5] = 0
    return out
