"""FP32 vs INT8 ONNX: file size, CPU latency per image (side by side) and COCO keypoint AP.

    .venv/bin/python bench/export.py [--checkpoint CKPT --manifest DIR] [--model base] [--epochs 2]

Without a checkpoint it first trains the model on coco-mini (torchrun, 2 processes), then exports
both ONNX models and measures them in one process on the same real validation people
(coco-mini val). Baseline: the FP32 model. Targets: size <= 0.3x, latency <= 0.5x, AP drop <= 1 point.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_setup import coco_mini_manifest  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--manifest", type=Path)
    p.add_argument("--model", default="base")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--calibration", type=int, default=64)
    p.add_argument("--latency-runs", type=int, default=50)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()

    from posepipe.training.export import ExportOptions, export_model
    from posepipe.training.launch import LaunchConfig, run

    with tempfile.TemporaryDirectory() as tmp:
        manifest = args.manifest or coco_mini_manifest(Path(tmp))
        checkpoint = args.checkpoint
        if checkpoint is None:
            out = Path(tmp) / "train"
            cfg = LaunchConfig(manifest=manifest, out=out, model=args.model, nproc=2, epochs=args.epochs,
                               train_args=["--batch-size", "16", "--ratio", "0:1", "--no-eval", "--workers", "0"])
            if run(cfg) != 0:
                sys.exit("training failed")
            checkpoint = out / "checkpoint.pt"
        report = export_model(checkpoint, Path(tmp) / "export", manifest, options=ExportOptions(
            calibration=args.calibration, latency_runs=args.latency_runs, threads=args.threads))
        print("\n" + (Path(tmp) / "export" / "export_report.md").read_text())


if __name__ == "__main__":
    main()
