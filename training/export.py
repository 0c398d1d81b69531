"""Export a checkpoint to ONNX (FP32), check it against PyTorch, and quantize it to static INT8.

INT8 uses ONNX Runtime's quantizer (torch.ao.quantization is deprecated): QDQ format, per-channel
int8 weights, uint8 activations (U8S8, the combination MLAS's VNNI/AMX kernels run fastest),
calibrated (99.999th percentile of each activation, or min/max, or entropy) on crops of real and
synthetic people from the manifest. Nodes that lose
too much accuracy can stay in float with ``exclude_nodes``. The format, per-tensor weights and
int8 activations are options for comparison (``bench/export.py --variants``).

ONNX Runtime has no INT8 ConvTranspose on CPU: a ``deconv`` head runs in float between
Dequantize and Quantize nodes, so the ``*-up`` models (upsample head) are the ones whose INT8 is
fast; see ``model.py``.

The report (``export_report.json`` and ``export_report.md``) gives file sizes, CPU latency per
image of both models measured side by side in this one process, the COCO keypoint AP of both on
the same real validation set, and the largest absolute difference between ONNX FP32 and PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from posepipe.datasets import atomic
from posepipe.pretrained import onnx_io
from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.progress import NoProgress, Progress
from posepipe.datasets.store import PoseStore

from . import evaluate
from posepipe.datasets.instance_dataset import Instances, load_instances

from .data import PoseDataset, load_manifest
from .model import ModelConfig, build_model, inference_module

FP32_NAME = "model.fp32.onnx"
INT8_NAME = "model.int8.onnx"
# ONNX FP32 must agree with PyTorch to this much on every heatmap value; keypoint models, on 99%
# of their coordinates and scores (an arg-max tie between two cells may fall either way).
MAX_ABS_DIFF = 1e-3
MAX_KEYPOINT_DIFF = 0.05
TARGETS = {"size_ratio": 0.3, "latency_ratio": 0.5, "ap_drop_points": 1.0}


@dataclass
class ExportOptions:
    calibration: int = 64  # crops fed to the calibrator
    exclude_nodes: list[str] = field(default_factory=list)
    latency_runs: int = 50
    threads: int = 0  # ONNX Runtime intra-op threads; 0: its default (all cores)
    seed: int = 0
    val_sources: list[str] | None = None  # held-out sources to score on (else the manifest's real val rows)
    quant_format: str = "qdq"  # "qdq" (QuantizeLinear/DequantizeLinear pairs) or "qoperator" (QLinearConv...)
    per_channel: bool = True  # one weight scale per output channel (else one per tensor)
    activations: str = "uint8"  # "uint8" (U8S8) or "int8" (S8S8, symmetric activations)
    # Percentile clips the rare extreme activations min/max calibration stretches every scale for:
    # fine-tuned Thunder on coco-mini val loses 0.47 AP points with it, 1.72 with min/max (96 and 32
    # crops), entropy 1.14; no speed difference.
    calibration_method: str = "percentile"  # "percentile" (99.999th), "minmax" or "entropy"

    def describe(self) -> str:
        weights = "per-channel" if self.per_channel else "per-tensor"
        return (f"static {self.quant_format.upper()}, {weights} int8 weights, {self.activations} activations, "
                f"{CALIBRATION_TEXT[self.calibration_method]} calibration")


QUANT_FORMATS = ("qdq", "qoperator")
CALIBRATION_TEXT = {"minmax": "min/max", "percentile": "99.999th percentile", "entropy": "entropy"}
ACTIVATIONS = ("uint8", "int8")


def load_model(checkpoint: Path):
    """A checkpoint's model in its inference form (heatmaps, or decoded keypoints) and its config."""
    from .train import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    config = ModelConfig.from_dict(ckpt["config"])
    model = build_model(config)
    model.load_state_dict(ckpt["model"])
    return inference_module(model).eval(), config


def model_metadata(config: ModelConfig) -> dict[str, str]:
    """What the ONNX file says of itself: its name, and for fine-tuned models the licence and
    origin of the weights it started from."""
    meta = {"name": config.name, "arch": config.arch}
    init = config.init or {}
    while "from" in init and "model" not in init:  # a checkpoint that started from a checkpoint...
        init = init["from"] or {}
    if init.get("model"):
        meta["licence"] = f"{init.get('licence')} (fine-tuned from {init['model']})"
        meta["origin"] = str(init.get("origin"))
    return meta


