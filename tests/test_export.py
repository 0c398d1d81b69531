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


def _float_convs_after_ort(path, tmp_path) -> tuple[list[str], int]:
    """Op types ONNX Runtime runs in float (Conv/ConvTranspose) and its QLinearConv count, after its own fusions."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # the QDQ -> QLinear fusions
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    return [o for o in ops if o in ("Conv", "ConvTranspose")], ops.count("QLinearConv")


@pytest.mark.parametrize("name, float_left", [("tiny-up", []), ("tiny", ["ConvTranspose", "ConvTranspose"])])
def test_upsample_head_quantizes_end_to_end(tmp_path, name, float_left):
    """ORT has no INT8 ConvTranspose on CPU: the deconv head stays float, the upsample head does not."""
    import torch

    from posepipe.training.export import export_fp32, quantize_int8
    from posepipe.training.model import build_model, num_parameters

    torch.manual_seed(0)
    model = build_model(name).eval()
    assert 90_000 < num_parameters(model) < 110_000  # both tiny variants stay test-sized
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_fp32(model, model.config, fp32)
    crops = np.random.default_rng(0).normal(size=(4, 3, 64, 48)).astype(np.float32)
    quantize_int8(fp32, int8, crops, [])
    float_ops, qlinear = _float_convs_after_ort(int8, tmp_path)
    assert float_ops == float_left
    assert qlinear == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    a = onnx_predictor(session(fp32))(crops)
    b = onnx_predictor(session(int8))(crops)
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()


def test_quantization_options(tmp_path):
    import torch

    from posepipe.training.export import ExportOptions, export_fp32, quantize_int8
    from posepipe.training.model import build_model

    torch.manual_seed(0)
    model = build_model("tiny-up").eval()
    fp32 = tmp_path / "fp32.onnx"
    export_fp32(model, model.config, fp32)
    crops = np.random.default_rng(0).normal(size=(2, 3, 64, 48)).astype(np.float32)
    quantize_int8(fp32, tmp_path / "qop.onnx", crops, [], ExportOptions(quant_format="qoperator", per_channel=False))
    ops = [n.op_type for n in onnx.load(str(tmp_path / "qop.onnx")).graph.node]
    assert "QLinearConv" in ops and "Conv" not in ops
    for activations, dtype in (("int8", onnx.TensorProto.INT8), ("uint8", onnx.TensorProto.UINT8)):
        quantize_int8(fp32, tmp_path / "q.onnx", crops, [], ExportOptions(activations=activations))
        zero_points = {t.name: t for t in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
        assert zero_points["input_zero_point"].data_type == dtype  # the activation entering the network
    with pytest.raises(PosepipeError, match="unknown quantization format 'int4'"):
        quantize_int8(fp32, tmp_path / "x.onnx", crops, [], ExportOptions(quant_format="int4"))
    with pytest.raises(PosepipeError, match="unknown activation type 'fp8'"):
        quantize_int8(fp32, tmp_path / "x.onnx", crops, [], ExportOptions(activations="fp8"))


def test_checkpoints_without_a_head_field_load_the_deconv_head():
    from posepipe.training.model import CONFIGS, ModelConfig, build_model

    old = CONFIGS["tiny"].to_dict()
    del old["head"]
    config = ModelConfig.from_dict(old)
    assert config == CONFIGS["tiny"] and config.head == "deconv"
    assert build_model(config).state_dict().keys() == build_model("tiny").state_dict().keys()
    with pytest.raises(PosepipeError, match="unknown model head 'pixelshuffle'"):
        build_model(ModelConfig.from_dict({**old, "head": "pixelshuffle"}))
