"""``posepipe predict``: a real model on store sources, COCO files and folders of images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from posepipe.datasets import schema


def posepipe(*args):
    return subprocess.run([sys.executable, "-m", "posepipe.flows", *args], capture_output=True, text=True,
                          env=dict(os.environ))


def test_thunder_scores_its_published_ap_through_posepipe(thunder, coco_store, shared_data, tmp_path):
    """MoveNet Thunder with ground-truth boxes on coco-mini val: AP 0.47 +- 0.02 (measured by hand with
    tf2onnx + pycocotools), here through posepipe's conversion, crops, decoding and results file."""
    from posepipe.training.evaluate import coco_eval

    gt = shared_data / "coco-mini/annotations/person_keypoints_val2017.json"
    out = tmp_path / "results.json"
    done = posepipe("predict", "--model", "movenet-thunder", "--source", "coco-val", "--store", str(coco_store.root),
                    "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["people"] == 117 and summary["skipped"] == {"crowd": 1} and summary["unreadable_images"] == 0
    results = json.loads(out.read_text())
    assert {"image_id", "category_id", "keypoints", "score"} == set(results[0]) and len(results[0]["keypoints"]) == 51
    ap = coco_eval(gt, out)["AP"]
    assert 0.45 <= ap <= 0.49, ap
    # The COCO file itself, read through posepipe's ingest checks, gives the same answers.
    same = tmp_path / "from_coco.json"
    done = posepipe("predict", "--model", "movenet-thunder", "--coco", str(gt), "--images",
                    str(shared_data / "coco-mini/val2017"), "--out", str(same), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ingest"]["annotations_accepted"] == 118
    assert json.loads(same.read_text()) == results


def test_predictions_become_a_pred_source_with_scores(thunder, coco_store):
    args = ("predict", "--model", "movenet-thunder", "--source", "coco-val", "--store", str(coco_store.root),
            "--to-store", "pred/thunder", "--min-score", "0.4")
    assert posepipe(*args).returncode == 0
    again = posepipe(*args)  # a second run replaces the first
    assert again.returncode == 0, again.stderr
    inst = coco_store.instances(["pred/thunder"])
    assert inst.num_rows == 117
    kp = schema.keypoints_from_arrow(inst.column("keypoints"))
    scores = np.array(inst.column("keypoint_scores").to_pylist(), dtype=np.float32)
    assert scores.shape == (117, 17)
    # v=2 exactly where the model scored at least --min-score and placed the joint in the picture.
    predicts = [json.loads(a)["predicts"] for a in inst.column("attributes").to_pylist()]
    assert len(set(predicts)) == len(predicts) == 117  # one prediction per labelled person
    labelled = kp[..., 2] == 2
    assert np.all(scores[labelled] >= 0.4)
    left_out = (scores >= 0.4) & ~labelled  # the model put these outside the picture: a few
    assert left_out.sum() < 0.01 * labelled.sum() and np.all(kp[left_out][:, :2] == 0)
    assert set(np.unique(kp[..., 2])) <= {0.0, 2.0}
    assert np.all(kp[kp[..., 2] == 0][:, :2] == 0)
    # Every prediction names the person it is for, and its image is the val image's (same bytes).
    labelled = coco_store.instances(["coco-val"]).to_pandas().set_index("instance_id")
    for attrs, image_id in zip(inst.column("attributes").to_pylist(), inst.column("image_id").to_pylist()):
        assert labelled.loc[json.loads(attrs)["predicts"], "image_id"] == image_id
    assert set(coco_store.images(["pred/thunder"]).column("image_id").to_pylist()) <= set(labelled["image_id"])
    batches = coco_store.batches(["pred/thunder"]).to_pylist()
    assert len(batches) == 1 and batches[0]["annotations_read"] == batches[0]["annotations_accepted"] == 117
    stats = posepipe("stats", "--store", str(coco_store.root), "--source", "pred/thunder", "--json")
    assert stats.returncode == 0, stats.stderr


def test_a_folder_with_broken_images_is_predicted_and_the_broken_ones_named(thunder, shared_data, tmp_path, coco_store):
    folder = tmp_path / "drop"
    folder.mkdir()
    val = shared_data / "coco-mini/val2017"
    shutil.copy(val / "000000217285.jpg", folder / "three_people.jpg")
    shutil.copy(val / "000000397133.jpg", folder / "two_people.jpg")
    (folder / "notes.jpg").write_text("not an image")
    (folder / "cut.jpg").write_bytes((val / "000000349860.jpg").read_bytes()[:3000])
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "pred.json"
    done = posepipe("predict", "--model", "movenet-thunder", "--images", str(folder), "--boxes", "multipose",
                    "--out", str(out), "--to-store", "pred/drop", "--store", str(coco_store.root), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert sorted(u["file"] for u in summary["unreadable"]) == ["cut.jpg", "notes.jpg"]
    assert summary["images"] == 2 and summary["people"] >= 4  # MultiPose finds 3 + 2 (at least 4)
    images = json.loads(out.with_name("pred.images.json").read_text())
    assert [i["file_name"] for i in images] == ["three_people.jpg", "two_people.jpg"]
    results = json.loads(out.read_text())
    assert {r["image_id"] for r in results} == {i["id"] for i in images}
    # The pictures went into the store with the predictions.
    assert coco_store.images(["pred/drop"]).num_rows == 2
    assert coco_store.instances(["pred/drop"]).num_rows == summary["people"]


@pytest.mark.parametrize("args, message", [
    (("--source", "coco-val", "--coco", "x.json"), "give one input"),
    (("--source", "coco-val"), "say where predictions go"),
    (("--source", "nope", "--out", "r.json"), "source 'nope' is not in the store"),
    (("--coco", "x.json", "--out", "r.json"), "--coco needs --images DIR"),
])
def test_bad_predict_arguments_get_one_line(thunder, coco_store, args, message):
    done = posepipe("predict", "--model", "movenet-thunder", "--store", str(coco_store.root), *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
