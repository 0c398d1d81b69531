"""A user's own rigged human: joint-map validation, retargeting maths (numpy) and the Blender side
(import of .glb/.fbx, posing, rendering, visibility) in child processes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.schema import COCO17_JOINTS
from posepipe.synth.core import body, metarig_rest, pose as P, rig
from posepipe.synth.core import user_rig as U

FAMILIES = ("inversion", "bridge", "split", "deep_squat", "lying", "arms_overhead", "falling", "twisted_torso",
            "free")
IDENTITY_POSE = {b: b for b in U.POSE_BONES}


def _identity_map_data(model: str = "human.glb") -> dict:
    return {"model": model,
            "keypoints": {j: {"bone": b, "end": e} for j, b, e in body.KEYPOINT_BONES},
            "pose": dict(IDENTITY_POSE)}


def _joint_map(tmp: Path, data: dict | None = None) -> U.JointMap:
    (tmp / "human.glb").write_bytes(b"glTF")
    return U.parse_joint_map(data or _identity_map_data(), tmp / "map.json")


def _sampled(n_per_family: int = 6):
    for f, family in enumerate(FAMILIES):
        for s in range(n_per_family):
            pose = P.sample_pose(np.random.default_rng([7, f, s]), family)
            m = np.eye(4)
            m[:3, :3] = P.orientation_matrix(*pose.orientation) * 0.9
            m[:3, 3] = (0.3, -0.2, 0.1)
            yield rig.euler_basis(P.bone_eulers(pose.dofs)), m


def _metarig_keypoints(basis, armature) -> np.ndarray:
    bones, _ = rig.forward(basis, armature)
    return np.array([bones[b][0 if e == "head" else 1] for _, b, e in body.KEYPOINT_BONES])


def _rot(axis: str, deg: float) -> np.ndarray:
    a = math.radians(deg)
    return rig.euler_xyz(*(a if axis == ax else 0.0 for ax in "xyz"))


def _with_rest(change) -> U.RigRest:
    """The metarig's rest with each bone's matrix changed by ``change(name, 4x4) -> 4x4``."""
    return U.RigRest.from_bones((n, p, ln, change(n, np.array(m))) for n, p, ln, m in metarig_rest.BONES)


# ------------------------------------------------------------------------------------------------
# Retargeting maths
# ------------------------------------------------------------------------------------------------

def test_metarig_onto_itself_reproduces_its_keypoints(tmp_path):
    poser = U.UserRigPoser(U.RigRest.from_bones(metarig_rest.BONES), _joint_map(tmp_path))
    for basis, armature in _sampled():
        got = poser.pose(basis, armature)
        np.testing.assert_allclose(got.keypoints, _metarig_keypoints(basis, armature), atol=1e-6)
        for bone, pm in rig.pose_matrices(basis).items():  # every bone, not only the keypoints'
            np.testing.assert_allclose(got.pose[bone], pm, atol=1e-6)


def test_rolled_bones_still_reach_the_same_keypoints(tmp_path):
    """Rest orientations differ from the metarig's (each bone turned about its own axis): the world
    deltas carry over, so the joints land where the metarig's do."""
    rolls = np.random.default_rng(3).uniform(-180, 180, len(metarig_rest.BONES))
    roll_of = {n: r for (n, *_), r in zip(metarig_rest.BONES, rolls)}

    def roll(name, m):
        m[:3, :3] = m[:3, :3] @ _rot("y", roll_of[name])
        return m

    poser = U.UserRigPoser(_with_rest(roll), _joint_map(tmp_path))
    for basis, armature in _sampled(3):
        np.testing.assert_allclose(poser.pose(basis, armature).keypoints, _metarig_keypoints(basis, armature),
                                   atol=1e-6)


def _descendants(root: str) -> set[str]:
    out = {root}
    for name, parent, *_ in metarig_rest.BONES:  # parents come first
        if parent in out:
            out.add(name)
    return out


