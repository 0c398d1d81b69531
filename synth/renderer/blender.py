"""The Blender backend: builds a :class:`SceneSpec` with bpy, renders it, reports what it sees.

This is the only module that imports ``bpy``. It runs inside worker processes only (one Blender
per process: bpy is not thread-safe and a renderer can abort its whole process), see worker.py.

Per-person masks come from Cycles' object-index pass, written by the compositor to a float EXR
(every person's primitives carry ``pass_index = person + 1``, occluders 100+). Workbench has no
index pass, so it renders a second, unlit, un-antialiased image whose flat object colours encode
the same indices. Visibility comes from ``scene.ray_cast`` from the camera to each joint.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import bpy  # noqa: I001  (must come first: it puts Blender's own modules on the path)
import addon_utils
import bmesh
import numpy as np
from mathutils import Matrix

from ..core import body as body_mod
from ..core import camera as cam
from ..core import scene as scene_mod
from ..core import visibility
from ..core.pose import Pose, bone_eulers, orientation_matrix, sample_pose

OCCLUDER_INDEX = 100
# Rest position of the metarig's pelvis (head of ``spine``): people are placed and turned about it.
PELVIS_REST = np.array([0.0, 0.055, 1.01])
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


@dataclass
class RenderResult:
    rgba_png: Path  # Blender's render with a transparent background
    index: np.ndarray  # (H, W) int: 0 background, p+1 person p, 100+ occluders
    people: list[PersonResult]
    camera: dict
    render_seconds: float
    engine: str
    samples: int
    device: str
    timings: dict = field(default_factory=dict)


class BlenderRenderer:
    def __init__(self, engine: str = "cycles", samples: int = 16, device: str = "auto", threads: int = 0):
        if engine not in ("cycles", "workbench"):
            raise ValueError(f"unknown engine {engine!r}")
        self.engine, self.samples, self.threads = engine, samples, threads
        addon_utils.enable("rigify", default_set=True)
        self.device = _pick_device(device) if engine == "cycles" else "CPU"

    # ----- scene building ------------------------------------------------------------------
    def render(self, spec: scene_mod.SceneSpec, config: scene_mod.SceneConfig, workdir: Path) -> RenderResult:
        t0 = time.perf_counter()
        _clear()
        sc = bpy.context.scene
        meshes = _unit_meshes()
        people: list[PersonResult] = []
        bodies: list[body_mod.Body] = []
        owners: dict[str, int] = {}
        for p, person in enumerate(spec.people):
            arm = _add_rig(f"rig{p}")
            body, pose, attempts, worst = _pose_person(arm, person, config)
            bodies.append(body)
            people.append(PersonResult(np.zeros((17, 3)), [None] * 17, body.keypoints, pose, attempts, worst))
            for obj in _build_mannequin(body, person, p, meshes):
                owners[obj.name] = p
        all_points = np.concatenate([b.keypoints for b in bodies])
        cam_matrix, k = scene_mod.place_camera(spec.camera, all_points, spec.width, spec.height)
        cam_obj = _add_camera(cam_matrix, spec.camera.focal_mm)
        for o, occ in enumerate(spec.occluders):
            target = bodies[occ.target].keypoints
            centre = target.mean(axis=0)
            radius = float(np.linalg.norm(target - centre, axis=1).max())
            obj = _add_occluder(occ, scene_mod.place_occluder(occ, cam_matrix, centre, radius), meshes, o)
            owners[obj.name] = -1
        centre = all_points.mean(axis=0)
        for n, light in enumerate(spec.lights):
            _add_light(light, centre, n)
        _setup_world(spec)
        _setup_render(sc, self, spec, cam_obj, workdir)
        bpy.context.view_layer.update()
        t_build = time.perf_counter()
        bpy.ops.render.render(write_still=True)
        render_s = time.perf_counter() - t_build
        if self.engine == "cycles":
            index = _read_index_exr(workdir / "index0001.exr")
        else:
            index = _workbench_index(sc, spec, workdir)
        t_index = time.perf_counter()
        self._annotate(people, bodies, owners, cam_matrix, k)
        t_end = time.perf_counter()
        return RenderResult(
            rgba_png=workdir / "rgba.png", index=index, people=people,
            camera={"matrix": cam_matrix.round(6).tolist(), "focal_mm": spec.camera.focal_mm,
                    "elevation": spec.camera.elevation, "azimuth": spec.camera.azimuth, "roll": spec.camera.roll,
                    "fill": spec.camera.fill},
            render_seconds=render_s, engine=self.engine, samples=self.samples, device=self.device,
            timings={"build": t_build - t0, "render": render_s, "index": t_index - t_build - render_s,
                     "annotate": t_end - t_index},
        )

    def _annotate(self, people, bodies, owners, cam_matrix, k) -> None:
        depsgraph = bpy.context.evaluated_depsgraph_get()
        eye = cam_matrix[:3, 3]
        for p, (res, body) in enumerate(zip(people, bodies)):
            xy, depth = cam.project(body.keypoints, cam_matrix, k)
            inside = cam.in_frame(xy, depth, k)
            for j in range(17):
                hit = None
                vec = body.keypoints[j] - eye
                dist = float(np.linalg.norm(vec))
                if inside[j]:
                    ok, loc, _n, _i, obj, _m = bpy.context.scene.ray_cast(
                        depsgraph, _vec(eye), _vec(vec / dist), distance=dist)
                    if ok:
                        hit = visibility.RayHit(float(np.linalg.norm(np.array(loc) - eye)), owners.get(obj.name, -1))
                v, kind = visibility.decide(bool(inside[j]), dist, hit, p, float(body.tolerances[j]))
                res.keypoints[j] = (xy[j, 0], xy[j, 1], v) if v else (0.0, 0.0, 0.0)
                res.occlusion[j] = kind


def _vec(a):
    from mathutils import Vector

    return Vector((float(a[0]), float(a[1]), float(a[2])))


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


def _clear() -> None:
    """Remove every datablock a previous scene made, so each render starts from the same state."""
    for coll in (bpy.data.objects, bpy.data.meshes, bpy.data.armatures, bpy.data.materials, bpy.data.lights,
                 bpy.data.cameras, bpy.data.images, bpy.data.worlds, bpy.data.node_groups):
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


def _add_rig(name: str):
    bpy.ops.object.armature_human_metarig_add()
    arm = bpy.context.object
    arm.name = name
    return arm


def _pose_person(arm, person: scene_mod.PersonSpec, config: scene_mod.SceneConfig):
    """Pose the rig; re-draw the pose (same family) while limbs interpenetrate; keep the least bad."""
    pose, best = person.pose, None
    for attempt in range(max(1, config.pose_attempts)):
        if attempt:
            rng = np.random.default_rng([person.pose_seed, attempt])
            pose = sample_pose(rng, person.pose.family, config.extremeness)
        body = _apply_pose(arm, pose, person)
        worst = body_mod.interpenetration(body)
        if best is None or worst < best[3]:
            best = (body, pose, attempt + 1, worst)
        if worst <= config.max_interpenetration:
            return body, pose, attempt + 1, worst
    body, pose, _, worst = best
    return _apply_pose(arm, pose, person), pose, config.pose_attempts, worst


def _apply_pose(arm, pose: Pose, person: scene_mod.PersonSpec) -> body_mod.Body:
    s = person.height_scale
    m = np.eye(4)
    m[:3, :3] = orientation_matrix(*pose.orientation) * s
    m[:3, 3] = np.asarray(person.location) - m[:3, :3] @ PELVIS_REST
    arm.matrix_world = Matrix(m.tolist())
    for bone, euler in bone_eulers(pose.dofs).items():
        pb = arm.pose.bones[bone]
        pb.rotation_mode = "XYZ"
        pb.rotation_euler = euler
    bpy.context.view_layer.update()
    mw = arm.matrix_world
    rig = {}
    for name in body_mod.RIG_BONES:
        pb = arm.pose.bones[name]
        rig[name] = (np.array(mw @ pb.head), np.array(mw @ pb.tail))
    hb = arm.pose.bones[body_mod.HEAD_BONE]
    deform = mw @ hb.matrix @ hb.bone.matrix_local.inverted()
    return body_mod.build_body(rig, np.array(deform), s, person.limb_thickness, person.torso_width)


def _material(name: str, rgb, texture_scale: float = 0.0):
    mat = bpy.data.materials.new(name)
    mat.diffuse_color = (*rgb, 1.0)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes["Principled BSDF"]
    bsdf.inputs["Base Color"].default_value = (*rgb, 1.0)
    bsdf.inputs["Roughness"].default_value = 0.6
    if texture_scale > 0:  # a woven/patterned look: noise darkens the cloth in places
        noise = nodes.new("ShaderNodeTexNoise")
        noise.inputs["Scale"].default_value = texture_scale
        mix = nodes.new("ShaderNodeMix")
        mix.data_type = "RGBA"
        mix.inputs["A"].default_value = (*rgb, 1.0)
        mix.inputs["B"].default_value = tuple(c * 0.35 for c in rgb) + (1.0,)
        links.new(noise.outputs["Fac"], mix.inputs["Factor"])
        links.new(mix.outputs["Result"], bsdf.inputs["Base Color"])
    return mat


def _link(name: str, mesh, matrix: np.ndarray, index: int, material):
    obj = bpy.data.objects.new(name, mesh)
    obj.matrix_world = Matrix(matrix.tolist())
    obj.pass_index = index
    bpy.context.scene.collection.objects.link(obj)
    # The unit meshes are shared, so each object carries its own material in its one slot.
    obj.material_slots[0].link = "OBJECT"
    obj.material_slots[0].material = material
    return obj


def _capsule_matrices(a: np.ndarray, b: np.ndarray, r: float) -> list[np.ndarray]:
    axis = b - a
    length = float(np.linalg.norm(axis))
    z = axis / length if length > 1e-9 else np.array([0.0, 0.0, 1.0])
    hint = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(hint, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    cyl = np.eye(4)
    cyl[:3, 0], cyl[:3, 1], cyl[:3, 2], cyl[:3, 3] = x * r, y * r, z * max(length, 1e-4), (a + b) / 2
    out = [cyl]
    for end in (a, b):
        sph = np.diag([r, r, r, 1.0])
        sph[:3, 3] = end
        out.append(sph)
    return out


def _build_mannequin(body: body_mod.Body, person: scene_mod.PersonSpec, p: int, meshes) -> list:
    skin = _material(f"skin{p}", person.skin_rgb)
    shirt = _material(f"shirt{p}", person.clothing_rgb, person.texture_scale)
    trousers = _material(f"trousers{p}", person.trousers_rgb, person.texture_scale)
    objs = []
    for (a, b), r, name in zip(body.capsules, body.radii, body.names):
        mat = skin if name in _SKIN_PARTS else trousers if name in _TROUSER_PARTS else shirt
        for n, m in enumerate(_capsule_matrices(a, b, float(r))):
            objs.append(_link(f"p{p}.{name}.{n}", meshes["cylinder" if n == 0 else "sphere"], m, p + 1, mat))
    objs.append(_link(f"p{p}.head", meshes["sphere"], body.head, p + 1, skin))
    objs.append(_link(f"p{p}.nose", meshes["sphere"], body.nose, p + 1, skin))
    return objs


def _add_camera(matrix: np.ndarray, focal_mm: float):
    data = bpy.data.cameras.new("camera")
    data.lens = focal_mm
    data.sensor_width = cam.SENSOR_MM
    data.sensor_fit = "HORIZONTAL"
    data.clip_start = 0.01
    data.clip_end = 1000.0
    obj = bpy.data.objects.new("camera", data)
    obj.matrix_world = Matrix(matrix.tolist())
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.scene.camera = obj
    return obj


def _add_occluder(spec: scene_mod.OccluderSpec, matrix: np.ndarray, meshes, o: int):
    mesh = meshes["cylinder" if spec.kind == "cylinder" else "box"]
    if spec.kind == "cylinder":
        matrix = matrix.copy()
        matrix[:3, 0] *= 0.5  # unit cylinder has radius 1: make its width the spec's size
        matrix[:3, 1] *= 0.5
    return _link(f"occluder{o}", mesh, matrix, OCCLUDER_INDEX + o, _material(f"occ{o}", spec.rgb, 0.0))


def _add_light(spec: scene_mod.LightSpec, target: np.ndarray, n: int) -> None:
    data = bpy.data.lights.new(f"light{n}", spec.kind)
    data.energy = spec.energy
    data.color = spec.rgb
    if spec.kind == "AREA":
        data.size = 1.0
    el, az = math.radians(spec.elevation), math.radians(spec.azimuth)
    direction = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    m = cam.look_at(target + 5.0 * direction, target)  # lights, like cameras, shine down their -Z
    obj = bpy.data.objects.new(f"light{n}", data)
    obj.matrix_world = Matrix(m.tolist())
    bpy.context.scene.collection.objects.link(obj)


def _setup_world(spec: scene_mod.SceneSpec) -> None:
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    bg = world.node_tree.nodes["Background"]
    sky = tuple((a + b) / 2 for a, b in zip(spec.background.top_rgb, spec.background.bottom_rgb))
    bg.inputs["Color"].default_value = (*sky, 1.0)
    bg.inputs["Strength"].default_value = spec.world_strength
    bpy.context.scene.world = world


def _setup_render(sc, r: BlenderRenderer, spec: scene_mod.SceneSpec, cam_obj, workdir: Path) -> None:
    render = sc.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = spec.width, spec.height, 100
    render.film_transparent = True
    render.use_stamp = False
    for flag in ("date", "time", "render_time", "frame", "frame_range", "memory", "hostname", "camera",
                 "lens", "scene", "marker", "filename", "sequencer_strip", "note"):
        setattr(render, f"use_stamp_{flag}", False)
    render.use_persistent_data = False
    if r.threads:
        render.threads_mode, render.threads = "FIXED", r.threads
    sc.view_settings.view_transform = "Standard"
    sc.view_settings.look = "None"
    sc.display_settings.display_device = "sRGB"
    render.image_settings.file_format = "PNG"
    render.image_settings.color_mode = "RGBA"
    render.image_settings.color_depth = "8"
    render.image_settings.compression = 15
    render.filepath = str(workdir / "rgba.png")
    sc.frame_set(1)
    sc.use_nodes = r.engine == "cycles"
    if r.engine == "cycles":
        render.engine = "CYCLES"
        sc.cycles.device = "GPU" if r.device.startswith("GPU") else "CPU"
        sc.cycles.samples = r.samples
        sc.cycles.use_adaptive_sampling = False
        sc.cycles.use_denoising = False
        sc.cycles.seed = spec.seed % (2**31)
        sc.cycles.max_bounces = 4
        sc.view_layers[0].use_pass_object_index = True
        tree = sc.node_tree
        for node in list(tree.nodes):
            tree.nodes.remove(node)
        layers = tree.nodes.new("CompositorNodeRLayers")
        composite = tree.nodes.new("CompositorNodeComposite")
        out = tree.nodes.new("CompositorNodeOutputFile")
        out.base_path = str(workdir)
        out.format.file_format = "OPEN_EXR"
        out.format.color_mode = "BW"
        out.format.color_depth = "32"
        out.format.exr_codec = "ZIP"
        out.file_slots[0].path = "index"
        tree.links.new(layers.outputs["Image"], composite.inputs["Image"])
        tree.links.new(layers.outputs["IndexOB"], out.inputs[0])
    else:
        render.engine = "BLENDER_WORKBENCH"
        sc.display.render_aa = "8" if r.samples >= 8 else "5" if r.samples >= 5 else "OFF"
        shading = sc.display.shading
        shading.light, shading.color_type = "STUDIO", "MATERIAL"


def _read_index_exr(path: Path) -> np.ndarray:
    img = bpy.data.images.load(str(path))
    w, h = img.size
    px = np.empty(w * h * 4, dtype=np.float32)
    img.pixels.foreach_get(px)
    bpy.data.images.remove(img)
    os.unlink(path)
    # Blender's image rows start at the bottom; ours at the top.
    return np.rint(px.reshape(h, w, 4)[::-1, :, 0]).astype(np.int32)


def _workbench_index(sc, spec: scene_mod.SceneSpec, workdir: Path) -> np.ndarray:
    """Second Workbench render, flat and unlit, with each object's index coded in its colour."""
    ids = sorted({o.pass_index for o in bpy.data.objects if o.type == "MESH"})
    code = {pid: (n + 1) for n, pid in enumerate(ids)}  # compact codes, far apart in colour
    step = 1.0 / (len(ids) + 1)
    for obj in bpy.data.objects:
        if obj.type == "MESH":
            obj.color = (code[obj.pass_index] * step, 0.0, 0.0, 1.0)
    shading = sc.display.shading
    shading.light, shading.color_type = "FLAT", "OBJECT"
    sc.display.render_aa = "OFF"
    sc.view_settings.view_transform = "Standard"
    render = sc.render
    render.filepath = str(workdir / "ids.png")
    render.image_settings.color_depth = "16"
    main = workdir / "rgba.png"
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
