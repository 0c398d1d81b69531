"""synth/core without Blender: poses, scenes, camera maths, visibility rules, extreme measures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from posepipe.datasets import schema
from posepipe.datasets.coco import ingest_coco
from posepipe.synth.core import body, camera, collision, extreme, pose, scene, visibility


def test_pose_is_deterministic_and_within_limits():
    a = pose.sample_pose(np.random.default_rng(7))
    b = pose.sample_pose(np.random.default_rng(7))
    assert a == b
    for seed in range(200):
        p = pose.sample_pose(np.random.default_rng(seed))
        assert set(p.dofs) == set(pose.DOFS)
        for name, value in p.dofs.items():
            lo, hi = pose.LIMITS[name.split(".")[0]]
            assert lo <= value <= hi, (name, value)


def test_sampler_is_biased_to_the_extremes():
    rng = np.random.default_rng(0)
    near = total = 0
    for _ in range(300):
        p = pose.sample_pose(rng, "free", extremeness=1.0)
        for name, value in p.dofs.items():
            lo, hi = pose.LIMITS[name.split(".")[0]]
            near += min(value - lo, hi - value) < 0.1 * (hi - lo)
            total += 1
    # A uniform draw puts 20% within 10% of either end; Beta(0.5, 0.5) about 41%.
    assert near / total > 0.35


@pytest.mark.parametrize("family", pose.FAMILY_NAMES)
def test_every_family_keeps_its_defining_ranges(family):
    spec = pose.FAMILIES[family]
    for seed in range(20):
        p = pose.sample_pose(np.random.default_rng(seed), family)
        assert p.family == family
        for key, (lo, hi) in spec["dofs"].items():
            for name in ([key[:-1] + s for s in pose.SIDES] if key.endswith(".*") else [key]):
                assert lo - 1e-9 <= abs(p.dofs[name]) if spec.get("mirror_axial") else lo - 1e-9 <= p.dofs[name]
                assert abs(p.dofs[name]) <= hi + 1e-9 if spec.get("mirror_axial") else p.dofs[name] <= hi + 1e-9


def test_inversion_turns_the_body_upside_down():
    for seed in range(10):
        p = pose.sample_pose(np.random.default_rng(seed), "inversion")
        up = pose.orientation_matrix(*p.orientation) @ np.array([0.0, 0.0, 1.0])
        assert up[2] < -0.9  # the body's up axis points at the floor


def test_bone_eulers_follow_the_metarig_conventions():
    dofs = {name: 0.0 for name in pose.DOFS}
    dofs.update({"knee_flex.L": 90.0, "hip_flex.L": 90.0, "shoulder_abd.L": 60.0, "shoulder_abd.R": 60.0})
    e = pose.bone_eulers(dofs)
    assert e["shin.L"][0] == pytest.approx(np.pi / 2)  # +X bends the knee
    assert e["thigh.L"][0] == pytest.approx(-np.pi / 2)  # -X flexes the hip
    assert e["upper_arm.L"] == pytest.approx((0, 0, 0)) and e["upper_arm.R"] == pytest.approx((0, 0, 0))


def test_scene_is_deterministic_and_complete():
    cfg = scene.SceneConfig(width=64, height=48)
    a, b = scene.sample_scene(3, cfg), scene.sample_scene(3, cfg)
    assert a.to_dict() == b.to_dict()
    assert scene.sample_scene(4, cfg).to_dict() != a.to_dict()
    counts = set()
    for seed in range(60):
        s = scene.sample_scene(seed, cfg)
        counts.add(len(s.people))
        assert 1 <= len(s.lights) <= 3 and len(s.occluders) <= cfg.max_occluders
        assert (s.width, s.height) == (64, 48)
    assert counts == {1, 2, 3}
    assert scene.unit_seed(5, 0) == scene.unit_seed(5, 0) != scene.unit_seed(5, 1)


def test_projection_uses_a_top_left_origin():
    k = camera.Intrinsics.from_focal(36.0, 200, 100)  # fx = 200 px
    m = camera.look_at(np.array([0.0, -10.0, 0.0]), np.zeros(3))
    pts = np.array([[0, 0, 0], [0, 0, 1.0], [1.0, 0, 0], [0, -20.0, 0]])
    xy, depth = camera.project(pts, m, k)
    assert xy[0] == pytest.approx([100, 50])
    assert xy[1] == pytest.approx([100, 50 - 200 / 10])  # higher in the world = smaller y in the image
    assert xy[2] == pytest.approx([100 + 200 / 10, 50])  # +X is to the right when looking along +Y
    assert depth[3] < 0 and np.isnan(xy[3]).all()
    assert camera.in_frame(xy, depth, k).tolist() == [True, True, True, False]
    assert camera.from_blender_view(np.array([[0.25, 0.75]]), 200, 100) == pytest.approx(np.array([[50, 25]]))
    rolled = camera.look_at(np.array([0.0, -10.0, 0.0]), np.zeros(3), roll_deg=90)
    xy_r, _ = camera.project(pts[1:2], rolled, k)
    assert xy_r[0] == pytest.approx([100 + 20, 50])  # rolling the camera 90 degrees turns up into right


def test_camera_frames_the_people():
    pts = np.random.default_rng(0).uniform(-1, 1, (40, 3))
    spec = scene.CameraSpec(fill=0.8, elevation=20, azimuth=45, roll=0, focal_mm=50)
    m, k = scene.place_camera(spec, pts, 64, 64)
    xy, depth = camera.project(pts, m, k)
    assert camera.in_frame(xy, depth, k).all()


def test_segment_distances():
    p0 = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0.0]])
    p1 = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0.0]])
    q0 = np.array([[0, 1, 0], [2, 0, 0], [3, 4, 0.0]])
    q1 = np.array([[1, 1, 0], [3, 0, 0], [3, 4, 0.0]])
    assert collision.segment_distances(p0, p1, q0, q1) == pytest.approx([1, 1, 5])
    crossing = collision.segment_distances(np.array([[-1, 0, 0.0]]), np.array([[1, 0, 0.0]]),
                                           np.array([[0, -1, 0.5]]), np.array([[0, 1, 0.5]]))
    assert crossing == pytest.approx([0.5])


def _rest_body(**moves) -> body.Body:
    rng = np.random.default_rng(0)
    rig = {}
    for name in body.RIG_BONES:  # a plausible standing layout: bones stacked by name, spread sideways
        head = rng.uniform(-0.05, 0.05, 3)
        rig[name] = (head, head + np.array([0, 0, 0.1]))
    for name, (h, t) in moves.items():
        rig[name] = (np.array(h, float), np.array(t, float))
    return body.build_body(rig, np.eye(4), 1.0)


def test_interpenetration_flags_a_hand_through_the_other_thigh():
    apart = _rest_body(**{"hand.L": ([2, 0, 0], [2.1, 0, 0]), "palm.02.L": ([2.1, 0, 0], [2.2, 0, 0]),
                          "thigh.R": ([-2, 0, 1], [-2, 0, 0.5])})
    through = _rest_body(**{"hand.L": ([-2.1, 0, 0.7], [-1.9, 0, 0.7]), "palm.02.L": ([-1.9, 0, 0.7], [-1.8, 0, 0.7]),
                            "thigh.R": ([-2, 0, 1], [-2, 0, 0.5])})
    names = list(apart.names)
    pairs = body.check_pairs()
    pair = [names.index("hand.L"), names.index("thigh.R")]
    assert any(sorted(p) == sorted(pair) for p in pairs.tolist())
    assert ([names.index("thigh.L"), names.index("hips")] not in pairs.tolist())  # attached by design
    d_apart = collision.penetrations(apart.capsules, apart.radii, np.array([pair]))[0]
    d_through = collision.penetrations(through.capsules, through.radii, np.array([pair]))[0]
    assert d_apart < 0 < d_through
    assert body.interpenetration(through) > 0.5


def test_visibility_rules():
    own = visibility.RayHit(distance=9.97, owner=0)
    assert visibility.decide(False, 10.0, None, 0, 0.05) == (0, None)
    assert visibility.decide(True, 10.0, None, 0, 0.05) == (2, None)
    assert visibility.decide(True, 10.0, own, 0, 0.05) == (2, None)  # inside its own limb
    assert visibility.decide(True, 10.0, visibility.RayHit(9.5, 0), 0, 0.05) == (1, "self")
    assert visibility.decide(True, 10.0, visibility.RayHit(9.99, 1), 0, 0.05) == (1, "object")
    assert visibility.decide(True, 10.0, visibility.RayHit(9.0, -1), 0, 0.05) == (1, "object")
    h = visibility.histogram(np.array([[0, 1, 2, 1]]), [[None, "self", None, "object"]])
    assert h == {"v0": 1, "v1": 2, "v2": 1, "v1_self": 1, "v1_object": 1}


def _person(points: dict[str, tuple[float, float]]) -> np.ndarray:
    kp = np.zeros((17, 3))
    for name, (x, y) in points.items():
        kp[schema.JOINT_INDEX[name]] = (x, y, 2)
    return kp


STANDING = {"nose": (50, 10), "left_shoulder": (60, 30), "right_shoulder": (40, 30), "left_hip": (57, 60),
            "right_hip": (43, 60), "left_knee": (57, 80), "right_knee": (43, 80), "left_ankle": (57, 100),
            "right_ankle": (43, 100), "left_wrist": (65, 60), "right_wrist": (35, 60)}


def test_extreme_categories_on_handmade_people():
    standing = _person(STANDING)
    inverted = _person({k: (x, 110 - y) for k, (x, y) in STANDING.items()})
    lying = _person({k: (y, x) for k, (x, y) in STANDING.items()})
    squat = _person({**STANDING, "left_knee": (75, 55), "left_ankle": (60, 70)})
    crossed = _person({**STANDING, "left_wrist": (30, 50)})
    unlabelled = np.zeros((17, 3))
    flags, ok = extreme.categories(np.stack([standing, inverted, lying, squat, crossed, unlabelled]))
    c = {name: i for i, name in enumerate(extreme.CATEGORIES)}
    assert flags[:, c["head_below_hips"]].tolist() == [False, True, False, False, False, False]
    assert flags[:, c["torso_horizontal"]].tolist() == [False, False, True, False, False, False]
    assert flags[:, c["deep_flexion"]].tolist() == [False, False, False, True, False, False]
    assert flags[:, c["crossing_midline"]].tolist() == [False, False, False, False, True, False]
    assert not ok[5].any() and ok[:5].all()
    shares = extreme.shares(np.stack([standing, inverted]))
    assert shares["head_below_hips"] == {"flagged": 1, "decidable": 2, "share": 0.5}


def test_extreme_shares_on_real_coco(store, shared_data):
    mini = shared_data / "coco-mini"
    ingest_coco(store, mini / "annotations/person_keypoints_val2017.json", mini / "val2017", "coco-val")
    kp = schema.keypoints_from_arrow(store.instances(["coco-val"]).column("keypoints"))
    shares = extreme.shares(kp)
    assert shares["head_below_hips"]["decidable"] > 20
    # Real photos are mostly upright people: the categories synth adds are rare there.
    assert shares["head_below_hips"]["share"] < 0.2
    assert shares["torso_horizontal"]["share"] < 0.3


def test_render_threads_share_the_cores_between_workers(monkeypatch):
    import os

    from posepipe.synth.run import SynthOptions, render_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    # About two render threads per core in all: a worker between render calls leaves its cores to the others.
    assert render_threads(SynthOptions(count=10, seed=0, workers=1)) == 8
    assert render_threads(SynthOptions(count=10, seed=0, workers=2)) == 8
    assert render_threads(SynthOptions(count=10, seed=0, workers=3)) == 5
    assert render_threads(SynthOptions(count=10, seed=0, workers=4)) == 4
    assert render_threads(SynthOptions(count=1, seed=0, workers=4)) == 8  # one image: one worker
    assert render_threads(SynthOptions(count=10, seed=0, workers=16)) == 1
    assert render_threads(SynthOptions(count=10, seed=0, workers=2, threads=3)) == 3


def test_composite_shortcuts_equal_the_full_blend():
    from posepipe.synth.image import composite

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 30, 4), dtype=np.uint8)
    rgba[:10, :, 3], rgba[10:20, :, 3] = 0, 255  # clear and opaque rows; the rest partly covered
    bg = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    px = rgba.astype(np.float32) / 255.0
    full = px[..., :3] * px[..., 3:4] + bg.astype(np.float32) / 255.0 * (1 - px[..., 3:4])
    assert (composite(rgba, bg)[..., :3] == np.clip(np.rint(full * 255), 0, 255).astype(np.uint8)).all()


def test_png_writer_decodes_to_the_same_pixels_and_carries_no_metadata():
    import io

    from PIL import Image

    from posepipe.synth.image import png_rgb

    rng = np.random.default_rng(1)
    for h, w in ((1, 1), (5, 7), (64, 48)):
        rgbx = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        data = png_rgb(rgbx)
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # checks every chunk's CRC and the zlib stream
            assert im.mode == "RGB" and im.size == (w, h) and not im.info
            assert (np.asarray(im) == rgbx[..., :3]).all()
        assert png_rgb(rgbx) == data  # same pixels, same bytes
        chunks, at = [], 8
        while at < len(data):
            n = int.from_bytes(data[at:at + 4], "big")
            chunks.append(data[at + 4:at + 8])
            at += 12 + n
        assert chunks == [b"IHDR", b"IDAT", b"IEND"]


def test_tga_readback_orientation(tmp_path):
    from posepipe.synth.renderer.readback import read_tga_rgba

    rgba = np.arange(3 * 2 * 4, dtype=np.uint8).reshape(3, 2, 4)  # 3 rows, 2 columns, top row first
    for desc, rows in ((0x08, rgba[::-1]), (0x28, rgba)):  # stored bottom-up, then top-down
        header = bytes([0, 0, 2]) + bytes(9) + (2).to_bytes(2, "little") + (3).to_bytes(2, "little") + bytes([32, desc])
        (tmp_path / "a.tga").write_bytes(header + rows[..., [2, 1, 0, 3]].tobytes())
        assert (read_tga_rgba(tmp_path / "a.tga") == rgba).all()


def test_background_pick_is_seeded_and_spread():
    from posepipe.synth.run import pick_background

    pool = [{"source": "s", "image_id": str(i), "sha256": f"{i:064x}"} for i in range(10)]
    picks = [pick_background(pool, scene.unit_seed(3, i))["image_id"] for i in range(50)]
    assert picks == [pick_background(pool, scene.unit_seed(3, i))["image_id"] for i in range(50)]
    assert len(set(picks)) >= 7


def test_bvh_writer_and_retarget_without_blender(tmp_path):
    from posepipe.synth.core import bvh, retarget, rig

    poses = [pose.sample_pose(np.random.default_rng(s)) for s in range(3)]
    bvh.write_poses(tmp_path / "c.bvh", poses)
    joints, frames = bvh.read_header(tmp_path / "c.bvh")
    assert frames == 3 and joints[0] == "Hips" and len(joints) == len(bvh.SKELETON)
    mapping = retarget.resolve(joints)
    assert mapping["upper_arm.L"] == ("LeftArm", "LeftForeArm") and mapping["spine.003"] == ("Spine1", None)
    # Mixamo / Truebones names resolve too (prefix ignored, Spine/Spine1/Spine2 spread over the torso).
    mixamo = [f"mixamorig:{n}" for n in ("Hips", "Spine", "Spine1", "Spine2", "Neck", "Head", "LeftArm",
                                          "LeftForeArm", "LeftHand", "RightArm", "RightForeArm", "RightHand",
                                          "LeftUpLeg", "LeftLeg", "LeftFoot", "RightUpLeg", "RightLeg", "RightFoot")]
    m = retarget.resolve(mixamo)
    assert m["spine.001"][0].endswith(":Spine") and m["spine.003"][0].endswith(":Spine2")
    with pytest.raises(ValueError, match="no joint for thigh.L"):
        retarget.resolve([n for n in joints if n != "LeftUpLeg"])
    # swing() turns one direction onto another
    a, b = np.array([0.0, 1.0, 0.0]), np.array([0.3, -0.2, 0.9])
    assert np.allclose(retarget.swing(a, b) @ a, b / np.linalg.norm(b))
    assert np.allclose(retarget.swing(a, -a) @ a, -a)
    # identity deltas reproduce the rest pose
    rest = {j: np.eye(3) for j in joints}
    heads = {j: np.zeros(3) for j in joints}
    basis = retarget.retarget({k: (v[0], None) for k, v in mapping.items()}, rest, heads)
    assert all(np.allclose(r, np.eye(3), atol=1e-5) for r in basis.values()) and "spine" in basis
    assert set(basis) <= set(rig.ORDER)


def test_units_must_be_a_slice_of_the_run(tmp_path, monkeypatch):
    import os

    from posepipe.datasets.errors import PosepipeError
    from posepipe.datasets.store import PoseStore
    from posepipe.synth.run import SynthOptions, parse_units, render_threads, synth_run

    for units in ((2, 2), (-1, 3), (3, 11)):
        with pytest.raises(PosepipeError, match=r"--units .* is not a non-empty range within 0:10"):
            synth_run(PoseStore(tmp_path / "store"), SynthOptions(count=10, seed=0, units=units))
    assert parse_units("3:5") == (3, 5)
    with pytest.raises(PosepipeError, match="'3-5' is not FIRST:STOP"):
        parse_units("3-5")
    assert list(SynthOptions(count=10, seed=0, units=(3, 5)).indices()) == [3, 4]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert render_threads(SynthOptions(count=10, seed=0, workers=4, units=(0, 1))) == 8  # one image: one worker


def test_a_dead_worker_is_blamed_on_the_unit_it_noted_else_the_one_it_was_on(tmp_path):
    from posepipe.synth.run import _culprit, _Slot

    slot = _Slot([{"index": i} for i in (4, 5, 6, 7)], tmp_path)
    assert _culprit(slot) == (0, None)  # nothing marked: died starting up
    for i in (4, 5, 6):
        (tmp_path / f"{i}.rendering").touch()
    assert _culprit(slot) == (2, None)  # on unit 6; 4 and 5 were still being written beside it
    (tmp_path / "5.failed").write_text(json.dumps({"error": "OSError: [Errno 28] No space left on device"}))
    assert _culprit(slot) == (1, "OSError: [Errno 28] No space left on device")
