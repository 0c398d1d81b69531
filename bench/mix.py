"""Benchmark: weights + manifest for 1,000,000 instances, and one epoch's plan for 8 ranks.

    .venv/bin/python bench/mix.py [--instances 1000000] [--ranks 8]

Targets (issue 5): each under one second. Baselines, measured side by side in this run:

* manifest: the obvious per-row implementation of the same split (``hashlib`` per image id in
  a Python loop), which the vectorised splitmix64 path replaces;
* plan: ``torch.utils.data.WeightedRandomSampler`` drawing the same number of weighted samples
  on one process (PyTorch's own tool, which keeps neither the ratio nor agreement across ranks).
"""

from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np
import pyarrow as pa

from posepipe.datasets.mix import MixConfig, manifest_from_arrays, mix_report
from posepipe.datasets.splits import assign_splits
from posepipe.datasets.store import PoseStore


def synthetic_pool(n: int, seed: int = 0):
    """n instances, about 4 per image, 1 in 4 synthetic, COCO-like visibility (v=1 ~ 10%)."""
    rng = np.random.default_rng(seed)
    n_images = max(1, n // 4)
    image_hex = np.char.mod("%016x", rng.integers(0, 2**63, size=n_images, dtype=np.int64))
    image_id = pa.array(image_hex[rng.integers(0, n_images, size=n)])
    instance_id = pa.array(np.char.mod("%016x", np.arange(n, dtype=np.int64) * 7919 + 13))
    is_synthetic = rng.random(n) < 0.25
    source = pa.array(np.where(is_synthetic, "synth/bench", np.where(rng.random(n) < 0.5, "coco-train", "coco-val")))
    joint_labelled = rng.uniform(0.3, 0.95, size=17)  # some joints are usually missing (ankles)
    labelled = rng.random((n, 17)) < joint_labelled
    occluded = rng.random((n, 17)) < 0.15
    visibility = np.where(labelled, np.where(occluded, 1, 2), 0).astype(np.int8)
    iscrowd = rng.random(n) < 0.01
    return instance_id, image_id, source, is_synthetic, visibility, iscrowd


def timed(fn, repeat: int = 3):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--ranks", type=int, default=8)
    args = parser.parse_args()
    n, world = args.instances, args.ranks
    config = MixConfig(ratio=(1, 3), seed=0)
    arrays_in = synthetic_pool(n)
    print(f"mix benchmark: {n:,} instances, {world} ranks, ratio 1:3, weights {config.weights} (best of 3)")

    t_manifest, arrays = timed(lambda: manifest_from_arrays(*arrays_in, config))
    keypoints = np.zeros((n, 17, 3), dtype=np.float32)
    keypoints[..., 2] = arrays_in[4]
    t_report, report = timed(lambda: mix_report(PoseStore("bench-store"), ["coco-train", "coco-val"], ["synth/bench"],
                                                config, pa.chunked_array([arrays_in[2]]), keypoints, arrays), repeat=1)
    t_split, _ = timed(lambda: assign_splits(arrays_in[1], 0, 0.1, 0.1))
    image_ids = arrays_in[1].to_pylist()
    t_base_split, _ = timed(lambda: [int(hashlib.sha256(f"0:{i}".encode()).hexdigest()[:16], 16) for i in image_ids],
                            repeat=1)
    print(f"  weights + splits + manifest table: {t_manifest:.3f} s  (target < 1 s)  -> {arrays.table.num_rows:,} rows")
    print(f"  of which the per-image split: {t_split:.3f} s; baseline hashlib per-row loop: {t_base_split:.3f} s  "
          f"(speed-up {t_base_split / t_split:.1f}x)")
    print(f"  full report (counts, histograms, ESS, epoch-0 plan): {t_report:.3f} s")

    import torch
    from torch.utils.data import WeightedRandomSampler

    from posepipe.datasets.sampler import MixedRatioSampler

    train = arrays.table.to_pandas()
    train = train[train["split"] == "train"].reset_index(drop=True)
    samplers = [MixedRatioSampler(train, ratio=(1, 3), num_replicas=world, rank=r, seed=0) for r in range(world)]
    t_one, plan = timed(lambda: samplers[0].plan())
    t_all, per_rank = timed(lambda: [s.rank_indices() for s in samplers])
    t_init, _ = timed(lambda: MixedRatioSampler(train, ratio=(1, 3), num_replicas=world, rank=0, seed=0))
    kinds = (train["source_kind"] == "synthetic").to_numpy()
    assert all((kinds[idx].reshape(-1, 4).sum(axis=1) == 1).all() for idx in per_rank)  # the ratio, every block
    total = sum(len(idx) for idx in per_rank)
    weights = torch.from_numpy(train["weight"].to_numpy().copy())
    t_base_plan, _ = timed(lambda: list(WeightedRandomSampler(weights, total, generator=torch.Generator().manual_seed(0))),
                           repeat=1)
    t_base_draw, _ = timed(lambda: torch.multinomial(weights, total, replacement=True,
                                                     generator=torch.Generator().manual_seed(0)))
    print(f"  sampler construction (per rank): {t_init:.3f} s  on {len(train):,} train rows")
    print(f"  one epoch plan ({plan.shape[0]:,} blocks, what each rank computes): {t_one:.3f} s  (target < 1 s)")
    print(f"  all {world} ranks' index lists, computed one after another here: {t_all:.3f} s  ({total:,} samples)")
    print(f"  baseline WeightedRandomSampler, {total:,} draws iterated: {t_base_plan:.3f} s  "
          f"(speed-up {t_base_plan / t_one:.1f}x)")
    print(f"  baseline torch.multinomial, {total:,} draws (no ratio, no ranks): {t_base_draw:.3f} s  "
          f"(speed-up {t_base_draw / t_one:.1f}x)")
    print(f"  report: ESS real {report['ess']['real']:,.0f} of {report['weights']['real']['count']:,}, "
          f"synthetic {report['ess']['synthetic']:,.0f} of {report['weights']['synthetic']['count']:,}; "
          f"epoch 0 drew {report['effective_ratio']['text']}")


if __name__ == "__main__":
    main()
