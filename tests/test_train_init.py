"""Fine-tuning from pretrained weights: targets, loss, ``--init`` sources, DDP, export and predict."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from posepipe.datasets.errors import PosepipeError
from posepipe.pretrained import registry
from posepipe.pretrained.movenet import decode_single
from posepipe.training.heatmaps import centernet_targets
from posepipe.training.init import resolve
from posepipe.training.model import build_model, inference_module


def posepipe(*args):
    return subprocess.run([sys.executable, "-m", "posepipe.flows", *args], capture_output=True, text=True,
                          env=dict(os.environ))


def test_targets_decode_back_to_the_joints():
    """Heads that equal their targets decode to the labelled joints exactly: the targets use the
    decoding's own conventions (cells, offsets, regression from the centre)."""
    rng = np.random.default_rng(0)
    size, stride = (256, 256), 4
    joints = np.zeros((5, 17, 3), dtype=np.float32)
    joints[..., 0] = rng.uniform(8, 248, (5, 17))
    joints[..., 1] = rng.uniform(8, 248, (5, 17))
    joints[..., 2] = rng.choice([0, 1, 2], (5, 17), p=[0.2, 0.3, 0.5])
    t = [centernet_targets(j, size, stride) for j in joints]
    h, w = 64, 64
    heat = torch.from_numpy(np.stack([x["target"] for x in t]))
    center = torch.from_numpy(np.stack([x["center_target"] for x in t]))
    regression = torch.zeros(5, 34, h * w)
    offsets = torch.zeros(5, 34, h * w)
    for b, x in enumerate(t):
        regression[b, :, x["center_cell"]] = torch.from_numpy(x["regression_target"].reshape(-1))
        for k in range(17):
            offsets[b, 2 * k:2 * k + 2, x["joint_cell"][k]] = torch.from_numpy(x["offset_target"][k])
    out = decode_single(heat, center, regression.view(5, 34, h, w), offsets.view(5, 34, h, w), size).numpy()
    labelled = np.stack([x["target_weight"] for x in t]) > 0
    assert labelled.sum() > 50
    np.testing.assert_allclose(out[..., :2][labelled], joints[..., :2][labelled], rtol=0, atol=1e-3)
    assert np.all(out[..., 2][labelled] == 1.0)


def test_init_sources_and_refusals(thunder, tmp_path):
    config, state = resolve("movenet-thunder")
    assert config.arch == "movenet" and config.input_size == (256, 256) and config.output == "keypoints"
    assert config.init["weights_sha256"] == registry.get("movenet-thunder").weights_sha256
    assert config.init["licence"] == "Apache-2.0"
    model = build_model(config)
    assert set(model.state_dict()) == set(state)
    folder_config, folder_state = resolve(str(thunder.folder("movenet-thunder")))
    assert folder_config.init == config.init and folder_state.keys() == state.keys()
    with pytest.raises(PosepipeError, match="--init nope: neither a model name"):
        resolve("nope")
    # A pickle that would run code is refused by weights_only loading, with one line.
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "checkpoint.pt"
    evil.write_bytes(pickle.dumps({"format": "posepipe-checkpoint/1", "x": Evil()}))
    with pytest.raises(PosepipeError, match="not a loadable posepipe checkpoint"):
        resolve(str(evil))


def test_fine_tuning_lowers_the_loss_from_the_pretrained_start(thunder, coco_store):
    from posepipe.datasets.instance_dataset import load_instances
    from posepipe.training.data import PoseDataset
    from posepipe.training.losses import centernet_loss
    from posepipe.training.train import train_step

    torch.manual_seed(0)
    config, state = resolve("movenet-thunder")
    model = build_model(config)
    model.load_state_dict(state)
    inst = coco_store.instances(["coco-train"]).to_pandas()
    ids = inst[(inst["num_keypoints"] >= 8) & ~inst["iscrowd"]]["instance_id"].head(6)
    data = PoseDataset(coco_store, load_instances(coco_store, ids), config.input_size, train=False, targets="centernet")
    batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    with torch.no_grad():
        start = float(centernet_loss(model(batch["image"]), batch))
    losses = [float(train_step(model, optimizer, batch, torch.device("cpu"))) for _ in range(4)]
    with torch.no_grad():
        end = float(centernet_loss(model(batch["image"]), batch))
    assert np.isfinite(losses).all() and end < start * 0.95, (start, losses, end)
    # The inference form decodes keypoints in crop pixels.
    with torch.no_grad():
        kp = inference_module(model).eval()(batch["image"][:2])
    assert kp.shape == (2, 17, 3) and float(kp[..., :2].min()) > -10 and float(kp[..., :2].max()) < 266


@pytest.mark.slow
def test_ddp_fine_tune_export_int8_and_predict_agree(thunder, coco_store, tmp_path, shared_data):
    """torchrun with 2 processes from MoveNet Thunder, INT8 export, and the INT8 file through
    `posepipe predict` giving the AP the export report states."""
    from posepipe.training.evaluate import coco_eval

    mix = tmp_path / "mix"
    done = posepipe("mix", "--real", "coco-train", "--ratio", "0:1", "--val-fraction", "0", "--test-fraction", "0",
                    "--store", str(coco_store.root), "--out", str(mix), "--params", os.devnull)
    assert done.returncode == 0, done.stderr
    train = tmp_path / "train"
    done = posepipe("train", "--manifest", str(mix), "--out", str(train), "--init", "movenet-thunder", "--nproc", "2",
                    "--max-steps", "2", "--json", "--", "--batch-size", "4", "--ratio", "0:1", "--lr", "1e-5",
                    "--workers", "0", "--val-sources", "coco-val", "--augment", "light", "--pck-instances", "8")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["steps"] == 2 and result["metrics"]["num_instances"] == 68
    assert result["metrics"]["AP"] > 0.4  # two gentle steps keep the pretrained accuracy
    log = [json.loads(line) for line in (train / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[0]["init"]["model"] == "movenet-thunder" and log[0]["world_size"] == 2

    export = tmp_path / "export"
    done = posepipe("export-model", "--checkpoint", str(train / "checkpoint.pt"), "--manifest", str(mix),
                    "--out", str(export), "--val-source", "coco-val", "--calibration", "8", "--latency-runs", "3",
                    "--threads", "1", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["output"] == "keypoints" and report["decode_nodes_in_float"] > 50
    assert report["size_ratio"] < 0.3 and report["max_abs_diff"] <= 0.05
    assert report["ap_fp32"] > 0.4 and abs(report["ap_drop_points"]) < 3.0
    meta = __import__("posepipe.pretrained.onnx_io", fromlist=["describe"]).describe(export / "model.int8.onnx").metadata
    assert meta["licence"] == "Apache-2.0 (fine-tuned from movenet-thunder)"
    # The INT8 file through predict, on the people the export scored, with its flip test: the same AP.
    out = tmp_path / "int8.json"
    done = posepipe("predict", "--model", str(export / "model.int8.onnx"), "--source", "coco-val",
                    "--store", str(coco_store.root), "--labelled-only", "--flip", "--threads", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    ap = coco_eval(shared_data / "coco-mini/annotations/person_keypoints_val2017.json", out)["AP"]
    assert ap == pytest.approx(report["ap_int8"], abs=1e-9)
