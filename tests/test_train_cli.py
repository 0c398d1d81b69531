"""``posepipe train`` and ``posepipe export-model`` from the command line."""

from __future__ import annotations

import json

import pytest

from posepipe.flows.cli import main
from posepipe.training.train import CHECKPOINT, load_checkpoint
from tests.test_train_support import train_workspace, trained_run  # noqa: F401


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_help_lists_both_commands(capsys):
    code, out, _ = _run(["--help"], capsys)
    assert code == 0 and "train" in out and "export-model" in out
    code, out, _ = _run(["export-model", "--help"], capsys)
    assert code == 0 and "--calibration" in out and "--exclude-node" in out


def test_train_with_a_bad_manifest_is_one_line(tmp_path, capsys):
    code, _, err = _run(["train", "--manifest", str(tmp_path), "--out", str(tmp_path / "o"), "--epochs", "1"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "no manifest here" in err and "Traceback" not in err


def test_train_cli_two_processes_max_steps(train_workspace, tmp_path, capsys):
    _, manifest = train_workspace
    out = tmp_path / "o"
    code, stdout, _ = _run(["train", "--manifest", str(manifest), "--out", str(out), "--nproc", "2", "--max-steps", "3",
                            "--json", "--", "--batch-size", "4", "--workers", "0", "--no-eval", "--dist-timeout", "300"],
                           capsys)
    assert code == 0
    result = json.loads(stdout)
    assert result["steps"] == 3 and result["images"] == 3 * 4 * 2
    assert load_checkpoint(out / CHECKPOINT)["step"] == 3


def test_export_model_cli_json(trained_run, train_workspace, tmp_path, capsys):
    _, manifest = train_workspace
    code, stdout, _ = _run(["export-model", "--checkpoint", str(trained_run / CHECKPOINT), "--out", str(tmp_path / "e"),
                            "--manifest", str(manifest), "--calibration", "4", "--latency-runs", "3", "--json"], capsys)
    assert code == 0
    report = json.loads(stdout)
    assert report["size_int8"] < report["size_fp32"] and report["max_abs_diff"] < 1e-3
    assert (tmp_path / "e" / "model.int8.onnx").is_file()
