"""Synthetic runs end to end: worker processes, retries, the store, COCO export, report, CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np

import orjson
import pytest
from pycocotools import mask as mask_utils

from posepipe.datasets import schema
from posepipe.datasets.coco_export import export_coco
from posepipe.datasets.errors import PosepipeError
from posepipe.synth.core.scene import SceneConfig, unit_seed
from posepipe.synth.run import SynthOptions, synth_run

pytest.importorskip("bpy")


def _opts(**kw) -> SynthOptions:
    base = dict(count=4, seed=5, width=64, height=64, samples=2, workers=2, device="cpu", threads=1,
                config=SceneConfig(width=64, height=64))
    base.update(kw)
    return SynthOptions(**base)


def test_run_writes_the_store_and_survives_a_crash(coco_store, tmp_path):
    result = synth_run(coco_store, _opts(crash_on=(1,)), report_dir=tmp_path / "report")
    assert result.failed == {} and result.rendered == 4 and result.attempts[1] == 2
    # The crash hook dies as a crash inside unit 1's render call would, before the worker's helper
    # thread has written unit 0: unit 0 is rendered again but not blamed for the crash.
    assert result.attempts[0] == 1
    source = "synth/s5-n4"
    images = coco_store.images([source])
    inst = coco_store.instances([source])
    batches = coco_store.batches([source])
    assert images.num_rows == 4 and batches.num_rows == 4 and inst.num_rows == result.instances >= 4
    assert set(batches.column("format").to_pylist()) == {"synth"}
    assert sum(batches.column("annotations_read").to_pylist()) == inst.num_rows
    assert set(inst.column("skeleton").to_pylist()) == {"coco17"}
    attrs = orjson.loads(inst.column("attributes")[0].as_py())
    assert {"pose_family", "pose", "occlusion", "seed", "engine", "samples", "render_seconds"} <= set(attrs)
    prov = orjson.loads(images.column("provenance")[0].as_py())
    assert prov["engine"] == "cycles" and prov["samples"] == 2 and "camera" in prov
    row = images.slice(0, 1).to_pylist()[0]
    data = coco_store.read_image(row["shard"], row["offset"], row["num_bytes"])
    assert data[:4] == b"\x89PNG"

    # The same exporter as real data, with RLE masks from the renders.
    report = export_coco(coco_store, [source], tmp_path / "synth.json")
    doc = json.loads((tmp_path / "synth.json").read_text())
    assert report.annotations == inst.num_rows and len(doc["images"]) == 4
    assert all(isinstance(a["segmentation"]["counts"], str) for a in doc["annotations"])

    rep = json.loads((tmp_path / "report" / "report.json").read_text())
    assert sum(rep["pose_families"].values()) == inst.num_rows
    assert rep["extreme"]["real_sources"] == ["coco-train", "coco-val"]
    assert rep["extreme"]["real"]["head_below_hips"]["decidable"] > 50
    v = rep["visibility"]
    assert v["v0"] + v["v1"] + v["v2"] == 17 * inst.num_rows and v["v1_self"] + v["v1_object"] == v["v1"]
    assert "| head_below_hips |" in (tmp_path / "report" / "report.md").read_text()

    again = synth_run(coco_store, _opts())
    assert again.unchanged == 4 and again.rendered == 0
    assert coco_store.images([source]).num_rows == 4


def test_failed_and_timed_out_units_are_recorded_and_do_not_stop_the_others(store):
    # The stall timeout is every worker's, the one rendering unit 1 (Blender's start included) too:
    # generous, so that only the hanging unit can reach it however busy the machine is.
    result = synth_run(store, _opts(count=3, retries=0, crash_on=(0,), hang_on=(2,), timeout=30.0))
    assert set(result.failed) == {0, 2}
    assert "exited with code 3" in result.failed[0] and "timed out after 30 s" in result.failed[2]
    assert result.rendered == 1
    batches = store.batches(["synth/s5-n3"]).to_pylist()
    failed = [b for b in batches if b["images_rejected"]]
    assert len(failed) == 2 and all("failed" in orjson.loads(b["params"]) for b in failed)
    assert all(b["images_read"] == b["images_accepted"] + b["images_rejected"] for b in batches)
    assert sum(b["images_read"] for b in batches) == 3 and store.images(["synth/s5-n3"]).num_rows == 1
    # Each failed render is a reject row that `posepipe rejects` lists, naming the unit and the error.
    rejects = store.rejects(["synth/s5-n3"]).to_pylist()
    seeds = {unit_seed(5, i): i for i in (0, 2)}
    assert {r["record_id"] for r in rejects} == {str(s) for s in seeds}
    for r in rejects:
        assert r["kind"] == "image" and r["reason"] == "render_failed"
        assert r["file"] == f"synth:synth/s5-n3/{r['record_id']}" and r["file"] in r["message"]
    listed = subprocess.run([sys.executable, "-m", "posepipe.flows", "rejects", "--source", "synth/s5-n3",
                             "--store", str(store.root), "--json"], capture_output=True, text=True, timeout=600)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "exited with code 3" in listed.stdout and "timed out" in listed.stdout
    # A later run retries what failed and keeps what succeeded.
    again = synth_run(store, _opts(count=3))
    assert again.unchanged == 1 and again.rendered == 2 and not again.failed
    assert store.images(["synth/s5-n3"]).num_rows == 3 and store.rejects(["synth/s5-n3"]).num_rows == 0


@pytest.mark.parametrize("kw, message", [
    ({"count": 0}, "--count"), ({"engine": "eevee"}, "--engine"), ({"format": "gif"}, "--format"),
    ({"source": "mine"}, "must start with 'synth/'"), ({"source": "synth/../x"}, "invalid source name"),
])
def test_bad_options_are_user_errors(store, kw, message):
    with pytest.raises(PosepipeError, match=message.replace("(", r"\(")):
        synth_run(store, _opts(**kw))


def test_cli(tmp_path):
    cli = [sys.executable, "-m", "posepipe.flows"]
    helped = subprocess.run(cli + ["synth", "--help"], capture_output=True, text=True, timeout=600)
    assert helped.returncode == 0 and "--resolution" in helped.stdout and "--workers" in helped.stdout
    bad = subprocess.run(cli + ["synth", "--count", "1", "--seed", "1", "--resolution", "big"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--resolution" in bad.stderr
    run = subprocess.run(cli + ["synth", "--count", "2", "--seed", "3", "--resolution", "48x32", "--samples", "1",
                                "--engine", "workbench", "--format", "jpeg", "--store", str(tmp_path / "store"),
                                "--json"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)
    assert out["rendered"] == 2 and out["source"] == "synth/s3-n2"
    assert (tmp_path / "reports" / "synth" / "s3-n2" / "report.md").exists()
    from posepipe.datasets.store import PoseStore

    images = PoseStore(tmp_path / "store").images(["synth/s3-n2"]).to_pylist()
    assert {(im["width"], im["height"], im["format"]) for im in images} == {(48, 32, "jpeg")}
    assert schema.image_id_from_sha256(images[0]["sha256"]) == images[0]["image_id"]


def test_store_backgrounds_are_composited_behind_people(coco_store, tmp_path):
    from PIL import Image

    from posepipe.synth.run import background_pool

    opts = _opts(count=2, workers=1, seed=11, backgrounds=("coco-val",),
                 config=SceneConfig(width=64, height=64, max_people=1, occluder_probability=0.0))
    result = synth_run(coco_store, opts)
    assert result.rendered == 2 and not result.failed
    pool = {r["image_id"]: r for r in background_pool(coco_store, ("coco-val",))}
    images = coco_store.images(["synth/s11-n2"]).to_pylist()
    inst = coco_store.instances(["synth/s11-n2"]).to_pylist()
    for im in images:
        prov = orjson.loads(im["provenance"])
        bg = prov["background"]
        assert bg["source"] == "coco-val" and bg["image_id"] in pool
        # Outside the person's mask the pixels are the real photo, scaled to cover and centre-cropped.
        row = pool[bg["image_id"]]
        photo = Image.open(io.BytesIO(coco_store.read_image(row["shard"], row["offset"], row["num_bytes"])))
        photo = photo.convert("RGB")
        scale = max(64 / photo.width, 64 / photo.height)
        w, h = max(64, round(photo.width * scale)), max(64, round(photo.height * scale))
        photo = photo.resize((w, h), Image.BILINEAR)
        photo = np.asarray(photo.crop(((w - 64) // 2, (h - 64) // 2, (w - 64) // 2 + 64, (h - 64) // 2 + 64)))
        out = np.asarray(Image.open(io.BytesIO(coco_store.read_image(im["shard"], im["offset"], im["num_bytes"]))))
        people = np.zeros((64, 64), bool)
        for a in inst:
            if a["image_id"] == im["image_id"]:
                people |= mask_utils.decode(orjson.loads(a["segmentation"])).astype(bool)
        # dilate: anti-aliased edges blend person and photo
        grown = people.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                grown |= np.roll(np.roll(people, dy, 0), dx, 1)
        far = ~grown
        assert far.sum() > 500
        assert np.abs(out[far].astype(int) - photo[far].astype(int)).max() <= 2
    # Same seed, same picks; the background is part of what the unit's hash covers.
    assert synth_run(coco_store, opts).unchanged == 2
    with pytest.raises(PosepipeError, match="no such source"):
        synth_run(coco_store, _opts(backgrounds=("nope",)))


def test_bvh_clips_pose_people_and_bad_clips_are_user_errors(store, tmp_path):
    import numpy as np

    from posepipe.synth.core import bvh, pose

    clip = tmp_path / "jump.bvh"
    bvh.write_poses(clip, [pose.sample_pose(np.random.default_rng(s), "falling") for s in range(5)])
    opts = _opts(count=2, workers=1, seed=8, bvh=(str(clip),),
                 config=SceneConfig(width=64, height=64, max_people=2, bvh_share=1.0))
    result = synth_run(store, opts)
    assert result.rendered == 2 and not result.failed
    attrs = [orjson.loads(a) for a in store.instances(["synth/s8-n2"]).column("attributes").to_pylist()]
    assert attrs and {a["pose_family"] for a in attrs} == {"bvh"}
    assert all(a["pose"]["params"]["clip"].startswith("jump-") and 0 <= a["pose"]["params"]["frame"] < 5
               for a in attrs)

    bad = tmp_path / "bad.bvh"
    bad.write_text("not a clip")
    with pytest.raises(PosepipeError, match=r"--bvh .*bad.bvh: not a BVH file"):
        synth_run(store, _opts(bvh=(str(bad),)))
    armless = tmp_path / "armless.bvh"
    armless.write_text(clip.read_text().replace("LeftArm", "LeftWing"))
    with pytest.raises(PosepipeError, match=r"armless.bvh: no joint for upper_arm.L: one of LeftArm"):
        synth_run(store, _opts(bvh=(str(armless),)))


def test_a_source_holds_one_run(store):
    # Two slices of one run fill it; a later --count or --seed under the same --source replaces it.
    first = synth_run(store, _opts(count=3, workers=1, units=(0, 2), source="synth/one"))
    second = synth_run(store, _opts(count=3, workers=1, units=(2, 3), source="synth/one"))
    assert (first.rendered, second.rendered, first.removed, second.removed) == (2, 1, 0, 0)
    keys = set(store.batches(["synth/one"]).column("source_file").to_pylist())
    assert keys == {f"synth:synth/one/{unit_seed(5, i)}" for i in range(3)}
    fewer = synth_run(store, _opts(count=2, workers=1, source="synth/one"))
    assert (fewer.rendered, fewer.unchanged, fewer.removed) == (0, 2, 1)
    assert store.images(["synth/one"]).num_rows == 2
    other = synth_run(store, _opts(count=1, seed=6, workers=1, source="synth/one"))
    assert (other.rendered, other.removed) == (1, 2)
    assert store.batches(["synth/one"]).column("source_file").to_pylist() == [f"synth:synth/one/{unit_seed(6, 0)}"]