def test_a_pose_rig_gets_the_limb_directions(tmp_path):
    """A rig whose rest holds the arms 35 degrees lower and the legs spread (rigid turns of each limb
    about its root joint): the swing puts every segment along the metarig's, and with the same
    lengths every joint lands on the metarig's."""
    turns = {}
    for side, sign in (("L", 1.0), ("R", -1.0)):
        for root, deg in ((f"upper_arm.{side}", -35.0 * sign), (f"thigh.{side}", 12.0 * sign)):
            pivot = rig.REST[root][:3, 3]
            t = np.eye(4)
            t[:3, :3] = _rot("y", deg)  # about the front-back axis: abduction
            t[:3, 3] = pivot - t[:3, :3] @ pivot
            turns.update({b: t for b in _descendants(root)})
    rest = _with_rest(lambda name, m: turns.get(name, np.eye(4)) @ m)
    poser = U.UserRigPoser(rest, _joint_map(tmp_path))
    wrist = COCO17_JOINTS.index("left_wrist")
    moved = np.linalg.norm(poser.pose({}, np.eye(4)).keypoints[wrist] - _metarig_keypoints({}, np.eye(4))[wrist])
    assert moved < 1e-6  # even at rest: the rest pose of the metarig is what is retargeted
    assert np.linalg.norm(U.keypoints(rest, poser.joint_map, U.forward(rest, {}), np.eye(4))[wrist]
                          - _metarig_keypoints({}, np.eye(4))[wrist]) > 0.2  # the rigs differ at rest
    for basis, armature in _sampled(3):
        np.testing.assert_allclose(poser.pose(basis, armature).keypoints, _metarig_keypoints(basis, armature),
                                   atol=1e-6)


def test_y_up_armature_space_with_its_import_matrix(tmp_path):
    """An armature stored Y-up (as an FBX may import) and scaled by 0.01 in its object matrix."""
    to_y_up = np.eye(4)
    to_y_up[:3, :3] = _rot("x", -90.0) * 100.0
    rest = U.RigRest.from_bones((n, p, ln * 100.0, to_y_up @ np.array(m) @ np.diag([0.01, 0.01, 0.01, 1.0]))
                                for n, p, ln, m in metarig_rest.BONES)
    import_matrix = np.linalg.inv(to_y_up)
    poser = U.UserRigPoser(rest, _joint_map(tmp_path), import_matrix)
    np.testing.assert_allclose(poser.pelvis, rig.REST["spine"][:3, 3], atol=1e-9)
    for basis, orient in ((b, a[:3, :3] / 0.9) for b, a in _sampled(2)):
        want_arm = np.eye(4)
        want_arm[:3, :3] = orient * 0.9
        want_arm[:3, 3] = (0.3, -0.2, 0.1) - want_arm[:3, :3] @ rig.REST["spine"][:3, 3]
        arm = poser.armature_matrix(orient, (0.3, -0.2, 0.1), 0.9)
        np.testing.assert_allclose(poser.pose(basis, arm).keypoints, _metarig_keypoints(basis, want_arm), atol=1e-6)


def test_offsets_and_local_points(tmp_path):
    data = _identity_map_data()
    data["keypoints"]["nose"] = {"bone": "spine.006", "end": "head", "offset": 0.5, "local": [0.1, 0.25, -0.2]}
    rest = U.RigRest.from_bones(metarig_rest.BONES)
    jm = _joint_map(tmp_path, data)
    kp = U.keypoints(rest, jm, U.forward(rest, {}), np.eye(4))
    m, ln = rig.REST["spine.006"], rig.LENGTH["spine.006"]
    want = m[:3, 3] + m[:3, :3] @ (np.array([0.1, 0.75, -0.2]) * ln)
    np.testing.assert_allclose(kp[0], want, atol=1e-12)


def test_unmapped_bones_keep_identity_and_follow(tmp_path):
    rest = U.RigRest.from_bones(metarig_rest.BONES)
    basis, _ = next(_sampled(1))
    out = U.retarget(rest, IDENTITY_POSE, basis)
    assert set(out) == set(IDENTITY_POSE.values())  # face, palm: no rotation of their own


def test_bone_order_cycle_is_reported():
    eye = np.eye(4)
    with pytest.raises(ValueError, match="cycle"):
        U.RigRest({"a": eye, "b": eye}, {"a": "b", "b": "a"}, {"a": 1.0, "b": 1.0})


