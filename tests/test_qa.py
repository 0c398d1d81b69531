"""Label checking (``posepipe qa``): the rules on constructed people, and planted errors on coco-mini."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from posepipe.annotation.qa import check
from posepipe.datasets import schema


def posepipe(*args):
    return subprocess.run([sys.executable, "-m", "posepipe.flows", *args], capture_output=True, text=True,
                          env=dict(os.environ))


def person() -> tuple[np.ndarray, np.ndarray]:
    """A plausible standing person (x, y, v=2) and its box; left joints on the image's right."""
    xy = np.array([[50, 20], [54, 17], [46, 17], [58, 19], [42, 19], [62, 40], [38, 40], [66, 62], [34, 62],
                   [68, 82], [32, 82], [58, 90], [42, 90], [59, 125], [41, 125], [60, 160], [40, 160]], float)
    return np.concatenate([xy, np.full((17, 1), 2.0)], axis=1).astype(np.float32), np.array([28, 10, 44, 155.0])


def run(labels, pred_xy, scores=0.8, box=None):
    label, default_box = person()
    joint_scores = np.broadcast_to(np.asarray(scores, dtype=float), (17,))[:, None]
    pred = np.concatenate([pred_xy, joint_scores], axis=1)[None].astype(np.float32)
    box = default_box if box is None else box
    return check(labels[None], box[None], np.array([box[2] * box[3]]), pred, ["p"])


def test_labels_that_agree_with_the_model_raise_nothing():
    labels, _ = person()
    findings, oks = run(labels, labels[:, :2] + 0.5)
    assert findings == [] and oks[0] > 0.95


def test_each_kind_of_error_is_found_and_named():
    labels, box = person()
    truth = labels[:, :2].copy()
    # Left and right exchanged, whole body.
    swapped = labels[list(schema.FLIP_INDEX)]
    (f,), _ = run(swapped, truth)
    assert f.kind == "left_right_swapped" and f.details["group"] == "whole body" and f.severity > 0.5
    # Only the legs swapped.
    legs = labels.copy()
    for a, b in ((11, 12), (13, 14), (15, 16)):
        legs[[a, b]] = legs[[b, a]]
    findings, _ = run(legs, truth)
    assert [(f.kind, f.details.get("group")) for f in findings] == [("left_right_swapped", "legs")]
    # One wrist 40 px away from a confident prediction, the rest in agreement.
    moved = labels.copy()
    moved[9, :2] += [40, 0]
    findings, _ = run(moved, truth)
    assert [(f.kind, f.joint) for f in findings] == [("joint_off", "left_wrist")]
    # ... not when the model is unsure there: then only the label outside its box is left to say.
    scores = np.full(17, 0.8)
    scores[9] = 0.2
    assert [f.kind for f in run(moved, truth, scores)[0]] == ["box_mismatch"]
    # A visible knee left unlabelled.
    deleted = labels.copy()
    deleted[13] = 0
    findings, _ = run(deleted, truth)
    assert [(f.kind, f.joint) for f in findings] == [("visible_unlabelled", "left_knee")]
    # A box shifted off the person.
    findings, _ = run(labels, truth, box=box + [30, 0, 0, 0])
    assert [f.kind for f in findings] == ["box_mismatch"]


def test_planted_errors_on_coco_mini_are_found(thunder, coco_store, shared_data, tmp_path):
    """Three left/right swaps and three moved joints planted in coco-mini val, found by `posepipe qa`."""
    doc = json.loads((shared_data / "coco-mini/annotations/person_keypoints_val2017.json").read_text())
    size = {im["id"]: (im["width"], im["height"]) for im in doc["images"]}
    rich = [a for a in doc["annotations"] if not a["iscrowd"] and a["num_keypoints"] >= 12]
    rich.sort(key=lambda a: -a["area"])
    swapped, moved = rich[0:6:2], rich[1:6:2]
    for a in swapped:
        a["keypoints"] = np.array(a["keypoints"], float).reshape(17, 3)[list(schema.FLIP_INDEX)].reshape(-1).tolist()
    for a in moved:
        kp = np.array(a["keypoints"], float).reshape(17, 3)
        j = int(np.flatnonzero(kp[:, 2] == 2)[-1])
        w = size[a["image_id"]][0]
        spread = 2 * schema.OKS_SIGMAS[j] * np.sqrt(a["area"])  # the annotators' own spread at that joint
        kp[j, 0] = np.clip(kp[j, 0] + 6 * spread if kp[j, 0] + 6 * spread < w else kp[j, 0] - 6 * spread, 0, w - 1)
        a["keypoints"], a["moved"] = kp.reshape(-1).tolist(), schema.COCO17_JOINTS[j]
    path = tmp_path / "planted.json"
    path.write_text(json.dumps(doc))
    done = posepipe("ingest", "coco", str(path), "--images", str(shared_data / "coco-mini/val2017"),
                    "--source", "planted", "--store", str(coco_store.root), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["annotations_rejected"] == 0
    out = tmp_path / "qa"
    done = posepipe("qa", "--source", "planted", "--store", str(coco_store.root), "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    found = {(f["kind"], f["instance_id"], f["joint"]) for f in result["findings"]}
    qa = json.loads((out / "qa.json").read_text())
    by_annotation = {p["source_annotation_id"]: p["instance_id"] for p in qa["people"]}
    swaps_found = sum(("left_right_swapped", by_annotation[a["id"]], None) in found for a in swapped)
    moves_found = sum(("joint_off", by_annotation[a["id"]], a["moved"]) in found for a in moved)
    assert swaps_found >= 2 and moves_found >= 2, (swaps_found, moves_found, result["findings"][:8])
    # Ranked by severity, each with a one-line message naming the file and the person.
    severities = [f["severity"] for f in qa["findings"]]
    assert severities == sorted(severities, reverse=True)
    assert all("\n" not in f["message"] and f["file_name"] in f["message"] for f in qa["findings"])
    page = (out / "qa.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 * min(len(qa["findings"]), 6)
