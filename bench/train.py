"""Training throughput (images/s) with 1 and 2 torchrun processes, side by side, and their ratio.

    .venv/bin/python bench/train.py [--model tiny|base] [--steps 30] [--batch-size 16]

Both runs train the same model on coco-mini for the same number of steps with the same per-rank
batch, in this one invocation; images/s counts images of every rank over the training loop
(start-up and evaluation excluded). On a GPU machine each process takes one GPU (NCCL), so the
figure per process is images/s per GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_setup import coco_mini_manifest  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()

    import torch

    from posepipe.training.launch import LaunchConfig, run

    with tempfile.TemporaryDirectory() as tmp:
        manifest = coco_mini_manifest(Path(tmp))
        results = {}
        for nproc in (1, 2):
            out = Path(tmp) / f"run{nproc}"
            cfg = LaunchConfig(manifest=manifest, out=out, model=args.model, nproc=nproc, max_steps=args.steps,
                               train_args=["--batch-size", str(args.batch_size), "--ratio", "0:1", "--no-eval",
                                           "--workers", str(args.workers), "--log-every", "1000"])
            if run(cfg) != 0:
                sys.exit(f"torchrun with {nproc} process(es) failed")
            results[nproc] = json.loads((out / "train_result.json").read_text())
    device = f"{torch.cuda.device_count()} GPU(s)" if torch.cuda.is_available() else "CPU"
    print(f"\ntraining throughput, model {args.model}, {args.steps} steps, batch {args.batch_size} per process, {device}")
    print(f"{'processes':>10} {'images/s':>10} {'per process':>12}")
    for nproc, r in results.items():
        print(f"{nproc:>10} {r['images_per_s']:>10.1f} {r['images_per_s'] / nproc:>12.1f}")
    print(f"ratio 2 / 1 processes: {results[2]['images_per_s'] / results[1]['images_per_s']:.2f}x")


if __name__ == "__main__":
    main()