# ------------------------------------------------------------------------------------------------
# Joint-map validation
# ------------------------------------------------------------------------------------------------

def _error(tmp: Path, edit) -> str:
    (tmp / "human.glb").write_bytes(b"glTF")
    data = _identity_map_data()
    edit(data)
    path = tmp / "map.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PosepipeError) as err:
        U.load_joint_map(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def _set(key, value):
    def edit(d):
        d[key] = value
    return edit


def _kp(joint, **fields):
    def edit(d):
        d["keypoints"][joint].update(fields)
    return edit


@pytest.mark.parametrize("edit, expected", [
    (_set("model", "../elsewhere/human.glb"), "model: '../elsewhere/human.glb' must be a path inside"),
    (_set("model", "/abs/human.glb"), "model: '/abs/human.glb' must be a path inside"),
    (_set("model", "sub/../../human.glb"), "must be a path inside"),
    (_set("model", "human.obj"), "model: 'human.obj': unsupported extension (use .glb, .gltf, .fbx)"),
    (_set("model", "missing.fbx"), "model: 'missing.fbx': no such file"),
    (_set("model", 3), "model: expected a file name, got 3"),
    (lambda d: d.pop("pose"), "pose: missing"),
    (_set("extra", 1), "extra: unknown field"),
    (lambda d: d["keypoints"].update(left_pinky={"bone": "x", "end": "head"}),
     "keypoints: unknown COCO joint 'left_pinky'"),
    (lambda d: d["keypoints"].pop("right_knee"), "keypoints: missing joint 'right_knee'"),
    (_kp("left_knee", end="middle"), "keypoints.left_knee.end: expected 'head' or 'tail', got 'middle'"),
    (_kp("left_knee", bone=5), "keypoints.left_knee.bone: expected a bone name, got 5"),
    (_kp("left_knee", offset="0.5"), "keypoints.left_knee.offset: expected a number, got '0.5'"),
    (_kp("left_knee", offset=True), "keypoints.left_knee.offset: expected a number, got True"),
    (_kp("nose", local=[0, 1]), "keypoints.nose.local: expected a list of 3 numbers, got [0, 1]"),
    (_kp("nose", side="x"), "keypoints.nose: unknown field 'side'"),
    (_set("keypoints", ["nose"]), "keypoints: expected an object COCO joint -> bone"),
    (lambda d: d["pose"].update({"tail.001": "x"}), "pose: unknown metarig bone 'tail.001'"),
    (lambda d: d["pose"].pop("shin.R"), "pose: missing metarig bone 'shin.R'"),
    (lambda d: d["pose"].update({"foot.L": "shin.L"}), "pose.foot.L: bone 'shin.L' already drives 'shin.L'"),
    (lambda d: d["pose"].update({"foot.L": None}), "pose.foot.L: expected a bone name, got None"),
    (_set("rotate_deg", [0, "90", 0]), "rotate_deg[1]: expected a number, got '90'"),
])
def test_joint_map_errors_name_file_field_and_value(tmp_path, edit, expected):
    assert expected in _error(tmp_path, edit)


def test_joint_map_not_json_and_not_found(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(PosepipeError, match="bad.json: .*not valid JSON"):
        U.load_joint_map(bad)
    with pytest.raises(PosepipeError, match="none.json: joint map not found"):
        U.load_joint_map(tmp_path / "none.json")


def test_joint_map_symlink_out_of_the_folder_is_rejected(tmp_path):
    (tmp_path / "outside.glb").write_bytes(b"glTF")
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "human.glb").symlink_to(tmp_path / "outside.glb")
    with pytest.raises(PosepipeError, match="model: 'human.glb' resolves outside"):
        U.parse_joint_map(_identity_map_data(), tmp_path / "maps" / "map.json")


def test_joint_map_bones_checked_against_the_model(tmp_path):
    jm = _joint_map(tmp_path)
    rest = U.RigRest.from_bones([row for row in metarig_rest.BONES if row[0] != "ear.L"])
    with pytest.raises(PosepipeError, match=r"keypoints.left_ear.bone: no bone 'ear.L' in human.glb"):
        U.check_bones(jm, rest)
    rest = U.RigRest.from_bones([row for row in metarig_rest.BONES if row[0] not in ("spine.005", "spine.006")]
                                + [("spine.006", "spine.004", 0.2, rig.REST["spine.006"].tolist())])
    jm2 = U.parse_joint_map({**_identity_map_data(), "pose": {**IDENTITY_POSE, "spine.005": "neck_x"}},
                            tmp_path / "map.json")
    with pytest.raises(PosepipeError, match=r"pose.spine.005: no bone 'neck_x'"):
        U.check_bones(jm2, rest)


def test_valid_map_loads(tmp_path):
    path = tmp_path / "map.json"
    (tmp_path / "human.glb").write_bytes(b"glTF")
    path.write_text(json.dumps({**_identity_map_data(), "rotate_deg": [0, 0, 90]}))
    jm = U.load_joint_map(path)
    assert jm.model == (tmp_path / "human.glb").resolve() and len(jm.keypoints) == 17
    assert jm.keypoints[0] == U.KeypointRef("nose.001", "tail") and jm.pose["spine"] == "spine"
    np.testing.assert_allclose(jm.rotation() @ [1, 0, 0], [0, 1, 0], atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Blender: import a real .glb/.fbx export, pose it, render it, cast the visibility rays
# ------------------------------------------------------------------------------------------------

# Run in a child process (one Blender per process). Builds the metarig's bones renamed like a
# game-engine skeleton, with a rigidly skinned body of open cylinders and joint balls (no faces
# through the joints), exports it, loads it through synth/renderer/user_rig.py, poses it with sampled
# extreme poses, renders 64x64 Workbench masks (flat red person) and annotates the keypoints.
BLENDER_BUILD = r'''
import json, os, sys
from pathlib import Path
import bpy, addon_utils
import numpy as np
from mathutils import Matrix
from posepipe.synth.core import body, camera as C, metarig_rest, pose as P, rig, user_rig as U
from posepipe.synth.renderer.user_rig import UserRig

tmp, fmt = Path(sys.argv[1]), sys.argv[2]
RENAME = {"spine": "pelvis", "spine.001": "spine_01", "spine.002": "spine_02", "spine.003": "spine_03",
          "spine.004": "neck_01", "spine.005": "neck_02", "spine.006": "head"}
for s, e in (("L", "l"), ("R", "r")):
    RENAME.update({f"shoulder.{s}": f"clavicle_{e}", f"upper_arm.{s}": f"upperarm_{e}",
                   f"forearm.{s}": f"lowerarm_{e}", f"hand.{s}": f"hand_{e}", f"thigh.{s}": f"thigh_{e}",
                   f"shin.{s}": f"calf_{e}", f"foot.{s}": f"foot_{e}"})


def name(bone):
    return RENAME.get(bone, bone)


PARTS = [("spine", 0.12), ("spine.001", 0.11), ("spine.002", 0.12), ("spine.003", 0.13), ("spine.004", 0.05),
         ("spine.005", 0.05)] + [(f"{b}.{s}", r) for s in "LR" for b, r in
         (("upper_arm", 0.05), ("forearm", 0.04), ("hand", 0.035), ("thigh", 0.075), ("shin", 0.055), ("foot", 0.04))]


def clear():
    for coll in (bpy.data.objects, bpy.data.meshes, bpy.data.armatures, bpy.data.materials, bpy.data.actions):
        for block in list(coll):
            coll.remove(block)


def build_and_export(path):
    """The metarig's bones we use, renamed like a game-engine skeleton, and a rigidly skinned body."""
    import bmesh
    addon_utils.enable("rigify", default_set=True)
    bpy.ops.object.armature_human_metarig_add()
    arm = bpy.context.object
    keep = {n for n, *_ in metarig_rest.BONES}
    bpy.ops.object.mode_set(mode="EDIT")
    for eb in list(arm.data.edit_bones):
        if eb.name not in keep:
            arm.data.edit_bones.remove(eb)
    bpy.ops.object.mode_set(mode="OBJECT")
    bm = bmesh.new()
    groups = []  # (bone, its vertices): one vertex group per bone, weight 1

    def add(bone, geom):
        groups.append((bone, list(geom["verts"])))

    for bone, r in PARTS:
        m = Matrix(rig.REST[bone].tolist())
        ln = rig.LENGTH[bone]
        # a cylinder along the bone (+Y) and a sphere at its head: a capsule-ish part
        cyl = bmesh.ops.create_cone(bm, cap_ends=False, segments=12, radius1=r, radius2=r, depth=ln,
                                    matrix=m @ Matrix.Translation((0, ln / 2, 0)) @ Matrix.Rotation(-1.5708, 4, "X"))
        add(bone, cyl)
        # the joint ball as wide as the part it joins: no wall nested just around the joint
        r = max(r, dict(PARTS).get(rig.PARENT[bone], 0.0))
        add(bone, bmesh.ops.create_uvsphere(bm, u_segments=12, v_segments=8, radius=r, matrix=m))
    add("spine.006", bmesh.ops.create_uvsphere(bm, u_segments=16, v_segments=10, radius=0.12,
                                              matrix=Matrix.Translation((0, -0.04, 1.87))))
    add("nose", bmesh.ops.create_uvsphere(bm, u_segments=8, v_segments=6, radius=0.03,
                                         matrix=Matrix.Translation(tuple(rig.REST["nose.001"][:3, 3]))))
    bm.verts.index_update()
    mesh = bpy.data.meshes.new("body")
    index_groups = [(b, [v.index for v in vs]) for b, vs in groups]
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new("body", mesh)
    bpy.context.scene.collection.objects.link(obj)
    for bone, idx in index_groups:
        vg = obj.vertex_groups.get(bone) or obj.vertex_groups.new(name=bone)
        vg.add(idx, 1.0, "REPLACE")
    obj.parent = arm
    obj.modifiers.new("arm", "ARMATURE").object = arm
    for b in arm.data.bones:
        b.name = name(b.name)  # vertex groups follow the rename
    bpy.ops.object.select_all(action="SELECT")
    if path.suffix == ".glb":
        bpy.ops.export_scene.gltf(filepath=str(path), export_format="GLB", use_selection=True, export_animations=False)
    else:
        bpy.ops.export_scene.fbx(filepath=str(path), use_selection=True, add_leaf_bones=False, bake_anim=False)
    clear()


# Face points on bone heads: glTF keeps no bone lengths, so the tails of leaf bones (eyes, nose) move.
KEYPOINTS = [(j, b, "head") for j, b, _e in body.KEYPOINT_BONES]
model = tmp / f"human.{fmt}"
build_and_export(model)
(tmp / "map.json").write_text(json.dumps({
    "model": model.name,
    "keypoints": {j: {"bone": name(b), "end": e} for j, b, e in KEYPOINTS},
    "pose": {b: name(b) for b in U.POSE_BONES}}))
'''

BLENDER_CHECK = BLENDER_BUILD + r'''
person = UserRig(U.load_joint_map(tmp / "map.json"), pass_index=1)
# the factory cube went into the file as a loose prop: the import drops it
result_objects = sorted(o.name for o in bpy.context.scene.objects)
for m in person.meshes:
    m.color = (1, 0, 0, 1)
sc = bpy.context.scene
sc.render.engine = "BLENDER_WORKBENCH"
sc.render.resolution_x = sc.render.resolution_y = 64
sc.render.resolution_percentage = 100
sc.render.film_transparent = True
sc.display.render_aa = "OFF"
sh = sc.display.shading
sh.light, sh.color_type = "FLAT", "OBJECT"
sh.show_shadows = sh.show_cavity = sh.show_object_outline = sh.show_specular_highlight = False
sc.view_settings.view_transform = "Standard"
sc.render.image_settings.file_format = "PNG"
sc.render.image_settings.color_mode = "RGBA"
cam_data = bpy.data.cameras.new("cam")
cam_data.sensor_width, cam_data.sensor_fit, cam_data.lens = C.SENSOR_MM, "HORIZONTAL", 50.0
camera = bpy.data.objects.new("cam", cam_data)
sc.collection.objects.link(camera)
sc.camera = camera
k = C.Intrinsics.from_focal(50.0, 64, 64)


def render_mask():
    sc.render.filepath = str(tmp / "r.png")
    bpy.ops.render.render(write_still=True)
    img = bpy.data.images.load(str(tmp / "r.png"))
    px = np.empty(64 * 64 * 4, dtype=np.float32)
    img.pixels.foreach_get(px)
    bpy.data.images.remove(img)
    px = px.reshape(64, 64, 4)[::-1]  # Blender's rows start at the bottom
    return (px[..., 3] > 0.5) & (px[..., 0] > 0.5) & (px[..., 2] < 0.5)


result = {"objects": result_objects, "meshes": [m.name for m in person.meshes], "fk": 0.0, "to_metarig": 0.0, "on_mask": 0, "v2": 0, "v1": [], "occluded": None}
for seed, family in ((0, "rest"), (1, "inversion"), (2, "split"), (3, "falling")):
    if family == "rest":  # the rest pose seen from the front
        basis, orient = {}, np.eye(3)
    else:
        pose = P.sample_pose(np.random.default_rng(seed), family)
        basis = rig.euler_basis(P.bone_eulers(pose.dofs))
        orient = P.orientation_matrix(*pose.orientation)
    arm_m = person.poser.armature_matrix(orient, (0.0, 0.0, 1.0), 1.0)
    posed = person.poser.pose(basis, arm_m)
    person.apply(posed)
    dg = bpy.context.evaluated_depsgraph_get()
    bl = person.blender_pose(dg)
    for bone, pm in posed.pose.items():
        result["fk"] = max(result["fk"], float(np.abs(arm_m @ pm - bl[bone]).max()))
    result["fk"] = max(result["fk"], float(np.abs(person.blender_keypoints(dg) - posed.keypoints).max()))
    meta_arm = np.eye(4)
    meta_arm[:3, :3] = orient
    meta_arm[:3, 3] = np.array([0.0, 0.0, 1.0]) - orient @ rig.REST["spine"][:3, 3]
    meta = rig.pose_matrices(basis)
    want = np.array([(meta_arm @ meta[b])[:3, 3] for _, b, _e in KEYPOINTS])
    result["to_metarig"] = max(result["to_metarig"], float(np.abs(want - posed.keypoints).max()))
    centre = posed.keypoints.mean(axis=0)
    cam_m = C.look_at(centre + np.array([0.0 if seed == 0 else 1.5, -5.0, 0.0 if seed == 0 else 1.0]), centre)
    camera.matrix_world = Matrix(cam_m.tolist())
    kps, kinds = person.annotate(posed.keypoints, cam_m, k, person=0, depsgraph=dg)
    mask = render_mask()
    if seed == 0:
        result["front"] = kps[:, 2].astype(int).tolist()
    for (x, y, v), kind in zip(kps, kinds):
        if v == 2:
            result["v2"] += 1
            xi, yi = int(x), int(y)
            on = bool(mask[max(0, yi - 1):yi + 2, max(0, xi - 1):xi + 2].any())
            result["on_mask"] += on
        elif v == 1:
            result["v1"].append(kind)
    if seed == 1:  # a box between the camera and a visible joint
        j = next(i for i, (x, y, v) in enumerate(kps) if v == 2)
        eye = cam_m[:3, 3]
        bpy.ops.mesh.primitive_cube_add(size=0.2, location=tuple(eye + 0.5 * (posed.keypoints[j] - eye)))
        box = bpy.context.object
        box.pass_index = 100
        kps2, kinds2 = person.annotate(posed.keypoints, cam_m, k, person=0)
        result["occluded"] = [int(kps2[j, 2]), kinds2[j], int(kps[j, 2])]
        bpy.data.objects.remove(box)
sys.stdout.write("RESULT" + json.dumps(result) + "\n")
sys.stdout.flush()
os._exit(0)
'''


@pytest.mark.parametrize("fmt", ["glb", "fbx"])
def test_blender_import_pose_render_and_visibility(tmp_path, fmt):
    pytest.importorskip("bpy")
    proc = subprocess.run([sys.executable, "-c", BLENDER_CHECK, str(tmp_path), fmt], capture_output=True,
                          text=True, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = json.loads(line[len("RESULT"):])
    # the file's loose prop (the factory cube) and the importer's bone shapes are not in the scene
    assert out["objects"] == ["body", "metarig"] and out["meshes"] == ["body"]
    assert out["fk"] < 1e-4  # numpy pose matrices and keypoints == Blender's posed bones
    assert out["to_metarig"] < 1e-4  # and the joints land where the metarig's do
    assert out["v2"] >= 25 and out["on_mask"] == out["v2"]  # every visible joint on the person's mask
    assert set(out["v1"]) == {"self"}
    # a box between the camera and a visible joint: v=1 by an object
    assert out["occluded"] == [1, "object", 2]
    # seen from the front at rest, limbs and face are visible (hips sit under the pelvis wall of this
    # test body, ears behind its head ball: self-occluded by construction)
    front = out["front"]
    assert [front[j] for j in (0, 1, 2, *range(5, 11), *range(13, 17))] == [2] * 13, front


@pytest.fixture(scope="module")
def glb_rig(tmp_path_factory) -> Path:
    """A rigged test human exported to .glb by Blender, and its joint map (``map.json``)."""
    pytest.importorskip("bpy")
    tmp = tmp_path_factory.mktemp("user_rig")
    proc = subprocess.run([sys.executable, "-c", BLENDER_BUILD + "\nos._exit(0)\n", str(tmp), "glb"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and (tmp / "human.glb").is_file(), proc.stdout[-2000:] + proc.stderr[-2000:]
    return tmp / "map.json"


def test_synth_with_a_user_rig_end_to_end(glb_rig, tmp_path):
    """``posepipe synth --rig``: the user's model is rendered in sampled poses by real worker
    processes, lands in the store, its visible joints lie on its own mask, and reruns give the
    same bytes."""
    from pycocotools import mask as mask_utils

    from posepipe.datasets.store import PoseStore
    from posepipe.synth.core.scene import SceneConfig
    from posepipe.synth.run import SynthOptions, synth_run

    def run(name: str):
        opts = SynthOptions(count=3, seed=5, width=64, height=64, samples=2, device="cpu", rig=str(glb_rig),
                            config=SceneConfig(width=64, height=64, occluder_probability=0.0))
        store = PoseStore(tmp_path / name)
        result = synth_run(store, opts)
        assert result.rendered == 3 and not result.failed, result.failed
        return store, result

    store, result = run("a")
    inst = store.instances([result.source]).to_pylist()
    assert inst and all(row["skeleton"] == "coco17" for row in inst)
    params = store.batches([result.source]).column("params").to_pylist()
    assert all(json.loads(p)["rig"]["model"] == "human.glb" for p in params)
    visible = on_mask = 0
    for row in inst:
        m = mask_utils.decode(json.loads(row["segmentation"]))
        for x, y, v in row["keypoints"]:
            if v == 2:
                visible += 1
                xi, yi = int(x), int(y)
                on_mask += bool(m[max(0, yi - 1):yi + 2, max(0, xi - 1):xi + 2].any())
    assert visible >= 10 and on_mask >= 0.99 * visible, (on_mask, visible)
    again, _ = run("b")
    assert store.images([result.source]).column("sha256").to_pylist() == \
        again.images([result.source]).column("sha256").to_pylist()


def test_synth_rejects_a_bad_rig_map_before_rendering(tmp_path):
    from posepipe.datasets.errors import PosepipeError
    from posepipe.datasets.store import PoseStore
    from posepipe.synth.run import SynthOptions, synth_run

    (tmp_path / "map.json").write_text(json.dumps({"model": "../outside.glb", "keypoints": {}, "pose": {}}))
    with pytest.raises(PosepipeError, match="map.json"):
        synth_run(PoseStore(tmp_path / "store"), SynthOptions(count=1, seed=1, rig=str(tmp_path / "map.json")))