def export_fp32(model, config: ModelConfig, target: Path) -> None:
    from posepipe.pretrained.onnx_io import export

    export(model, config.input_size, target, config.output, model_metadata(config))


def decode_nodes(fp32: Path, config: ModelConfig) -> list[str]:
    """For keypoint models: the nodes after the network's heads (sigmoids, arg-max decoding).

    They stay in float: their arithmetic on coordinates and arg-max ties would not survive
    uint8, and they cost little. The heads' own convolutions are quantized like the rest.
    """
    import onnx

    from posepipe.pretrained.graph import module_key

    if config.output != "keypoints":
        return []
    graph = onnx.load(str(fp32)).graph
    layers = {layer["name"]: layer for layer in config.graph["layers"]}
    head_convs = set()
    for name in config.graph["outputs"].values():
        layer = layers[name]
        while layer["op"] != "conv":  # a sigmoid head: its convolution is the layer before
            layer = layers[layer["inputs"][0]]
        head_convs.add(f"/{module_key(layer['name'])}/Conv")
    frontier = {t for n in graph.node if n.name in head_convs for t in n.output}
    if len(frontier) != len(head_convs):
        raise PosepipeError(f"{fp32}: cannot find the heads' convolutions ({', '.join(sorted(head_convs))})")
    excluded, changed = set(), True
    while changed:
        changed = False
        for n in graph.node:
            if n.name not in excluded and any(t in frontier for t in n.input):
                excluded.add(n.name)
                frontier.update(n.output)
                changed = True
    return sorted(excluded)


def session(path: Path, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_predictor(sess):
    name = sess.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    return run


def _subset(ins: Instances, positions) -> Instances:
    return replace(ins, **{f: getattr(ins, f)[positions] for f in ins.__dataclass_fields__})


def calibration_crops(store: PoseStore, rows, config: ModelConfig, count: int, seed: int) -> tuple[np.ndarray, dict]:
    """``count`` plain crops (no augmentation), half real and half synthetic where both exist."""
    rng = np.random.default_rng(seed)
    kinds = {k: rows[rows["source_kind"] == k] for k in ("real", "synthetic")}
    kinds = {k: v for k, v in kinds.items() if len(v)}
    if not kinds:
        raise PosepipeError("the manifest has no rows to calibrate on")
    picked, counts = [], {}
    for i, (kind, part) in enumerate(sorted(kinds.items())):
        want = count // len(kinds) + (1 if i < count % len(kinds) else 0)
        take = rng.choice(len(part), size=min(want, len(part)), replace=False)
        picked += list(part["instance_id"].iloc[np.sort(take)])
        counts[kind] = int(len(take))
    ins = load_instances(store, picked, what="calibration set")
    dataset = PoseDataset(store, ins, config.input_size, train=False)
    return np.stack([dataset.sample(i)["image"] for i in range(len(dataset))]), counts


class CropReader:
    """onnxruntime's CalibrationDataReader over prepared crops, one image per call."""

    def __init__(self, input_name: str, crops: np.ndarray):
        self.input_name, self.crops, self.pos = input_name, crops, 0

    def get_next(self):
        if self.pos >= len(self.crops):
            return None
        self.pos += 1
        return {self.input_name: self.crops[self.pos - 1 : self.pos]}

    def rewind(self) -> None:
        self.pos = 0


def check_quant_options(opts: ExportOptions) -> None:
    if opts.quant_format not in QUANT_FORMATS:
        raise PosepipeError(f"unknown quantization format {opts.quant_format!r}; known: {', '.join(QUANT_FORMATS)}")
    if opts.calibration_method not in CALIBRATION_TEXT:
        raise PosepipeError(f"unknown calibration method {opts.calibration_method!r}; known: {', '.join(CALIBRATION_TEXT)}")
    if opts.activations not in ACTIVATIONS:
        raise PosepipeError(f"unknown activation type {opts.activations!r}; known: {', '.join(ACTIVATIONS)}")


def quantize_int8(fp32: Path, target: Path, crops: np.ndarray, exclude_nodes: list[str],
                  options: ExportOptions | None = None) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    opts = options or ExportOptions()
    check_quant_options(opts)
    quant_format = QuantFormat.QDQ if opts.quant_format == "qdq" else QuantFormat.QOperator
    activation_type = QuantType.QUInt8 if opts.activations == "uint8" else QuantType.QInt8

    names = {n.name for n in onnx.load(str(fp32)).graph.node}
    unknown = [n for n in exclude_nodes if n not in names]
    if unknown:
        raise PosepipeError(f"{fp32}: no node named {unknown[0]!r} to exclude (nodes: {', '.join(sorted(names)[:8])}, ...)")
    with atomic.atomic_path(target.with_suffix(".pre.onnx")) as pre, atomic.atomic_path(target) as tmp:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        # The histogram calibrators print to stdout; `--json` output must stay clean.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(pre), str(tmp), CropReader("input", crops), quant_format=quant_format,
                            per_channel=opts.per_channel, activation_type=activation_type, weight_type=QuantType.QInt8,
                            calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                                              "entropy": CalibrationMethod.Entropy}[opts.calibration_method],
                            nodes_to_exclude=list(exclude_nodes),
                            # S8S8 wants activations symmetric around 0 (zero point 0).
                            extra_options={"ActivationSymmetric": opts.activations == "int8", "CalibPercentile": 99.999})
    target.with_suffix(".pre.onnx").unlink(missing_ok=True)


