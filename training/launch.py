"""Builds and runs the torchrun command for ``posepipe train``.

One machine: ``torchrun --standalone``, whose rendezvous binds port 0, so the OS picks a free
port and two runs on one machine never collide. Several machines: ``--nnodes`` and
``--rdzv-endpoint`` go to torchrun's own c10d rendezvous unchanged (run the same command on
every node). Each process gets ``cores / processes`` threads so ranks do not fight over cores.

Inputs are checked here, before any process starts, so a bad manifest is one line, not a
traceback from every rank.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from posepipe.datasets.errors import PosepipeError


@dataclass
class LaunchConfig:
    manifest: Path
    out: Path
    model: str = "tiny"
    nproc: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    rdzv_id: str = "posepipe"
    epochs: int | None = None
    max_steps: int | None = None
    resume: bool = False
    store: Path | None = None
    train_args: list[str] = field(default_factory=list)  # more flags for training.train, as given
    threads: int | None = None
    init: str | None = None  # pretrained start: a model name (pulled here first), folder or checkpoint.pt
    env: dict[str, str] = field(default_factory=dict)  # set for torchrun and its ranks, e.g. CUDA_VISIBLE_DEVICES


def threads_per_process(nproc: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, nproc))


def preflight(cfg: LaunchConfig) -> None:
    """Fail before launching: the manifest, its store, the model name and the step budget."""
    from posepipe.training.data import load_manifest
    from posepipe.training.model import get_config

    if cfg.init:
        prepare_init(cfg.init)
    else:
        get_config(cfg.model)
    if (cfg.epochs is None) == (cfg.max_steps is None):
        raise PosepipeError("give exactly one of --epochs and --max-steps")
    if (cfg.epochs or cfg.max_steps or 0) < 1:
        raise PosepipeError("--epochs / --max-steps must be at least 1")
    if cfg.nproc < 1 or cfg.nnodes < 1:
        raise PosepipeError("--nproc and --nnodes must be at least 1")
    if cfg.nnodes > 1 and not cfg.rdzv_endpoint:
        raise PosepipeError("--nnodes above 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
    manifest = load_manifest(cfg.manifest, cfg.store)
    if not (manifest.rows["split"] == "train").any():
        raise PosepipeError(f"{cfg.manifest}/manifest.parquet: no rows with split 'train'")


def prepare_init(init: str) -> None:
    """A named model is pulled here, once, before any rank starts (ranks only read the cache)."""
    from posepipe.pretrained import registry
    from posepipe.pretrained.cache import ModelCache

    if init in registry.MODELS:
        from posepipe.pretrained.pull import pull

        manifest = pull(init, ModelCache())
        if manifest["status"] == "pulled":
            sys.stderr.write(f"pulled {init} into {manifest['path']} (first use)\n")
    elif not Path(init).exists():
        raise PosepipeError(f"--init {init}: no such model name ({', '.join(registry.MODELS)}), folder or checkpoint")


def command(cfg: LaunchConfig) -> list[str]:
    """The argument list (never a shell string): torchrun's flags, then the training module's."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(cfg.nproc), "--max-restarts", "0"]
    if cfg.nnodes == 1 and not cfg.rdzv_endpoint:
        cmd.append("--standalone")
    else:
        cmd += ["--nnodes", str(cfg.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", cfg.rdzv_endpoint,
                "--rdzv-id", cfg.rdzv_id]
    cmd += ["-m", "posepipe.training.train", "--manifest", str(cfg.manifest), "--out", str(cfg.out),
            "--threads", str(cfg.threads or threads_per_process(cfg.nproc))]
    cmd += ["--init", str(cfg.init)] if cfg.init else ["--model", cfg.model]
    if cfg.store is not None:
        cmd += ["--store", str(cfg.store)]
    cmd += ["--epochs", str(cfg.epochs)] if cfg.epochs is not None else ["--max-steps", str(cfg.max_steps)]
    if cfg.resume:
        cmd.append("--resume")
    return cmd + list(cfg.train_args)


def environment(cfg: LaunchConfig) -> dict[str, str]:
    env = dict(os.environ)
    threads = str(cfg.threads or threads_per_process(cfg.nproc))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
    env.update(cfg.env)
    return env


def start(cfg: LaunchConfig, **popen_kwargs) -> subprocess.Popen:
    """Start torchrun in its own process group (so a caller can stop every rank at once)."""
    preflight(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(command(cfg), env=environment(cfg), start_new_session=True, **popen_kwargs)


def run(cfg: LaunchConfig) -> int:
    """Run to the end; torchrun's exit code (0 when every rank succeeded)."""
    proc = start(cfg)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
