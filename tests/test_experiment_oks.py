"""posepipe's COCO keypoint AP (training/oks.py) against pycocotools' COCOeval, to the last bit.

Predictions are made from real COCO ground truth with seeded noise, and include what COCOeval's
corner cases are made of: crowds and people without joints (ignored), tied scores, images with
predictions but nobody to find, images with people but no prediction, more than 20
predictions on one image, a prediction far from everyone.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from posepipe.training import evaluate, oks


def _noisy_results(gt: dict, seed: int, scale: float = 8.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    results = []
    for ann in gt["annotations"]:
        kp = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
        x, y, w, h = ann["bbox"]
        guess = np.where(kp[:, 2:3] > 0, kp[:, :2], [x + w / 2, y + h / 2])
        guess = guess + rng.normal(0, scale * rng.uniform(0.2, 3.0), guess.shape)
        if rng.random() < 0.1:
            continue  # a missed person
        score = float(np.round(rng.uniform(0, 1), 1))  # rounded: many ties
        results.append({"image_id": ann["image_id"], "category_id": 1, "score": score,
                        "keypoints": [round(float(v), 3) for v in np.concatenate([guess, np.ones((17, 1))], 1).ravel()]})
    return results


@pytest.fixture(scope="module")
def coco_val(shared_data) -> dict:
    gt = json.loads((shared_data / "coco-mini/annotations/person_keypoints_val2017.json").read_text())
    gt["categories"] = [c for c in gt["categories"] if c["id"] == 1]
    return gt


def _both(tmp_path, gt: dict, results: list[dict]) -> tuple[dict, dict]:
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    ours = oks.average_precision(oks.match(*oks.load(tmp_path / "gt.json", tmp_path / "res.json")))
    theirs = evaluate.coco_eval(tmp_path / "gt.json", tmp_path / "res.json")
    return ours, theirs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_equals_cocoeval_bit_for_bit(tmp_path, coco_val, seed):
    gt = copy.deepcopy(coco_val)
    crowds = [a for a in gt["annotations"] if a.get("iscrowd")]
    empty = [a for a in gt["annotations"] if a["num_keypoints"] == 0]
    assert crowds and empty, "the fixture must hold crowds and people without joints"
    results = _noisy_results(gt, seed)
    rng = np.random.default_rng(100 + seed)
    # 25 predictions on one image (COCOeval keeps the top 20), a stray far away, and one on an image nobody is on.
    crowded = gt["annotations"][0]["image_id"]
    for k in range(25):
        results.append({"image_id": crowded, "category_id": 1, "score": float(rng.uniform()),
                        "keypoints": [float(v) for v in rng.uniform(0, 300, 51)]})
    results.append({"image_id": crowded, "category_id": 1, "score": 0.99, "keypoints": [9000.0, 9000.0, 1.0] * 17})
    lonely = max(im["id"] for im in gt["images"]) + 1
    gt["images"].append({"id": lonely, "file_name": "nobody.jpg", "width": 100, "height": 100})
    results.append({"image_id": lonely, "category_id": 1, "score": 0.5, "keypoints": [50.0, 50.0, 1.0] * 17})
    ours, theirs = _both(tmp_path, gt, results)
    assert 0.05 < theirs["AP"] < 0.95
    for key in ("AP", "AP50", "AP75"):
        assert ours[key] == theirs[key], (key, ours[key], theirs[key])


def test_perfect_and_empty_predictions(tmp_path, coco_val):
    gt = copy.deepcopy(coco_val)
    perfect = [{"image_id": a["image_id"], "category_id": 1, "score": 1.0, "keypoints": a["keypoints"]}
               for a in gt["annotations"] if a["num_keypoints"] > 0 and not a.get("iscrowd")]
    ours, theirs = _both(tmp_path, gt, perfect)
    assert ours == {k: theirs[k] for k in ours} and ours["AP"] > 0.99
    m = oks.match(gt, [])
    assert oks.average_precision(m)["AP"] == 0.0
    assert m.num_people == len(perfect)


def test_subset_equals_cocoeval_on_the_subset_files(tmp_path, coco_val):
    gt = copy.deepcopy(coco_val)
    counted = [a for a in gt["annotations"] if a["num_keypoints"] > 0 and not a.get("iscrowd")]
    rng = np.random.default_rng(5)
    results, people = [], []
    for ann in counted:
        kp = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
        kp[:, :2] += rng.normal(0, 6, (17, 2))
        results.append({"image_id": ann["image_id"], "category_id": 1, "score": float(rng.uniform()),
                        "keypoints": [round(float(v), 3) for v in kp.ravel()]})
        people.append(ann["id"])
    keep = {a["id"] for a in counted[::3]}
    sub_gt, sub_res = oks.subset(gt, results, people, keep)
    assert sum(1 for a in sub_gt["annotations"] if a["id"] in keep) == len(keep)
    assert len(sub_res) == len(keep)
    ours, theirs = _both(tmp_path, sub_gt, sub_res)
    assert ours == {k: theirs[k] for k in ours}


def test_resampled_ap_is_the_weighted_table_and_copies_are_concatenation(tmp_path, coco_val):
    gt = copy.deepcopy(coco_val)
    results = _noisy_results(gt, 7)
    for i, r in enumerate(results):
        r["score"] = 1.0 - i * 1e-4  # distinct scores: copies rank next to each other either way
    m = oks.match(gt, results)
    rng = np.random.default_rng(0)
    images = len(m.image_ids)
    weights = rng.multinomial(images, np.full(images, 1 / images), size=20).astype(float)
    weights[0] = 1.0
    fast = oks.resampled_ap(m, weights)
    slow = np.array([[oks.average_precision(m, w)["AP"], oks.average_precision(m, w)["AP50"]] for w in weights])
    np.testing.assert_array_equal(fast, slow)
    assert fast[0, 0] == oks.average_precision(m)["AP"]
    # An image counted twice scores like the ground truth with that image copied under a new id.
    twice = m.image_ids[3]
    copied = copy.deepcopy(gt)
    new_id, offset = max(m.image_ids) + 1, 10 ** 9
    copied["images"].append({**next(im for im in gt["images"] if im["id"] == twice), "id": new_id})
    copied["annotations"] += [{**a, "id": a["id"] + offset, "image_id": new_id} for a in gt["annotations"]
                              if a["image_id"] == twice]
    extra = [{**r, "image_id": new_id, "score": r["score"] - 5e-5} for r in results if r["image_id"] == twice]
    w = np.ones(images)
    w[3] = 2
    _, theirs = _both(tmp_path, copied, results + extra)
    assert oks.average_precision(m, w)["AP"] == pytest.approx(theirs["AP"], abs=1e-12)


def test_results_for_unknown_images_are_refused(coco_val):
    with pytest.raises(ValueError, match="not in the ground truth"):
        oks.match(coco_val, [{"image_id": -5, "category_id": 1, "score": 1.0, "keypoints": [0.0] * 51}])
