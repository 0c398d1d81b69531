"""The epoch plan behind ``MixedRatioSampler``, in plain numpy (no torch, so reports and
benchmarks can use it too).

An epoch is a list of *blocks*; a block holds ``s`` synthetic then ``r`` real row positions for
a ratio ``s:r``. For an epoch the plan

1. seeds a generator with ``(seed, epoch)`` (numpy ``SeedSequence``, so (seed 0, epoch 1) and
   (seed 1, epoch 0) differ),
2. draws ``s * num_blocks`` synthetic and ``r * num_blocks`` real positions by weight,
3. packs them into blocks and shuffles the blocks.

Ranks take every ``world``-th block, so all ranks compute the same plan with no communication
and any batch made of whole blocks holds exactly the ratio.

Draws are with replacement by default, so instance *i* of a kind is drawn with probability
``w_i / sum(w)`` of that kind (this is what oversampling means). With ``replacement=False`` a
kind is drawn without replacement (Efraimidis-Spirakis weighted sampling) when it has enough
rows with positive weight, and with replacement otherwise; ``with_replacement`` says which.

Epoch length: by default one pass over the real rows, ``ceil(n_real / r)`` blocks
(``ceil(n_synthetic / s)`` for a synthetic-only ratio ``s:0``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import PosepipeError

KINDS: tuple[str, ...] = ("synthetic", "real")


class PlanError(PosepipeError, ValueError):
    """A bad ratio, manifest or batch size: a ValueError for library users, one line in the CLI."""


def parse_ratio(value: str | Sequence[int]) -> tuple[int, int]:
    """'1:3', (1, 3) or [1, 3] -> (synthetic, real) counts per block."""
    if isinstance(value, str):
        parts = value.replace(" ", "").split(":")
        try:
            pair = tuple(int(p) for p in parts)
        except ValueError:
            pair = ()
    else:
        try:
            pair = tuple(int(p) for p in value)
        except (TypeError, ValueError):
            pair = ()
    if len(pair) != 2 or min(pair) < 0 or sum(pair) == 0:
        raise PlanError(
            f"ratio {value!r} is not SYNTHETIC:REAL with two whole numbers >= 0, not both 0 (e.g. 1:3, 0:1)"
        )
    return pair  # type: ignore[return-value]


def format_ratio(ratio: tuple[int, int]) -> str:
    return f"{ratio[0]}:{ratio[1]}"


class MixPlan:
    """Weighted block plans over a manifest's rows (positions 0..N-1)."""

    def __init__(self, source_kind, weight, ratio=(1, 3), *, replacement: bool = True):
        self.ratio = parse_ratio(ratio)
        self.block_size = sum(self.ratio)
        self.replacement = replacement
        kinds = source_kind if isinstance(source_kind, pd.Series) else pd.Series(np.asarray(source_kind, dtype=object))
        weights = np.asarray(weight, dtype=np.float64)
        if len(kinds) != len(weights):
            raise PlanError(f"manifest: source_kind has {len(kinds)} rows but weight has {len(weights)}")
        masks = {kind: kinds.eq(kind).to_numpy(dtype=bool, na_value=False) for kind in KINDS}
        unknown = np.flatnonzero(~(masks["synthetic"] | masks["real"]))
        if len(unknown):
            raise PlanError(f"manifest: row {unknown[0]}: source_kind {kinds.iloc[unknown[0]]!r} "
                            "is not 'synthetic' or 'real'")
        bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
        if len(bad):
            raise PlanError(f"manifest: row {bad[0]}: weight {weights[bad[0]]} is not a finite number >= 0")
        self.rows = {kind: np.flatnonzero(masks[kind]) for kind in KINDS}
        self.weights = {kind: weights[self.rows[kind]] for kind in KINDS}
        self._cdf = {kind: np.cumsum(self.weights[kind]) for kind in KINDS}
        for kind, per_block in zip(KINDS, self.ratio):
            if per_block == 0:
                continue
            if len(self.rows[kind]) == 0:
                hint = " (use ratio 0:1 for a real-only mix)" if kind == "synthetic" else ""
                raise PlanError(f"ratio {format_ratio(self.ratio)} needs {kind} rows but the manifest has none{hint}")
            if self._cdf[kind][-1] <= 0:
                raise PlanError(f"ratio {format_ratio(self.ratio)} needs {kind} rows but all their weights are 0")

    def per_block(self, kind: str) -> int:
        return self.ratio[KINDS.index(kind)]

    def default_blocks(self) -> int:
        """One pass over the real rows (over the synthetic ones for a synthetic-only ratio)."""
        kind = "real" if self.ratio[1] else "synthetic"
        return math.ceil(len(self.rows[kind]) / self.per_block(kind))

    def needed(self, kind: str, num_blocks: int) -> int:
        return self.per_block(kind) * num_blocks

    def with_replacement(self, num_blocks: int) -> dict[str, bool]:
        """Per kind: whether an epoch of ``num_blocks`` draws it with replacement (can repeat rows)."""
        out = {}
        for kind in KINDS:
            need = self.needed(kind, num_blocks)
            out[kind] = need > 0 and (self.replacement or need > int((self.weights[kind] > 0).sum()))
        return out

    def blocks(self, seed: int, epoch: int, num_blocks: int) -> np.ndarray:
        """(num_blocks, block_size) int64 row positions: the whole epoch, identical on every rank."""
        rng = np.random.default_rng([int(seed) % 2**63, int(epoch) % 2**63])
        replace = self.with_replacement(num_blocks)
        parts = []
        for kind in KINDS:  # fixed order: the same draws on every rank
            if self.per_block(kind):
                drawn = self._draw(rng, kind, self.needed(kind, num_blocks), replace[kind])
                parts.append(drawn.reshape(num_blocks, self.per_block(kind)))
        plan = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        return plan[rng.permutation(num_blocks)]

    def _draw(self, rng: np.random.Generator, kind: str, count: int, replace: bool) -> np.ndarray:
        rows, weights, cdf = self.rows[kind], self.weights[kind], self._cdf[kind]
        if replace:
            # Inverse-CDF draws: row i is hit with probability w_i / sum(w); zero weights never.
            # Sorted queries make searchsorted cache-friendly (~8x faster); the shuffle after
            # restores a random order, so the draws stay i.i.d.
            targets = np.sort(rng.random(count)) * cdf[-1]
            picks = np.minimum(np.searchsorted(cdf, targets, side="right"), len(rows) - 1)
            return rows[rng.permutation(picks)]
        with np.errstate(divide="ignore"):
            keys = np.log(rng.random(len(rows))) / weights  # Efraimidis-Spirakis: top keys win
        chosen = np.argpartition(-keys, count - 1)[:count] if count < len(rows) else np.arange(len(rows))
        return rows[rng.permutation(chosen)]
