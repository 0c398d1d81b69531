"""Sanity: the training step fits a handful of real people it sees over and over.

A heatmap model that cannot memorise 8 crops has a bug (targets not where the joints are, the
decoder reading another frame, BatchNorm statistics, loss or initialisation) rather than too
little data. This runs the pieces real runs use (``PoseDataset`` targets, ``train_step`` and its
loss, ``evaluate.predict``'s decoding back to image pixels, COCOeval) in one process, without
augmentation, and asks for what memorising gives: nearly every joint in place on those people.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posepipe.datasets.instance_dataset import load_instances
from posepipe.datasets.store import PoseStore
from posepipe.training import evaluate
from posepipe.training.data import PoseDataset
from posepipe.training.model import build_model, get_config
from posepipe.training.train import train_step
from posepipe.training.transforms import AUGMENT_PRESETS

PEOPLE = 8
STEPS = 250


@pytest.fixture(scope="module")
def people(coco_store_template):
    store = PoseStore(coco_store_template)  # read only
    table = store.instances(["coco-train"]).to_pandas()
    table = table[(table["num_keypoints"] >= 8) & ~table["iscrowd"]].head(PEOPLE)
    assert len(table) == PEOPLE
    return store, list(table["instance_id"])


def _pck(model, dataset) -> float:
    keypoints, _ = evaluate.predict(evaluate.torch_predictor(model), dataset, flip_test=False)
    return evaluate.pck(keypoints, dataset.instances.keypoints, dataset.instances.bbox)


@pytest.mark.parametrize("name", ["tiny-up", "tiny"])
def test_model_memorises_a_handful_of_people(people, name, tmp_path):
    store, ids = people
    config = get_config(name)
    instances = load_instances(store, ids)
    torch.manual_seed(0)
    train_set = PoseDataset(store, instances, config.input_size, train=True, seed=0, augment=AUGMENT_PRESETS["none"])
    batch = next(iter(torch.utils.data.DataLoader(train_set, batch_size=PEOPLE, shuffle=False)))
    eval_set = PoseDataset(store, instances, config.input_size, train=False)
    # Without augmentation the training crops are the evaluation crops, to the byte.
    np.testing.assert_array_equal(batch["image"][3].numpy(), eval_set.sample(3)["image"])

    model = build_model(config)
    before = _pck(model, eval_set)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # the training loop's default
    model.train()
    losses = [float(train_step(model, optimizer, batch, torch.device("cpu"))) for _ in range(STEPS)]
    after = _pck(model, eval_set)  # eval mode: BatchNorm's running statistics, as in real evaluation

    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])
    assert before < 0.3, before  # an untrained model is far off, so the check below can fail
    assert after > 0.9, (before, after)
    # Through COCOeval too, in image pixels: the 16x12 heatmap grid caps tiny models near 0.65 AP
    # (oracle heatmaps); memorised heatmaps reach about 0.33 here, an untrained model 0.0.
    val = evaluate.validation_set(store, ids)
    metrics = evaluate.score(evaluate.torch_predictor(model), store, val, config.input_size, tmp_path,
                             flip_test=False)
    assert metrics["AP"] > 0.25, metrics
