"""Real Blender renders (tiny: 64x64, 2 samples) in child processes: masks, keypoints, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from posepipe.synth.core.scene import unit_seed

pytest.importorskip("bpy")


def _run_worker(tmp: Path, name: str, indices: list[int], expect_rc: int = 0, units=None, **extra) -> Path:
    out = tmp / name
    out.mkdir()
    job = {"out": str(out), "engine": "cycles", "samples": 2, "format": "png", "device": "cpu",
           "config": {"width": 64, "height": 64, "occluder_probability": 0.7, "body": "mannequin"},
           "units": units or [{"index": i, "seed": unit_seed(99, i)} for i in indices], **extra}
    (tmp / f"{name}.json").write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, "-m", "posepipe.synth.worker", str(tmp / f"{name}.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect_rc, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    return _run_worker(tmp_path_factory.mktemp("synth_render"), "a", list(range(8)))


def _covered(mask: np.ndarray, x: float, y: float) -> bool:
    xi, yi = int(x), int(y)
    return bool(mask[max(0, yi - 1):yi + 2, max(0, xi - 1):xi + 2].any())


def test_visible_keypoints_lie_on_their_own_mask(rendered):
    hits = total = occluded = 0
    kinds = set()
    for i in range(8):
        ann = json.loads((rendered / f"{i}.json").read_text())
        assert (rendered / f"{i}.img").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for person in ann["people"]:
            m = mask_utils.decode(person["segmentation"])
            assert m.shape == (64, 64) and m.sum() == person["area"]
            x, y, w, h = person["bbox"]
            assert m[int(y):int(y + h), int(x):int(x + w)].sum() == person["area"]  # the box holds the mask
            for (kx, ky, v), kind in zip(person["keypoints"], person["occlusion"]):
                if v == 2:
                    total += 1
                    hits += _covered(m, kx, ky)
                elif v == 1:
                    occluded += 1
                    kinds.add(kind)
                else:
                    assert (kx, ky) == (0, 0)
    assert total >= 30 and occluded >= 5
    assert kinds <= {"self", "object"} and "self" in kinds
    assert hits / total >= 0.99, f"{hits}/{total} visible keypoints on their own mask"


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipelined", "serial"])
def test_same_seed_gives_identical_bytes(rendered, tmp_path, pipeline):
    # Other order, other process, other preceding scenes, one render thread (`rendered` used
    # Blender's default, one per core); and the numpy work on the main thread (serial) instead of
    # beside the render calls (pipelined, as `rendered` was).
    again = _run_worker(tmp_path, "b", [5, 2], pipeline=pipeline, threads=1)
    for i in (2, 5):
        assert (again / f"{i}.img").read_bytes() == (rendered / f"{i}.img").read_bytes()
        a = json.loads((rendered / f"{i}.json").read_text())
        b = json.loads((again / f"{i}.json").read_text())
        a.pop("timing"), b.pop("timing")
        assert a == b


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipelined", "serial"])
def test_a_unit_that_fails_beside_a_render_is_the_one_noted(tmp_path, pipeline):
    # Unit 2's background photo is not an image: its preparation fails on the helper thread
    # while unit 1 renders. The note names unit 2 and the error; units 0 and 1 are written.
    bad = tmp_path / "not-a-photo.jpg"
    bad.write_bytes(b"these bytes are no image")
    units = [{"index": i, "seed": unit_seed(99, i)} for i in range(4)]
    units[2]["background"] = {"path": str(bad), "image_id": "x", "source": "s", "sha256": "0" * 64}
    out = _run_worker(tmp_path, "f", [], expect_rc=1, units=units, pipeline=pipeline)
    assert (out / "0.json").exists() and (out / "1.json").exists() and not (out / "2.json").exists()
    assert sorted(p.name for p in out.glob("*.failed")) == ["2.failed"]
    assert "UnidentifiedImageError" in json.loads((out / "2.failed").read_text())["error"]


KNOWN_POSE = textwrap.dedent("""
    import json, os, sys, tempfile
    from pathlib import Path
    import numpy as np
    from posepipe.synth.core import pose as P, scene as S
    from posepipe.synth.renderer.blender import BlenderRenderer
    dofs = {name: 0.0 for name in P.DOFS}
    dofs.update({"shoulder_abd.L": 45.0, "shoulder_abd.R": 45.0})
    person = S.PersonSpec(P.Pose("known", dofs, (0.0, 0.0, 0.0)), 0.9, 1.0, 1.0, (0.0, 0.0, 0.0),
                          (0.8, 0.6, 0.5), (0.2, 0.3, 0.8), (0.1, 0.1, 0.1), 0.0, 1)
    spec = S.SceneSpec(1, 48, 64, [person], S.CameraSpec(0.9, 0.0, -90.0, 0.0, 50.0),
                       [S.LightSpec("SUN", 3.0, 6500, (1, 1, 1), -90.0, 45.0)], [],
                       S.BackgroundSpec("gradient", (0, 0, 0), (0, 0, 0), 0.0, 0.0), 0.5)
    cfg = S.SceneConfig(width=48, height=64, pose_attempts=1, max_interpenetration=10.0, body="mannequin")
    r = BlenderRenderer("cycles", 2, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        res = r.render(spec, cfg, Path(tmp))
    out = {"keypoints": res.people[0].keypoints.tolist(), "mask": (res.index == 1).astype(int).tolist()}
    # The visibility rays (rays.py) against what Blender's scene.ray_cast meets in the rendered scene.
    import bpy
    from mathutils import Vector
    slot, eye = r._stage.people[0], np.array(res.camera["matrix"])[:3, 3]
    dg = bpy.context.evaluated_depsgraph_get()
    w = res.people[0].world
    rng = np.random.default_rng(0)
    pts = np.concatenate([w, w + rng.normal(0, 0.1, w.shape), w + rng.normal(0, 0.3, w.shape)])
    ours = r._stage.rays.first_hits(eye, pts, slot.kinds, slot.matrices, np.zeros(len(slot.kinds)))
    out["rays"] = []
    for p, hit in zip(pts, ours):
        d = float(np.linalg.norm(p - eye))
        ok, loc, *_ = bpy.context.scene.ray_cast(dg, Vector(eye), Vector((p - eye) / d), distance=d)
        out["rays"].append([float(np.linalg.norm(np.array(loc) - eye)) if ok else None, hit and hit[0]])
    sys.stdout.write("RESULT" + json.dumps(out) + "\\n")
    sys.stdout.flush()
    os._exit(0)
""")


def _blender_result(script: str, *args: str, timeout: int = 600):
    """Run a bpy script in a child process (one Blender per process) and return its RESULT json."""
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(line[len("RESULT"):])


def test_known_pose_keypoints_land_on_the_body():
    out = _blender_result(KNOWN_POSE)
    kp, mask = np.array(out["keypoints"]), np.array(out["mask"], dtype=bool)
    assert mask.shape == (64, 48) and mask.sum() > 100
    # Seen from the front at eye level, every body joint and the face is visible...
    assert (kp[[0, 1, 2] + list(range(5, 17)), 2] == 2).all(), kp[:, 2]
    for x, y, v in kp:
        if v:
            assert _covered(mask, x, y), (x, y)
    # ...the person's left appears on the image's right, the head on top, the feet at the bottom.
    assert kp[5, 0] > kp[6, 0] and kp[11, 0] > kp[12, 0] and kp[9, 0] > kp[10, 0]
    assert kp[0, 1] < kp[5, 1] < kp[11, 1] < kp[13, 1] < kp[15, 1]
    # Arms abducted 45 degrees: the wrists are further out than the elbows, the elbows than the shoulders.
    assert kp[9, 0] > kp[7, 0] > kp[5, 0] and kp[10, 0] < kp[8, 0] < kp[6, 0]
    # Our visibility rays meet what Blender's scene.ray_cast meets, at the same distance.
    assert sum(theirs is not None for theirs, _ in out["rays"]) >= 20
    for theirs, ours in out["rays"]:
        assert (theirs is None) == (ours is None) and (theirs is None or abs(theirs - ours) < 1e-4), (theirs, ours)


def test_workbench_masks_match_keypoints(tmp_path):
    out = _run_worker(tmp_path, "wb", list(range(4)), engine="workbench")
    hits = total = 0
    for i in range(4):
        for person in json.loads((out / f"{i}.json").read_text())["people"]:
            m = mask_utils.decode(person["segmentation"])
            for kx, ky, v in person["keypoints"]:
                if v == 2:
                    total += 1
                    hits += _covered(m, kx, ky)
    assert total >= 10 and hits / total >= 0.99


BVH_ROUND_TRIP = textwrap.dedent("""
    import json, os, sys, tempfile
    from pathlib import Path
    import numpy as np
    from posepipe.synth.core import bvh, pose as P, scene as S
    from posepipe.synth.renderer.blender import BlenderRenderer
    clip = Path(sys.argv[1])
    poses = [P.sample_pose(np.random.default_rng(s), f) for s, f in ((1, "inversion"), (2, "split"), (3, "free"))]
    bvh.write_poses(clip, poses)
    cfg = S.SceneConfig(width=64, height=64, pose_attempts=1, max_interpenetration=10.0, body="mannequin")
    r = BlenderRenderer("cycles", 1, "cpu", clips={"c": str(clip)})
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for f, src in enumerate(poses):
            row = []
            for pose in (src, P.Pose("bvh", {}, (0.0, 0.0, 0.0), {"clip": "c", "frame": f})):
                person = S.PersonSpec(pose, 0.9, 1.0, 1.0, (0.0, 0.0, 0.0), (0.8, 0.6, 0.5), (0.2, 0.3, 0.8),
                                      (0.1, 0.1, 0.1), 0.0, 1)
                spec = S.SceneSpec(f, 64, 64, [person], S.CameraSpec(0.9, 20.0, -70.0, 0.0, 50.0),
                                   [S.LightSpec("SUN", 3.0, 6500, (1, 1, 1), -90.0, 45.0)], [],
                                   S.BackgroundSpec("gradient", (0, 0, 0), (0, 0, 0), 0.0, 0.0), 0.5)
                res = r.render(spec, cfg, Path(tmp))
                row.append({"keypoints": res.people[0].keypoints.tolist(),
                            "mask": (res.index == 1).astype(int).tolist()})
            out.append(row)
    sys.stdout.write("RESULT" + json.dumps(out) + "\\n")
    sys.stdout.flush()
    os._exit(0)
""")


def test_bvh_clip_from_the_sampler_round_trips_through_blenders_importer(tmp_path):
    """Sampler poses -> our BVH writer (T-pose CMU skeleton, cm) -> bpy.ops.import_anim.bvh -> retarget
    onto the metarig -> render: keypoints land where the source pose puts them."""
    clip = tmp_path / "clip.bvh"
    pairs = _blender_result(BVH_ROUND_TRIP, str(clip))
    assert clip.read_text().startswith("HIERARCHY\nROOT Hips") and "LeftForeArm" in clip.read_text()
    labelled = 0
    for source, mocap in pairs:
        a, b = np.array(source["keypoints"]), np.array(mocap["keypoints"])
        assert (a[:, 2] == b[:, 2]).all()
        on = a[:, 2] > 0
        labelled += int(on.sum())
        assert np.abs(a[on, :2] - b[on, :2]).max() < 0.25, np.abs(a - b).max()
        mask_a, mask_b = np.array(source["mask"], bool), np.array(mocap["mask"], bool)
        assert (mask_a ^ mask_b).sum() <= 0.05 * mask_a.sum()
    assert labelled >= 30


RIG_CHECK = textwrap.dedent("""
    import json, os, sys
    import bpy, addon_utils
    import numpy as np
    from mathutils import Matrix
    from posepipe.synth.core import body, pose as P, rig
    addon_utils.enable("rigify", default_set=True)
    bpy.ops.object.armature_human_metarig_add()
    arm = bpy.context.object
    worst = 0.0
    for seed in range(4):
        pose = P.sample_pose(np.random.default_rng(seed))
        m = np.eye(4)
        m[:3, :3] = P.orientation_matrix(*pose.orientation) * 0.9
        m[:3, 3] = (0.3, -0.2, 0.1)
        arm.matrix_world = Matrix(m.tolist())
        eulers = P.bone_eulers(pose.dofs)
        for bone, e in eulers.items():
            arm.pose.bones[bone].rotation_mode = "XYZ"
            arm.pose.bones[bone].rotation_euler = e
        bpy.context.view_layer.update()
        ours, _ = rig.forward(rig.euler_basis(eulers), m)
        for name in body.RIG_BONES:
            pb = arm.pose.bones[name]
            for got, want in ((ours[name][0], arm.matrix_world @ pb.head), (ours[name][1], arm.matrix_world @ pb.tail)):
                worst = max(worst, float(np.abs(got - np.array(want)).max()))
    sys.stdout.write("RESULT" + json.dumps(worst) + "\\n")
    sys.stdout.flush()
    os._exit(0)
""")


def test_numpy_rig_matches_blender():
    """synth/core/rig.py poses the stored metarig rest exactly as Blender poses the real metarig."""
    assert _blender_result(RIG_CHECK) < 1e-5