def onnx_torch_difference(onnx_out: np.ndarray, torch_out: np.ndarray, output: str) -> float:
    diff = np.abs(np.asarray(onnx_out) - np.asarray(torch_out))
    return float(diff.max()) if output == "heatmaps" else float(np.percentile(diff, 99))


def side_by_side_latency(sessions: dict, image: np.ndarray, runs: int) -> dict[str, float]:
    """Median milliseconds per image, the models taking turns so both see the same machine state."""
    feeds = {k: {s.get_inputs()[0].name: image} for k, s in sessions.items()}
    for k, s in sessions.items():  # warm up
        for _ in range(5):
            s.run(None, feeds[k])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds[k])
            times[k].append((time.perf_counter() - t) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def export_model(checkpoint: str | Path, out: str | Path, manifest: str | Path, store: str | Path | None = None,
                 options: ExportOptions | None = None, progress: Progress | None = None) -> dict:
    import onnxruntime as ort
    import torch

    opts = options or ExportOptions()
    progress = progress or NoProgress()
    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_file():
        raise PosepipeError(f"{checkpoint}: checkpoint not found")
    if opts.calibration < 1:
        raise PosepipeError("--calibration must be at least 1")
    check_quant_options(opts)
    man = load_manifest(manifest, store)
    pose_store = PoseStore(man.store_root)
    model, config = load_model(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path = out / FP32_NAME, out / INT8_NAME

    export_fp32(model, config, fp32_path)
    val_rows = man.split("val")
    val_rows = val_rows[val_rows["source_kind"] == "real"]
    if opts.val_sources:  # a held-out set named explicitly wins over the manifest's val rows
        val = evaluate.validation_set(pose_store, sources=opts.val_sources)
    elif len(val_rows):
        val = evaluate.validation_set(pose_store, val_rows["instance_id"])
    else:
        raise PosepipeError(f"{man.folder}: the manifest has no real 'val' rows; pass --val-source")
    check_set = PoseDataset(pose_store, _subset(val.instances, slice(0, 16)), config.input_size, train=False)
    check = np.stack([check_set.sample(i)["image"] for i in range(len(check_set))])
    fp32 = session(fp32_path, opts.threads)
    with torch.no_grad():
        expected = model(torch.from_numpy(check)).numpy()
    max_abs_diff = onnx_torch_difference(onnx_predictor(fp32)(check), expected, config.output)
    limit = MAX_ABS_DIFF if config.output == "heatmaps" else MAX_KEYPOINT_DIFF
    if max_abs_diff > limit:
        raise PosepipeError(f"{fp32_path}: ONNX and PyTorch differ by {max_abs_diff:.2e} (limit {limit})")

    train_rows = man.split("train")
    crops, calib_counts = calibration_crops(pose_store, train_rows if len(train_rows) else man.rows, config,
                                            opts.calibration, opts.seed)
    kept_float = decode_nodes(fp32_path, config)
    quantize_int8(fp32_path, int8_path, crops, list(opts.exclude_nodes) + kept_float, opts)
    int8 = session(int8_path, opts.threads)

    latency = side_by_side_latency({"fp32": fp32, "int8": int8}, check[:1], opts.latency_runs)
    ap = {}
    for name, sess in progress.track([("fp32", fp32), ("int8", int8)], 2, "scoring FP32 and INT8"):
        ap[name] = evaluate.score(onnx_predictor(sess), pose_store, val, config.input_size, out / f"eval_{name}")

    size_fp32, size_int8 = fp32_path.stat().st_size, int8_path.stat().st_size
    report = {
        "checkpoint": str(checkpoint), "model": config.name, "input_size": list(config.input_size),
        "onnxruntime": ort.__version__, "opset": onnx_io.OPSET, "threads": opts.threads or "default",
        "size_fp32": size_fp32, "size_int8": size_int8, "size_ratio": size_int8 / size_fp32,
        "latency_fp32_ms": latency["fp32"], "latency_int8_ms": latency["int8"],
        "latency_ratio": latency["int8"] / latency["fp32"], "latency_runs": opts.latency_runs,
        "ap_fp32": ap["fp32"]["AP"], "ap_int8": ap["int8"]["AP"],
        "ap_drop_points": (ap["fp32"]["AP"] - ap["int8"]["AP"]) * 100,
        "metrics_fp32": ap["fp32"], "metrics_int8": ap["int8"],
        "max_abs_diff": max_abs_diff, "validation_people": len(val.instances),
        "calibration_images": calib_counts, "excluded_nodes": list(opts.exclude_nodes),
        "output": config.output, "decode_nodes_in_float": len(kept_float), "init": config.init,
        "quantization": opts.describe(), "head": config.head,
    }
    report["targets"] = {
        "size_ratio<=0.3": report["size_ratio"] <= TARGETS["size_ratio"],
        "latency_ratio<=0.5": report["latency_ratio"] <= TARGETS["latency_ratio"],
        "ap_drop<=1.0": report["ap_drop_points"] <= TARGETS["ap_drop_points"],
    }
    atomic.write_text(out / "export_report.json", json.dumps(report, indent=2))
    atomic.write_text(out / "export_report.md", report_markdown(report))
    return report


def report_markdown(r: dict) -> str:
    t = r["targets"]

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    return "\n".join([
        f"# Export report: {r['model']} ({r['input_size'][0]}x{r['input_size'][1]})",
        "",
        f"Checkpoint `{r['checkpoint']}`; ONNX Runtime {r['onnxruntime']}, {r['threads']} threads; "
        f"{r['validation_people']} validation people; calibration on {r['calibration_images']}.",
        "",
        "| | FP32 | INT8 | INT8 / FP32 | target |",
        "| --- | --- | --- | --- | --- |",
        f"| file size (bytes) | {r['size_fp32']} | {r['size_int8']} | {r['size_ratio']:.3f} | <= 0.3 ({mark(t['size_ratio<=0.3'])}) |",
        f"| CPU latency per image (ms) | {r['latency_fp32_ms']:.3f} | {r['latency_int8_ms']:.3f} | "
        f"{r['latency_ratio']:.3f} | <= 0.5 ({mark(t['latency_ratio<=0.5'])}) |",
        f"| COCO keypoint AP | {r['ap_fp32']:.4f} | {r['ap_int8']:.4f} | drop {r['ap_drop_points']:.2f} points | "
        f"<= 1.0 point ({mark(t['ap_drop<=1.0'])}) |",
        "",
        f"Largest absolute difference ONNX FP32 vs PyTorch: {r['max_abs_diff']:.2e}.",
        f"INT8: {r['quantization']}; model: {r.get('output', 'heatmaps')} out" + (f", head {r['head']}." if r.get('output', 'heatmaps') == 'heatmaps' else "."),
        f"Excluded from quantization: {', '.join(r['excluded_nodes']) or 'nothing'}"
        + (f"; the {r['decode_nodes_in_float']} decoding nodes after the heads stay in float." if r.get("decode_nodes_in_float") else "."),
        "",
    ])
