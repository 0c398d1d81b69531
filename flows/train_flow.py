"""The ``train`` flow: torchrun in its own process group, rank 0's log streamed, then the INT8 export.

``run_torchrun`` is the plain core: it starts ``torchrun`` with ``start_new_session=True`` (so
torchrun, its ranks and their data-loader workers share one process group), streams its output
line by line, and kills the whole group when the caller stops it (``should_stop``), when
anything raises (a failure, Ctrl-C, the SIGTERM a Prefect runner sends on cancellation), or
when torchrun fails. The flow adds retries per configuration (a retry resumes from the last
checkpoint), polls the flow run's state so ``prefect flow-run cancel`` (or the UI's Cancel)
stops training within a second, and publishes ``metrics.json`` as a table artifact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from posepipe.datasets.errors import PosepipeError
from posepipe.flows import prefect_env

prefect_env.configure()

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

METRICS_ARTIFACT_KEY = "train-metrics"
EXPORT_ARTIFACT_KEY = "export-fp32-int8"


@dataclass
class TrainSpec:
    """One training configuration (params.yaml ``pipeline.train``; unknown keys are refused)."""

    model: str = "tiny"
    init: str | None = None  # pretrained start (posepipe train --init): a model name, folder or checkpoint.pt
    val_sources: list[str] = field(default_factory=list)  # held-out sources to score on (kept out of the mix)
    nproc: int = 2
    max_steps: int | None = 20
    epochs: int | None = None
    batch_size: int = 16  # per process, a multiple of the ratio's block
    ratio: str = "1:3"
    lr: float = 0.003
    seed: int = 0
    workers: int = 0  # data-loader processes per rank (0: load in the rank itself)
    threads: int | None = None  # torch threads per rank (default: cores / nproc)
    retries: int = 1  # a failed run is retried this often, resuming from its last checkpoint
    extra_args: list[str] = field(default_factory=list)  # more flags for posepipe.training.train
    export: bool = True
    calibration: int = 32  # INT8 calibration crops
    latency_runs: int = 20

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, where: str = "pipeline.train") -> "TrainSpec":
        values = dict(values or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise PosepipeError(f"{where}: {unknown[0]!r} is not a setting (known: {', '.join(sorted(known))})")
        if "epochs" in values and values["epochs"] is not None and "max_steps" not in values:
            values["max_steps"] = None
        spec = cls(**values)
        if (spec.epochs is None) == (spec.max_steps is None):
            raise PosepipeError(f"{where}: give exactly one of epochs and max_steps")
        return spec


def launch_config(spec: TrainSpec, manifest: str | Path, out: str | Path, store: str | Path | None = None,
                  resume: bool = False):
    from posepipe.training.launch import LaunchConfig

    args = ["--batch-size", str(spec.batch_size), "--ratio", spec.ratio, "--lr", str(spec.lr),
            "--seed", str(spec.seed), "--workers", str(spec.workers), *spec.extra_args]
    if spec.val_sources:
        args += ["--val-sources", *spec.val_sources]
    return LaunchConfig(manifest=Path(manifest), out=Path(out), model=spec.model, nproc=spec.nproc,
                        epochs=spec.epochs, max_steps=spec.max_steps, resume=resume,
                        store=Path(store) if store else None, threads=spec.threads, train_args=args,
                        init=spec.init or None)


def kill_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the whole process group, then SIGKILL what is left after ``grace`` seconds.

    After SIGKILL it waits up to a minute for the group to be gone: nothing can refuse that
    signal, but on a busy machine tearing down processes that hold gigabytes takes a while, and
    callers rely on no process of the group outliving this call."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 60.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and group_alive(proc.pid):
            proc.poll()
            time.sleep(0.05)
        if not group_alive(proc.pid):
            break
    proc.wait()


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is still in the group."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


def run_torchrun(cfg, log: Callable[[str], None] = print, should_stop: Callable[[], bool] = lambda: False,
                 poll: float = 0.5, on_start: Callable[[int], None] | None = None) -> int:
    """Run torchrun to the end and return its exit code; no process of its group outlives this call."""
    from posepipe.training.launch import start

    proc = start(cfg, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    if on_start:
        on_start(proc.pid)
    # Rank 0 alone writes the training log; torchrun's own lines come through the same pipe.
    reader = threading.Thread(target=_stream, args=(proc.stdout, log), daemon=True)
    reader.start()
    try:
        while proc.poll() is None:
            if should_stop():
                raise TrainingCancelled("training cancelled; every torchrun process stopped")
            time.sleep(poll)
        code = proc.returncode
    finally:
        # Reached on success too: ranks torchrun left behind (it should leave none) go with it.
        if proc.poll() is None or group_alive(proc.pid):
            kill_group(proc)
        reader.join(timeout=5)
    return code


class TrainingCancelled(Exception):
    """The flow run was cancelled while training."""


def _stream(pipe, log: Callable[[str], None]) -> None:
    for line in pipe:
        line = line.rstrip()
        if line:
            log(line)


def metrics_rows(metrics: Mapping[str, Any]) -> list[dict]:
    """metrics.json as rows for a table artifact (numbers rounded for reading)."""
    return [{"metric": k, "value": round(v, 4) if isinstance(v, float) else v} for k, v in metrics.items()]


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PosepipeError(f"{path}: training finished but wrote no {path.name}") from None


def train_model(spec: TrainSpec, manifest: str, out: str, store: str | None = None,
                log: Callable[[str], None] = print, should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Train (resuming when a checkpoint of an earlier attempt exists) and return metrics.json."""
    from posepipe.training.train import CHECKPOINT

    resume = (Path(out) / CHECKPOINT).exists()
    cfg = launch_config(spec, manifest, out, store, resume=resume)
    code = run_torchrun(cfg, log=log, should_stop=should_stop)
    if code:
        raise RuntimeError(f"training failed (torchrun exit {code}); see the log above")
    return read_json(Path(out) / "metrics.json")


