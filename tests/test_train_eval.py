"""The evaluation path scores a perfect model as perfect: oracle keypoints and oracle heatmaps.

The export report compares FP32 and INT8 by COCO keypoint AP; these tests show the numbers come
from a path that is right. Ground-truth keypoints sent through ``coco_results``/``coco_eval``
must give AP 1, ground-truth heatmaps sent through ``predict`` (crop, decode, flip test, back
to image pixels) must come close, and a wrong answer (each person given another's joints) must
score low, so the check can fail.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from posepipe.datasets import schema
from posepipe.datasets.store import PoseStore
from posepipe.training import evaluate
from posepipe.training.data import PoseDataset
from posepipe.training.heatmaps import gaussian_targets
from posepipe.training.model import CONFIGS, HEATMAP_STRIDE
from posepipe.training.transforms import apply_affine, crop_matrix


@pytest.fixture(scope="module")
def val_set(coco_store_template):
    store = PoseStore(coco_store_template)
    return store, evaluate.validation_set(store, sources=["coco-val"])


def _coco_ap(val, keypoints: np.ndarray, scores: np.ndarray, folder) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gt.json").write_text(json.dumps(val.ground_truth))
    (folder / "dt.json").write_text(json.dumps(evaluate.coco_results(keypoints, scores, val.gt_ids)))
    return evaluate.coco_eval(folder / "gt.json", folder / "dt.json")


def test_ground_truth_keypoints_score_ap_one(val_set, tmp_path):
    _, val = val_set
    n = len(val.instances)
    assert n > 50  # coco-mini val: people with labelled joints, crowds left out
    metrics = _coco_ap(val, val.instances.keypoints, np.ones(n, np.float32), tmp_path / "oracle")
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["AR"] == pytest.approx(1.0, abs=1e-6)

    # Every joint moved right by a fifth of its person's box width: the metric must now be far from 1.
    wrong = val.instances.keypoints.copy()
    wrong[..., 0] += 0.2 * val.instances.bbox[:, 2:3]
    assert _coco_ap(val, wrong, np.ones(n, np.float32), tmp_path / "wrong")["AP"] < 0.2


class OracleHeatmaps:
    """A ``predict_fn`` that answers with the Gaussian targets of the true joints of each crop.

    ``predict`` calls it batch by batch in dataset order; with flip testing every plain batch is
    followed by its mirror image, for which the oracle renders the mirrored joints with left and
    right swapped (what a perfect network would see).
    """

    def __init__(self, dataset: PoseDataset):
        self.dataset, self.next, self.last = dataset, 0, None
        self.crop_w = dataset.input_size[1]

    def _joints(self, i: int) -> np.ndarray:
        s = self.dataset.sample(i)
        joints = self.dataset.instances.keypoints[i].copy()
        m = crop_matrix(s["center"], s["scale"], 0.0, self.dataset.input_size)
        joints[:, :2] = apply_affine(joints[:, :2], m)
        return joints

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        flipped = self.last is not None and np.array_equal(batch, self.last[0][..., ::-1])
        if flipped:
            indices = self.last[1]
            self.last = None
        else:
            indices = range(self.next, self.next + len(batch))
            self.next += len(batch)
            self.last = (batch, indices)
        maps = []
        for i in indices:
            joints = self._joints(i)
            if flipped:
                joints = joints[list(schema.FLIP_INDEX)]
                joints[:, 0] = self.crop_w - 1 - joints[:, 0]
            joints[:, :2] /= HEATMAP_STRIDE
            maps.append(gaussian_targets(joints, self.dataset.heatmap_size)[0])
        return np.stack(maps)


@pytest.mark.parametrize("flip_test", [False, True])
def test_ground_truth_heatmaps_decode_to_near_perfect_ap(val_set, tmp_path, flip_test):
    store, val = val_set
    size = CONFIGS["base"].input_size  # 64x48 heatmaps: the decode's grid is fine enough for OKS
    dataset = PoseDataset(store, val.instances, size, train=False)
    metrics = evaluate.score(OracleHeatmaps(dataset), store, val, size, tmp_path / "eval", batch_size=16,
                             flip_test=flip_test)
    assert metrics["AP"] > 0.9, metrics
    assert metrics["PCK"] > 0.97, metrics
    # The files the score came from are the ones written, and COCOeval gives the same on them again.
    again = evaluate.coco_eval(tmp_path / "eval" / "val_gt.json", tmp_path / "eval" / "predictions.json")
    assert again["AP"] == pytest.approx(metrics["AP"], abs=1e-12)
