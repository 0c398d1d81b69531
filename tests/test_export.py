"""Export of a trained checkpoint: ONNX FP32 vs PyTorch, static INT8 QDQ, and the report."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from posepipe.datasets.errors import PosepipeError
from posepipe.training import evaluate
from posepipe.training.export import ExportOptions, export_model, onnx_predictor, session
from posepipe.training.train import CHECKPOINT
from tests.test_train_support import train_workspace, trained_run  # noqa: F401

FIELDS = ("size_fp32", "size_int8", "latency_fp32_ms", "latency_int8_ms", "ap_fp32", "ap_int8", "max_abs_diff")


def test_export_runs_both_models_and_reports(trained_run, train_workspace, tmp_path):
    _, manifest = train_workspace
    out = tmp_path / "export"
    report = export_model(trained_run / CHECKPOINT, out, manifest,
                          options=ExportOptions(calibration=8, latency_runs=5, exclude_nodes=["/final/Conv"]))
    on_disk = json.loads((out / "export_report.json").read_text())
    for name in FIELDS:
        assert isinstance(on_disk[name], (int, float)) and on_disk[name] >= 0, name
    assert on_disk["size_fp32"] == (out / "model.fp32.onnx").stat().st_size
    assert on_disk["size_int8"] == (out / "model.int8.onnx").stat().st_size < on_disk["size_fp32"] * 0.5
    assert on_disk["max_abs_diff"] < 1e-3
    assert on_disk["calibration_images"] == {"real": 4, "synthetic": 4}
    assert "| COCO keypoint AP |" in (out / "export_report.md").read_text()

    # INT8 really is QDQ with int8 weights, and the excluded node was left in float.
    int8 = onnx.load(str(out / "model.int8.onnx"))
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("QuantizeLinear") > 5 and "DequantizeLinear" in ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in int8.graph.initializer)
    final = next(n for n in int8.graph.node if n.name == "/final/Conv")
    assert all("DequantizeLinear" not in (p.op_type) for p in int8.graph.node if set(p.output) & set(final.input[1:]))

    # Both models run in ONNX Runtime and give heatmaps of the right shape that agree roughly.
    batch = np.random.default_rng(0).normal(size=(2, 3, 64, 48)).astype(np.float32)
    a = onnx_predictor(session(out / "model.fp32.onnx"))(batch)
    b = onnx_predictor(session(out / "model.int8.onnx"))(batch)
    assert a.shape == b.shape == (2, 17, 16, 12)
    assert np.abs(a - b).max() < 0.5 * np.abs(a).max() + 1e-3

    # The APs are what COCOeval gives on the files written for each model.
    for name in ("fp32", "int8"):
        again = evaluate.coco_eval(out / f"eval_{name}" / "val_gt.json", out / f"eval_{name}" / "predictions.json")
        assert report[f"ap_{name}"] == pytest.approx(again["AP"], abs=1e-12)


def test_export_errors_are_one_line(trained_run, train_workspace, tmp_path):
    _, manifest = train_workspace
    with pytest.raises(PosepipeError, match="checkpoint not found"):
        export_model(tmp_path / "nope.pt", tmp_path / "o", manifest)
    with pytest.raises(PosepipeError, match="no node named 'no_such_node'"):
        export_model(trained_run / CHECKPOINT, tmp_path / "o", manifest,
                     options=ExportOptions(calibration=2, latency_runs=1, exclude_nodes=["no_such_node"]))