def export_int8(spec: TrainSpec, manifest: str, train_out: str, out: str, store: str | None = None) -> dict:
    """ONNX FP32 and static INT8 of the trained checkpoint, with the FP32/INT8 report."""
    from posepipe.training.export import ExportOptions, export_model
    from posepipe.training.train import CHECKPOINT

    opts = ExportOptions(calibration=spec.calibration, latency_runs=spec.latency_runs, seed=spec.seed,
                         val_sources=list(spec.val_sources) or None)
    return export_model(Path(train_out) / CHECKPOINT, out, manifest, store, opts)


def export_rows(report: Mapping[str, Any]) -> list[dict]:
    return [
        {"": "file size (bytes)", "FP32": report["size_fp32"], "INT8": report["size_int8"],
         "INT8/FP32": round(report["size_ratio"], 3)},
        {"": "CPU latency (ms)", "FP32": round(report["latency_fp32_ms"], 3), "INT8": round(report["latency_int8_ms"], 3),
         "INT8/FP32": round(report["latency_ratio"], 3)},
        {"": "COCO AP", "FP32": round(report["ap_fp32"], 4), "INT8": round(report["ap_int8"], 4),
         "INT8/FP32": f"drop {report['ap_drop_points']:.2f} points"},
    ]


def _flow_run_cancelled() -> Callable[[], bool]:
    """A check that asks the API (at most once a second) whether this flow run is being cancelled."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    run_id = flow_run.id
    if not run_id:
        return lambda: False
    client = get_client(sync_client=True)
    last = {"at": 0.0, "cancelled": False}

    def check() -> bool:
        if time.monotonic() - last["at"] >= 1.0:
            last["at"] = time.monotonic()
            state = client.read_flow_run(run_id).state
            last["cancelled"] = bool(state and (state.is_cancelling() or state.is_cancelled()))
        return last["cancelled"]

    return check


def _train_task_fn(spec_dict: dict, manifest: str, out: str, store: str | None) -> dict:
    from prefect.logging import get_run_logger

    logger = get_run_logger()
    return train_model(TrainSpec(**spec_dict), manifest, out, store, log=logger.info,
                       should_stop=_flow_run_cancelled())


def _retry_unless_cancelled_or_user_error(task, task_run, state) -> bool:
    return not isinstance(state.data, (PosepipeError, TrainingCancelled))


train_task = task(_train_task_fn, name="torchrun", cache_policy=NO_CACHE,
                  retry_condition_fn=_retry_unless_cancelled_or_user_error)
export_task = task(export_int8, name="export-int8", cache_policy=NO_CACHE)


@flow(name="train")
def train(manifest: str, out: str, store: str | None = None, spec: dict | None = None,
          export: bool | None = None) -> dict:
    """Train with torchrun (retried per spec.retries) into OUT/train, publish metrics, export into OUT/export."""
    from prefect.artifacts import create_table_artifact
    from prefect.states import Cancelled

    train_spec = TrainSpec.from_mapping(spec)
    train_out = str(Path(out) / "train")
    started = time.perf_counter()
    try:
        metrics = train_task.with_options(retries=train_spec.retries, retry_delay_seconds=2)(
            asdict(train_spec), manifest, train_out, store)
    except TrainingCancelled as exc:
        return Cancelled(message=str(exc))
    create_table_artifact(metrics_rows(metrics), key=METRICS_ARTIFACT_KEY, description=f"{train_out}/metrics.json")
    result: dict[str, Any] = {"train_out": train_out, "metrics": metrics,
                              "seconds": round(time.perf_counter() - started, 2)}
    if train_spec.export if export is None else export:
        export_out = str(Path(out) / "export")
        report = export_task(train_spec, manifest, train_out, export_out, store)
        create_table_artifact(export_rows(report), key=EXPORT_ARTIFACT_KEY, description="FP32 vs INT8")
        result.update(export_out=export_out, export=report)
    return result
