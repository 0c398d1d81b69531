"""Commands for models: ``posepipe train`` (torchrun DDP) and ``posepipe export-model`` (ONNX FP32 + INT8)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .cli_common import JsonOption, RichProgress, emit_json, exit_code, say


def register(app: typer.Typer, ingest_app: typer.Typer, export_app: typer.Typer) -> None:
    @app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def train_cmd(
        ctx: typer.Context,
        manifest: Path = typer.Option(..., "--manifest", help="Manifest folder written by `posepipe mix`."),
        out: Path = typer.Option(..., "--out", help="Output folder: checkpoint.pt, train_log.jsonl, metrics.json."),
        model: str = typer.Option("tiny", "--model", help="tiny (64x48, ~100k parameters) or base (256x192 in, 64x48 heatmaps); "
                                   "tiny-up / base-up swap the deconvolution head for upsample+conv, which INT8 runs much faster."),
        nproc: int = typer.Option(1, "--nproc", help="Processes (ranks) on this machine; GPUs on a GPU machine."),
        nnodes: int = typer.Option(1, "--nnodes", help="Machines; run the same command on each."),
        rdzv_endpoint: Optional[str] = typer.Option(
            None, "--rdzv-endpoint", help="HOST:PORT of torchrun's c10d rendezvous (multi-node)."),
        rdzv_id: str = typer.Option("posepipe", "--rdzv-id", help="Run id shared by every node (multi-node)."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs to train (or --max-steps)."),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps to train."),
        resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt exactly."),
        init: Optional[str] = typer.Option(
            None, "--init", help="Start from pretrained weights: a model name (movenet-thunder; pulled on first use), "
                                 "a pulled model's folder, or a posepipe checkpoint.pt. Replaces --model."),
        store: Optional[Path] = typer.Option(None, "--store", help="Store root (default: the manifest's)."),
        json_out: bool = JsonOption,
    ) -> None:
        """Train a pose model with DistributedDataParallel under torchrun, then evaluate on val.

        Flags after `--` go to the training loop unchanged, e.g. `-- --batch-size 64 --lr 2e-3 --ohkm
        --ratio 1:3 --workers 4 --seed 1` (see `python -m posepipe.training.train --help`).
        """
        import json

        from posepipe.datasets.errors import PosepipeError
        from posepipe.training.launch import LaunchConfig, run

        cfg = LaunchConfig(manifest=manifest, out=out, model=model, nproc=nproc, nnodes=nnodes,
                           rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id, epochs=epochs, max_steps=max_steps,
                           resume=resume, store=store, train_args=list(ctx.args), init=init)
        code = run(cfg)
        if code:
            raise PosepipeError(f"training failed (torchrun exit {code}); see the messages above")
        result_path = out / "train_result.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
        if json_out:
            emit_json({"out": str(out), **result})
        else:
            say(f"trained {result.get('steps', '?')} steps at {result.get('images_per_s', 0):.1f} images/s -> {out}")

    @app.command("interpolate")
    def interpolate_cmd(
        checkpoint: Path = typer.Option(..., "--checkpoint", help="checkpoint.pt of a run fine-tuned with --init."),
        init: str = typer.Option(..., "--init", help="The pretrained model it started from (name, folder or checkpoint)."),
        alpha: float = typer.Option(0.5, "--alpha", help="0: the pretrained weights, 1: the fine-tuned ones."),
        out: Path = typer.Option(..., "--out", help="The interpolated checkpoint to write (.pt)."),
        json_out: bool = JsonOption,
    ) -> None:
        """Mix fine-tuned weights with the pretrained ones they started from (WiSE-FT): keeps what fine-tuning
        gained on its data and most of what it forgot elsewhere. The result works wherever a checkpoint.pt does."""
        from posepipe.training.interpolate import write

        path = write(init, checkpoint, alpha, out)
        if json_out:
            emit_json({"out": str(path), "alpha": alpha, "init": init, "checkpoint": str(checkpoint)})
        else:
            say(f"{alpha:g} x {checkpoint} + {1 - alpha:g} x {init} -> {path}")

    @app.command("export-model")
    def export_model_cmd(
        checkpoint: Path = typer.Option(..., "--checkpoint", help="checkpoint.pt written by `posepipe train`."),
        out: Path = typer.Option(..., "--out", help="Output folder: model.fp32.onnx, model.int8.onnx, report."),
        manifest: Path = typer.Option(..., "--manifest", help="Manifest: calibration (train) and validation rows."),
        calibration: int = typer.Option(64, "--calibration", help="Crops (real and synthetic) to calibrate on."),
        calibration_method: str = typer.Option(
            "percentile", "--calibration-method", help="percentile (99.999th, clips rare outliers), minmax or entropy."),
        exclude: Optional[List[str]] = typer.Option(
            None, "--exclude-node", help="ONNX node kept in float, e.g. /final/Conv (repeatable)."),
        latency_runs: int = typer.Option(50, "--latency-runs", help="Timed runs per model."),
        threads: int = typer.Option(0, "--threads", help="ONNX Runtime threads (0: all cores)."),
        val_source: Optional[List[str]] = typer.Option(
            None, "--val-source", help="Store source to validate on when the manifest has no val rows."),
        store: Optional[Path] = typer.Option(None, "--store", help="Store root (default: the manifest's)."),
        strict: bool = typer.Option(False, "--strict", help="Exit 1 when a size, latency or AP target is missed."),
        json_out: bool = JsonOption,
    ) -> None:
        """Export ONNX FP32, check it against PyTorch, quantize to static INT8 (QDQ), and report."""
        from posepipe.training.export import ExportOptions, export_model

        opts = ExportOptions(calibration=calibration, calibration_method=calibration_method,
                             exclude_nodes=list(exclude or []), latency_runs=latency_runs,
                             threads=threads, val_sources=list(val_source) if val_source else None)
        report = export_model(checkpoint, out, manifest, store, opts, progress=RichProgress(not json_out))
        if json_out:
            emit_json(report)
        else:
            say((out / "export_report.md").read_text())
        exit_code(1 if strict and not all(report["targets"].values()) else 0)
