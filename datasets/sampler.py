"""``MixedRatioSampler``: weighted, ratio-exact sampling that is identical on every DDP rank.

Usage::

    sampler = MixedRatioSampler(train_df, ratio=(1, 3), num_replicas=world, rank=rank, seed=seed)
    loader = DataLoader(dataset, batch_sampler=sampler.batch_sampler(per_rank_batch_size))
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        ...

(or ``DataLoader(dataset, sampler=sampler, batch_size=b)`` after ``sampler.check_batch_size(b)``).
Indices are row positions in ``sampler.manifest`` (the train rows of the manifest, in order).
See ``mix_plan.py`` for how an epoch is drawn and how long it is.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch.distributed as dist
from torch.utils.data import BatchSampler, DistributedSampler

from .mix_plan import MixPlan, PlanError, format_ratio

REQUIRED_COLUMNS = ("source_kind", "weight")


class MixedRatioSampler(DistributedSampler):
    """Every batch made of whole blocks holds exactly ``ratio`` (synthetic:real) on every rank.

    ``manifest``: the train split as a DataFrame, or a path to ``manifest.parquet`` (its
    ``split == "train"`` rows are used). ``num_replicas``/``rank`` default to the initialised
    process group, else 1 and 0. ``num_samples``: samples per rank per epoch (a multiple of the
    block size); by default one pass over the real train rows, padded so every rank gets as many
    whole blocks. ``replacement``: see ``mix_plan``.
    """

    def __init__(
        self,
        manifest: pd.DataFrame | str | os.PathLike,
        *,
        ratio: Sequence[int] | str = (1, 3),
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        num_samples: int | None = None,
        replacement: bool = True,
    ):
        frame = _train_frame(manifest)
        num_replicas, rank = _world(num_replicas, rank)
        super().__init__(frame, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.manifest = frame
        self._plan = MixPlan(frame["source_kind"], frame["weight"].to_numpy(), ratio,
                             replacement=replacement)
        self.ratio = self._plan.ratio
        self.block_size = self._plan.block_size
        if num_samples is None:
            blocks_per_rank = -(-self._plan.default_blocks() // num_replicas)
        else:
            self.check_batch_size(num_samples, what="num_samples")
            blocks_per_rank = num_samples // self.block_size
        self.blocks_per_rank = blocks_per_rank
        self.num_blocks = blocks_per_rank * num_replicas
        self.num_samples = blocks_per_rank * self.block_size
        self.total_size = self.num_samples * num_replicas
        self.with_replacement = self._plan.with_replacement(self.num_blocks)

    def plan(self, epoch: int | None = None) -> np.ndarray:
        """The epoch's (num_blocks, block_size) row positions for all ranks (same on every rank)."""
        return self._plan.blocks(self.seed, self.epoch if epoch is None else epoch, self.num_blocks)

    def rank_indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's row positions for the epoch: its blocks, one after another."""
        return self.plan(epoch)[self.rank :: self.num_replicas].reshape(-1)

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices().tolist())

    def __len__(self) -> int:
        return self.num_samples

    def check_batch_size(self, batch_size: int, *, what: str = "batch size per rank") -> None:
        """A batch must be whole blocks, or it cannot hold the ratio exactly."""
        if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0 or batch_size % self.block_size:
            raise PlanError(
                f"{what} {batch_size} is not a positive multiple of the block size {self.block_size} "
                f"(ratio {format_ratio(self.ratio)}): use {self.block_size}, {2 * self.block_size}, "
                f"{3 * self.block_size}, ..."
            )

    def batch_sampler(self, batch_size: int, drop_last: bool = False) -> BatchSampler:
        """Batches of ``batch_size`` whole blocks, checked; pass as ``DataLoader(batch_sampler=...)``."""
        self.check_batch_size(batch_size)
        return BatchSampler(self, batch_size, drop_last)


def _train_frame(manifest) -> pd.DataFrame:
    if isinstance(manifest, pd.DataFrame):
        frame = manifest
    elif isinstance(manifest, (str, os.PathLike)):
        try:
            frame = pd.read_parquet(manifest)
        except (OSError, ValueError) as exc:
            raise PlanError(f"manifest {os.fspath(manifest)}: cannot read it as Parquet: {exc}") from None
        if "split" not in frame.columns:
            raise PlanError(f"manifest {os.fspath(manifest)}: no 'split' column to take the train rows from")
        frame = frame[frame["split"] == "train"].reset_index(drop=True)
    else:
        raise PlanError(f"manifest must be a pandas DataFrame or a Parquet path, got {type(manifest).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise PlanError(f"manifest lacks column(s) {', '.join(missing)} (needs {', '.join(REQUIRED_COLUMNS)})")
    return frame


def _world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    in_group = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if in_group else 1
    if rank is None:
        rank = dist.get_rank() if in_group else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise PlanError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
    return int(num_replicas), int(rank)
