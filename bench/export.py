"""FP32 vs INT8 ONNX: file size, CPU latency per image (side by side) and COCO keypoint AP.

    .venv/bin/python bench/export.py [--model base-up] [--epochs 40] [--threads 1]
    .venv/bin/python bench/export.py --checkpoint CKPT --manifest DIR
    .venv/bin/python bench/export.py --variants [--threads 1]

Without a checkpoint it first trains the model on coco-mini train (torchrun, 2 processes, real
people only) and prints how long that took, then exports both ONNX models and measures them in
one process on the same real validation people (coco-mini val). Baseline: the FP32 model.
Targets: size <= 0.3x, latency <= 0.5x, AP drop <= 1 point.

``--variants`` measures latency only (seeded untrained weights, random calibration crops): the
``base`` (ConvTranspose head) and ``base-up`` (upsample head) models, FP32 and each INT8 recipe,
all side by side in one process. Baseline: ``base`` FP32, and each model's own FP32.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_setup import coco_mini_manifest  # noqa: E402

# (label, model, ExportOptions fields, nodes excluded by op type) for --variants.
VARIANTS = [
    ("QDQ per-channel U8S8 (default)", {}, None),
    ("QDQ per-tensor U8S8", {"per_channel": False}, None),
    ("QOperator per-channel U8S8", {"quant_format": "qoperator"}, None),
    ("QDQ per-channel S8S8", {"activations": "int8"}, None),
    ("QDQ U8S8, ConvTranspose kept float", {}, "ConvTranspose"),
    ("QDQ U8S8, first and last conv kept float", {}, "first-last"),
]


def train_and_export(args) -> None:
    from posepipe.training.export import ExportOptions, export_model
    from posepipe.training.launch import LaunchConfig, run

    with tempfile.TemporaryDirectory() as tmp:
        manifest = args.manifest or coco_mini_manifest(Path(tmp), score_on_train=args.score_on_train)
        checkpoint = args.checkpoint
        train_seconds = None
        if checkpoint is None:
            out = Path(tmp) / "train"
            cfg = LaunchConfig(manifest=manifest, out=out, model=args.model, nproc=2, epochs=args.epochs,
                               train_args=["--batch-size", str(args.batch_size), "--ratio", "0:1", "--lr", str(args.lr),
                                           "--augment", args.augment, "--seed", "0", "--workers", "0"])
            start = time.perf_counter()
            if run(cfg) != 0:
                sys.exit("training failed")
            train_seconds = time.perf_counter() - start
            checkpoint = out / "checkpoint.pt"
            torch_ap = json.loads((out / "metrics.json").read_text())["AP"]
        report = export_model(checkpoint, Path(tmp) / "export", manifest, options=ExportOptions(
            calibration=args.calibration, latency_runs=args.latency_runs, threads=args.threads))
        print("\n" + (Path(tmp) / "export" / "export_report.md").read_text())
        if train_seconds is not None:
            print(f"Training: {args.model}, {args.epochs} epochs on coco-mini train, 2 processes, "
                  f"{train_seconds / 60:.1f} min wall; PyTorch AP after training {torch_ap:.4f} "
                  f"(ONNX FP32 {report['ap_fp32']:.4f}).")
        print(json.dumps({k: report[k] for k in ("size_ratio", "latency_fp32_ms", "latency_int8_ms", "latency_ratio",
                                                 "ap_fp32", "ap_int8", "ap_drop_points")}))


def variants(args) -> None:
    import numpy as np
    import onnx
    import torch

    from posepipe.training.export import ExportOptions, export_fp32, quantize_int8, session, side_by_side_latency
    from posepipe.training.model import build_model

    sessions, sizes, rows = {}, {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("base", "base-up"):
            torch.manual_seed(0)
            model = build_model(name).eval()
            h, w = model.config.input_size
            fp32 = Path(tmp) / f"{name}.fp32.onnx"
            export_fp32(model, model.config, fp32)
            sessions[(name, "FP32")] = session(fp32, args.threads)
            sizes[(name, "FP32")] = fp32.stat().st_size
            convs = [n for n in onnx.load(str(fp32)).graph.node if n.op_type in ("Conv", "ConvTranspose")]
            crops = np.random.default_rng(0).normal(size=(16, 3, h, w)).astype(np.float32)
            for label, fields, exclude in VARIANTS:
                if exclude == "ConvTranspose":
                    if not any(n.op_type == "ConvTranspose" for n in convs):
                        continue
                    excluded = [n.name for n in convs if n.op_type == "ConvTranspose"]
                else:
                    excluded = [convs[0].name, convs[-1].name] if exclude == "first-last" else []
                target = Path(tmp) / f"{name}.{len(rows)}.int8.onnx"
                quantize_int8(fp32, target, crops, excluded, ExportOptions(**fields))
                sessions[(name, label)] = session(target, args.threads)
                sizes[(name, label)] = target.stat().st_size
                rows.append((name, label))
        image = np.random.default_rng(1).normal(size=(1, 3, 256, 192)).astype(np.float32)
        latency = side_by_side_latency(sessions, image, args.latency_runs)
    base = latency[("base", "FP32")]
    print(f"\nLatency per image, batch 1, {args.threads or 'default'} threads, median of {args.latency_runs} "
          "runs taken in turns in one process. Baseline: base FP32.\n")
    print("| model | ONNX | ms | / base FP32 | / own FP32 | size / own FP32 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key in sessions:
        own = latency[(key[0], "FP32")]
        print(f"| {key[0]} | {key[1]} | {latency[key]:.2f} | {latency[key] / base:.3f} | {latency[key] / own:.3f} | "
              f"{sizes[key] / sizes[(key[0], 'FP32')]:.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--manifest", type=Path)
    p.add_argument("--model", default="base-up", help="model trained when no --checkpoint is given")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16, help="per process")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--augment", default="default", help="training augmentation preset (default, light, none)")
    p.add_argument("--calibration", type=int, default=64)
    p.add_argument("--latency-runs", type=int, default=50)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads, the same for every model")
    p.add_argument("--score-on-train", action="store_true",
                   help="score AP on the coco-mini train people (quantization fidelity on fitted people, not generalisation)")
    p.add_argument("--variants", action="store_true", help="latency of every INT8 recipe on base and base-up")
    args = p.parse_args()
    variants(args) if args.variants else train_and_export(args)


if __name__ == "__main__":
    main()
