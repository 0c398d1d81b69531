"""Real torchrun runs: 2 gloo processes train the tiny model; kill and resume; COCO evaluation files."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from posepipe.datasets.errors import PosepipeError
from posepipe.training import evaluate, launch
from posepipe.training.train import CHECKPOINT, LOG, load_checkpoint
from tests.test_train_support import RUN_EPOCHS, launch_config, train_workspace, trained_run  # noqa: F401
from tests.waiting import LONG, process_group_gone, wait_until


def _log(out):
    return [json.loads(line) for line in (out / LOG).read_text().splitlines()]


def test_two_process_run_loss_falls(trained_run):
    events = _log(trained_run)
    start = events[0]
    assert start["event"] == "start" and start["world_size"] == 2 and start["backend"] == "gloo"
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert len(losses) == RUN_EPOCHS * start["steps_per_epoch"]
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    # Not learning keeps the loss near the first steps' value (~0.015); learning takes it well below.
    assert last < 0.85 * first, (first, last)
    curve = json.loads((trained_run / "train_curve.json").read_text())  # the dvc plots file
    assert [c["loss"] for c in curve] == losses
    ckpt = load_checkpoint(trained_run / CHECKPOINT)
    assert ckpt["epoch"] == RUN_EPOCHS and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    # Each rank had its own seed, so their RNG states differ.
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])


def test_metrics_are_what_cocoeval_gives_on_the_files(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    again = evaluate.coco_eval(trained_run / "val_gt.json", trained_run / "predictions.json")
    for name in ("AP", "AP50", "AP75", "AR"):
        assert metrics[name] == pytest.approx(again[name], abs=1e-12)
    predictions = json.loads((trained_run / "predictions.json").read_text())
    gt = json.loads((trained_run / "val_gt.json").read_text())
    assert len(predictions) == metrics["num_instances"] > 0
    assert len(gt["annotations"]) >= len(predictions)
    assert all(len(p["keypoints"]) == 51 for p in predictions)
    assert 0.0 <= metrics["PCK"] <= 1.0


def test_kill_and_resume_ends_where_the_uninterrupted_run_did(trained_run, train_workspace, tmp_path):
    _, manifest = train_workspace
    out = tmp_path / "out"
    proc = launch.start(launch_config(manifest, out, "--no-eval"))
    try:
        # The first epoch's checkpoint (polled often: the kill must land before the run ends).
        wait_until("the first checkpoint", lambda: (out / CHECKPOINT).exists() or proc.poll() is not None,
                   LONG, interval=0.01)
    finally:
        # As a scheduler preempting the job: the signal reaches torchrun and every rank, which die mid-run.
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    assert (out / CHECKPOINT).exists(), f"torchrun exited {proc.returncode} before its first checkpoint"
    killed_at = load_checkpoint(out / CHECKPOINT)["epoch"]
    # Once every process of the group is gone (waited for, not a fixed pause), none wrote another.
    wait_until("every rank to die", lambda: process_group_gone(proc.pid))
    assert load_checkpoint(out / CHECKPOINT)["epoch"] == killed_at, "a rank outlived the kill"
    assert 1 <= killed_at < RUN_EPOCHS, "the run finished before it could be killed"

    assert launch.run(launch_config(manifest, out, "--no-eval", resume=True)) == 0
    events = _log(out)
    resume = [e for e in events if e["event"] == "resume"]
    assert len(resume) == 1 and resume[0]["epoch"] == killed_at
    # Same losses step by step, and bit-identical final weights and optimizer state.
    steps = [(e["step"], e["loss"]) for e in events if e["event"] == "step"]
    reference = [(e["step"], e["loss"]) for e in _log(trained_run) if e["event"] == "step"]
    assert steps == reference
    a, b = load_checkpoint(out / CHECKPOINT), load_checkpoint(trained_run / CHECKPOINT)
    assert a["epoch"] == b["epoch"] == RUN_EPOCHS
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key
    for k, state in b["optimizer"]["state"].items():
        assert torch.equal(a["optimizer"]["state"][k]["exp_avg"], state["exp_avg"])
    assert a["scheduler"] == b["scheduler"]


def test_bad_checkpoint_and_bad_launch_are_one_line_errors(tmp_path, train_workspace):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(PosepipeError, match="checkpoint.pt: not a loadable posepipe checkpoint"):
        load_checkpoint(bad)
    _, manifest = train_workspace
    with pytest.raises(PosepipeError, match="needs --rdzv-endpoint"):
        launch.preflight(launch.LaunchConfig(manifest, tmp_path / "o", nnodes=2, epochs=1))
    with pytest.raises(PosepipeError, match="no manifest here"):
        launch.preflight(launch.LaunchConfig(tmp_path, tmp_path / "o", epochs=1))


def test_torchrun_command_is_standalone_or_passes_rendezvous_through(tmp_path):
    cfg = launch.LaunchConfig(tmp_path / "m", tmp_path / "o", nproc=2, max_steps=5, threads=1)
    cmd = launch.command(cfg)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node"] and "--standalone" in cmd
    assert cmd[cmd.index("--max-steps") + 1] == "5" and "--rdzv-endpoint" not in cmd
    multi = launch.command(launch.LaunchConfig(tmp_path / "m", tmp_path / "o", nproc=4, nnodes=2,
                                               rdzv_endpoint="node0:29400", epochs=1))
    assert "--standalone" not in multi
    assert multi[multi.index("--rdzv-endpoint") + 1] == "node0:29400"
    assert multi[multi.index("--nnodes") + 1] == "2"
    assert launch.environment(cfg)["OMP_NUM_THREADS"] == "1"
