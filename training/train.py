"""The DDP training loop, one process per rank, started by torchrun (see ``launch.py``).

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m posepipe.training.train \
        --manifest runs/mix --out runs/train --model tiny --epochs 3

Each rank reads the manifest, draws its share of every epoch from ``MixedRatioSampler`` and
trains a replica of the model; gradients are averaged by DistributedDataParallel (gloo on CPU,
NCCL on GPU). Rank 0 alone logs and writes: ``train_log.jsonl`` (loss per step, PCK per epoch),
``checkpoint.pt`` after every epoch (written atomically) and, at the end, the COCO evaluation
(``val_gt.json``, ``predictions.json``, ``metrics.json``).

Resuming loads ``checkpoint.pt`` (``weights_only=True``) and continues with the next epoch with
the model, optimizer, scheduler, sampler epoch and every rank's RNG states as they were, so an
interrupted run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from posepipe.datasets import atomic
from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.progress import NoProgress, Progress
from posepipe.datasets.store import PoseStore

from . import evaluate
from posepipe.datasets.instance_dataset import load_instances

from .data import PoseDataset, load_manifest
from .losses import centernet_loss, joints_mse
from .model import ModelConfig, build_model, get_config, inference_module
from .transforms import AUGMENT_PRESETS

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"
CURVE = "train_curve.json"  # the step losses as one json list, for `dvc plots`
CHECKPOINT_FORMAT = "posepipe-checkpoint/1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m posepipe.training.train", description=__doc__.split("\n")[0])
    p.add_argument("--manifest", required=True, type=Path, help="manifest folder (posepipe mix)")
    p.add_argument("--store", type=Path, default=None, help="store root (default: the one report.json names)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--model", default="tiny", help="tiny, base, tiny-up or base-up (from scratch); ignored with --init")
    p.add_argument("--init", default=None,
                   help="start from these weights: a pulled model's name or folder (movenet-thunder), or a checkpoint.pt")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=32, help="per rank; a multiple of the ratio's block")
    p.add_argument("--ratio", default="1:3", help="synthetic:real per block of the mixed sampler")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="steps over which the rate ramps up linearly (default: 10%% of the steps, at most 100, "
                        "with --init; 0 from scratch)")
    p.add_argument("--schedule", default="epochs", choices=("epochs", "steps"),
                   help="where the rate drops 10x (at 90/140 and 120/140): of the epochs (SimpleBaseline), or of "
                        "--max-steps, so runs over manifests of different sizes follow the same schedule step for step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="data-loader processes per rank")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--ohkm", action="store_true", help="online hard keypoint mining (top 8 joints)")
    p.add_argument("--augment", default="default", choices=sorted(AUGMENT_PRESETS),
                   help="augmentation preset: default (HRNet's), light (small sets, few steps), none (sanity checks)")
    p.add_argument("--val-sources", nargs="*", default=None,
                   help="store sources to validate on (held out from the mix), instead of the manifest's real val rows")
    p.add_argument("--pck-instances", type=int, default=64, help="val people for the per-epoch PCK check")
    p.add_argument("--no-eval", action="store_true", help="skip the final COCO evaluation")
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--dist-timeout", type=float, default=1800.0, help="seconds a collective may wait")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    if (args.epochs is None) == (args.max_steps is None):
        p.error("give exactly one of --epochs and --max-steps")
    return args


# ----- pieces -------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader workers get distinct seeds derived from the rank's torch seed (itself per rank)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def train_step(model, optimizer, batch: dict, device, ohkm_topk: int = 0, lr_scale: float = 1.0) -> torch.Tensor:
    """One optimizer step on a batch from ``PoseDataset``; returns the (detached) loss.

    Heatmap models (one tensor out) train with SimpleBaseline's MSE; MoveNet models (their heads
    by name out) with CenterNet's loss. The DDP loop and the single-process overfit tests
    (tests/test_train_overfit.py) share it, so the tests check the step that real runs take.
    """
    images = batch["image"].to(device, non_blocking=True)
    out = model(images)
    if isinstance(out, dict):
        targets = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k not in ("image", "center", "scale")}
        loss = centernet_loss(out, targets)
    else:
        target = batch["target"].to(device, non_blocking=True)
        weight = batch["target_weight"].to(device, non_blocking=True)
        loss = joints_mse(out, target, weight, ohkm_topk)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if lr_scale != 1.0:  # warm-up: this step at a share of the scheduled rate
        scheduled = [g["lr"] for g in optimizer.param_groups]
        for g in optimizer.param_groups:
            g["lr"] *= lr_scale
        optimizer.step()
        for g, lr in zip(optimizer.param_groups, scheduled):
            g["lr"] = lr
    else:
        optimizer.step()
    return loss.detach()


def rng_state() -> dict:
    """This process's RNG states in types ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file: say which, in one line
        raise PosepipeError(f"{path}: not a loadable posepipe checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise PosepipeError(f"{path}: not a posepipe checkpoint (field 'format' is not {CHECKPOINT_FORMAT})")
    return ckpt


def save_checkpoint(path: Path, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic.write_bytes(path, buf.getvalue())


class RankLog:
    """Rank 0 appends one json line per event; other ranks write nothing."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines an interrupted run wrote after the checkpoint it resumes from."""
        if not self.enabled or not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        atomic.write_text(self.path, "".join(line + "\n" for line in keep))

    def write(self, **event) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(event) + "\n")


# ----- the loop -----------------------------------------------------------------------------

def train(args: argparse.Namespace, progress: Progress | None = None) -> dict | None:
    from posepipe.datasets.sampler import MixedRatioSampler

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=args.dist_timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    main = rank == 0
    progress = progress if (main and progress is not None) else NoProgress()
    try:
        return _train(args, rank, world, device, main, progress, MixedRatioSampler)
    finally:
        dist.destroy_process_group()


def _train(args, rank, world, device, main, progress, sampler_cls):
    seed_everything(args.seed + rank)
    out = Path(args.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(args.manifest, args.store)
    store = PoseStore(manifest.store_root)
    train_rows = manifest.split("train")
    ckpt = load_checkpoint(out / CHECKPOINT) if args.resume and (out / CHECKPOINT).exists() else None
    init_state = None
    if ckpt is not None:
        config = ModelConfig.from_dict(ckpt["config"])
    elif args.init:
        from .init import resolve

        config, init_state = resolve(args.init)
    else:
        config = get_config(args.model)

    dataset = PoseDataset(store, load_instances(store, train_rows["instance_id"]), config.input_size,
                          train=True, seed=args.seed, augment=AUGMENT_PRESETS[args.augment],
                          targets="centernet" if config.arch == "movenet" else "heatmaps")
    sampler = sampler_cls(train_rows, ratio=args.ratio, num_replicas=world, rank=rank, seed=args.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler.batch_sampler(args.batch_size), num_workers=args.workers,
        worker_init_fn=seed_worker, pin_memory=device.type == "cuda",
    )
    steps_per_epoch = len(loader)
    epochs = args.epochs if args.epochs is not None else math.ceil(args.max_steps / steps_per_epoch)
    total_steps = args.max_steps if args.max_steps is not None else epochs * steps_per_epoch
    # Adam's first steps move every weight by about the full rate whatever the gradient: from
    # pretrained weights that costs accuracy at once (coco-mini: 2 steps at 2e-5, -2 AP), so
    # fine-tuning ramps the rate up over its first steps (10%, at most 100) unless told otherwise.
    warmup = args.warmup_steps if args.warmup_steps is not None else (min(100, total_steps // 10) if config.init else 0)

    model = build_model(config)
    if init_state is not None:
        try:
            model.load_state_dict(init_state)
        except RuntimeError as exc:
            raise PosepipeError(f"--init {args.init}: its weights do not fit model {config.name!r} ({str(exc).splitlines()[0]})") from None
    model = model.to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    # SimpleBaseline drops the learning rate 10x at 90/140 and 120/140 of training.
    per_step = args.schedule == "steps"
    length = total_steps if per_step else epochs
    milestones = sorted({max(1, round(length * 90 / 140)), max(1, round(length * 120 / 140))})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)

    log = RankLog(out / LOG, main)
    start_epoch, step = 0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, step = int(ckpt["sampler_epoch"]), int(ckpt["step"])
        if len(ckpt["rng"]) == world:
            set_rng_state(ckpt["rng"][rank])
        log.truncate_after(step)
        log.write(event="resume", epoch=start_epoch, step=step, world_size=world)
    else:
        if main and (out / LOG).exists():
            (out / LOG).unlink()
        log.write(event="start", model=config.name, init=config.init, world_size=world, epochs=epochs, steps_per_epoch=steps_per_epoch,
                  batch_size=args.batch_size, ratio=args.ratio, seed=args.seed, backend=dist.get_backend(),
                  augment=args.augment, lr=args.lr, warmup_steps=warmup, schedule=args.schedule,
                  lr_milestones=milestones)

    val = _validation(store, manifest, args) if main else None
    ohkm = 8 if args.ohkm else 0
    loop_seconds = 0.0  # time in the batch loops only: per-epoch PCK and checkpoints are not throughput
    seen = 0
    for epoch in range(start_epoch, epochs):
        if step >= total_steps:
            break
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        ddp.train()
        epoch_loss, batches = torch.zeros((), dtype=torch.float64), 0
        epoch_started = time.perf_counter()
        for batch in progress.track(loader, steps_per_epoch, f"epoch {epoch + 1}/{epochs}"):
            loss = train_step(ddp, optimizer, batch, device, ohkm, min(1.0, (step + 1) / warmup) if warmup else 1.0)
            step += 1
            if per_step:
                scheduler.step()
            seen += len(batch["image"]) * world
            mean_loss = loss.clone()
            dist.all_reduce(mean_loss)
            mean_loss = float(mean_loss) / world
            epoch_loss += mean_loss
            batches += 1
            if step % args.log_every == 0 or step == total_steps:
                log.write(event="step", epoch=epoch, step=step, loss=mean_loss, lr=optimizer.param_groups[0]["lr"])
            if step >= total_steps:
                break
        loop_seconds += time.perf_counter() - epoch_started
        if not per_step:
            scheduler.step()
        quick = _quick_pck(model, store, val, config, args.pck_instances) if main else None
        states = [None] * world
        dist.all_gather_object(states, rng_state())
        if main:
            save_checkpoint(out / CHECKPOINT, {
                "format": CHECKPOINT_FORMAT, "config": config.to_dict(), "epoch": epoch + 1,
                "sampler_epoch": epoch + 1, "step": step, "world_size": world,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": states,
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            })
            log.write(event="epoch", epoch=epoch, step=step, loss=float(epoch_loss) / max(batches, 1), pck=quick)
            sys.stderr.write(f"epoch {epoch + 1}/{epochs}: step {step}, loss {float(epoch_loss) / max(batches, 1):.6f}, "
                             f"PCK@{evaluate.PCK_THRESHOLD} {quick:.3f}\n")
        dist.barrier()
    result = None
    if main:
        result = {"steps": step, "images": seen, "train_seconds": loop_seconds,
                  "images_per_s": seen / max(loop_seconds, 1e-9)}
        if not args.no_eval:
            metrics = evaluate.evaluate(evaluate.torch_predictor(inference_module(model.cpu())), store, val,
                                        config.input_size, out, progress=progress)
            result["metrics"] = metrics
            sys.stderr.write(f"COCO keypoint AP {metrics['AP']:.4f} (AP50 {metrics['AP50']:.4f}, "
                             f"AR {metrics['AR']:.4f}) on {metrics['num_instances']} people -> {out}/metrics.json\n")
        log.write(event="end", step=step, **{k: v for k, v in result.items() if k != "metrics"})
        events = [json.loads(line) for line in (out / LOG).read_text().splitlines() if line]
        curve = [{k: e[k] for k in ("step", "epoch", "loss", "lr")} for e in events if e.get("event") == "step"]
        atomic.write_text(out / CURVE, json.dumps(curve, indent=1))
        atomic.write_text(out / "train_result.json", json.dumps(result, indent=2))
    dist.barrier()
    return result


def _validation(store: PoseStore, manifest, args) -> evaluate.ValidationSet:
    """Named sources when given (a held-out set such as coco-val), else the manifest's real val rows."""
    if args.val_sources:
        return evaluate.validation_set(store, sources=args.val_sources)
    rows = manifest.split("val")
    rows = rows[rows["source_kind"] == "real"]
    if len(rows):
        return evaluate.validation_set(store, rows["instance_id"])
    raise PosepipeError(f"{manifest.folder}: the manifest has no real 'val' rows; pass --val-sources")


def _quick_pck(model, store, val, config, limit: int) -> float:
    """PCK on the first ``limit`` validation people: a cheap signal between epochs."""
    from dataclasses import replace

    ins = val.instances
    head = replace(ins, **{f: getattr(ins, f)[:limit] for f in ins.__dataclass_fields__})
    dataset = PoseDataset(store, head, config.input_size, train=False)
    keypoints, _ = evaluate.predict(evaluate.torch_predictor(inference_module(model)), dataset, flip_test=False)
    model.train()
    return evaluate.pck(keypoints, head.keypoints, head.bbox)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    progress = None
    if int(os.environ.get("RANK", 0)) == 0 and sys.stderr.isatty():
        from posepipe.flows.cli_common import RichProgress  # the entry point draws; the loop only calls track

        progress = RichProgress()
    try:
        train(args, progress)
    except PosepipeError as exc:
        sys.stderr.write(f"posepipe: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
