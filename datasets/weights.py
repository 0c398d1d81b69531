"""Per-instance sampling weights from keypoint visibility flags.

Schemes (``SCHEMES``):

``uniform``
    every instance weighs 1.

``visibility`` (default)
    hard instances weigh more. For instance *i* with visibility flags ``v[i, j]`` (COCO: 0 not
    labelled, 1 occluded, 2 visible)::

        w_i = min(cap, 1 + occlusion_gain * o_i + rarity_gain * q_i)

    * ``o_i`` is the share of its labelled joints that are occluded (v=1), in [0, 1];
    * ``q_i`` is how rare its visibility pattern is, in [0, 1]: the pattern's surprise
      ``sum_j -ln p_j(v[i, j])`` (``p_j(s)``: share of the pool whose joint *j* has state *s*)
      ranked against the pool, i.e. the share of pool instances whose pattern is more common.
      A fully visible person in a pool of fully visible people scores 0; a person whose ankles
      are occluded where almost nobody's are scores near 1.

    Weights lie in [1, cap]: the plainest instance weighs 1 and none weighs more than ``cap``
    times it, so no instance dominates an epoch. Frequencies ``p_j`` are fitted on the pool
    (the training rows of one source kind) and applied to every row given.

Weights are relative: a sampler draws instance *i* with probability ``w_i / sum(w)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import schema
from .errors import PosepipeError

SCHEMES: tuple[str, ...] = ("uniform", "visibility")
DEFAULT_SCHEME = "visibility"


@dataclass(frozen=True)
class WeightParams:
    occlusion_gain: float = 2.0
    rarity_gain: float = 2.0
    cap: float = 4.0

    def __post_init__(self) -> None:
        for name in ("occlusion_gain", "rarity_gain"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise PosepipeError(f"mix: weights.{name} must be a finite number >= 0, got {value}")
        if not np.isfinite(self.cap) or self.cap < 1:
            raise PosepipeError(f"mix: weights.cap must be a finite number >= 1, got {self.cap}")

    def to_dict(self) -> dict:
        return asdict(self)


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise PosepipeError(f"mix: unknown weight scheme {scheme!r} (choices: {', '.join(SCHEMES)})")
    return scheme


def visibility_flags(keypoints: np.ndarray) -> np.ndarray:
    """(N, 17, 3) keypoints -> (N, 17) int8 visibility states, clipped to 0..2."""
    return np.clip(keypoints[..., 2], 0, 2).astype(np.int8)


def compute_weights(
    visibility: np.ndarray,
    scheme: str = DEFAULT_SCHEME,
    params: WeightParams | None = None,
    *,
    pool: np.ndarray | None = None,
) -> np.ndarray:
    """Weights (float64, shape (N,)) for (N, 17) visibility states; ``pool`` masks the rows to fit on."""
    check_scheme(scheme)
    params = params or WeightParams()
    visibility = np.asarray(visibility)
    n = len(visibility)
    if scheme == "uniform" or n == 0:
        return np.ones(n, dtype=np.float64)
    occluded = occluded_share(visibility)
    rarity = pattern_rarity(visibility, pool)
    raw = 1.0 + params.occlusion_gain * occluded + params.rarity_gain * rarity
    return np.minimum(raw, params.cap)


def occluded_share(visibility: np.ndarray) -> np.ndarray:
    labelled = (visibility > 0).sum(axis=1)
    occluded = (visibility == schema.VISIBILITY_OCCLUDED).sum(axis=1)
    return occluded / np.maximum(labelled, 1)


def pattern_rarity(visibility: np.ndarray, pool: np.ndarray | None = None) -> np.ndarray:
    """Rank of each pattern's surprise among the pool's, in [0, 1] (0: the most common)."""
    n, joints = visibility.shape
    fit = visibility if pool is None else visibility[np.asarray(pool, dtype=bool)]
    if len(fit) == 0:
        return np.zeros(n, dtype=np.float64)
    # p[j, s]: share of the pool whose joint j has state s (one bincount over joint*3+state).
    cells = np.arange(joints, dtype=np.int64) * 3
    counts = np.bincount((fit.astype(np.int64) + cells).reshape(-1), minlength=joints * 3)
    with np.errstate(divide="ignore"):
        surprise_of = -np.log(counts / len(fit)).reshape(joints, 3)  # never seen in the pool: infinite
    # Summed joint by joint (a gather from a 3-entry table per joint): equal patterns get
    # bit-identical sums, so ties rank together.
    by_joint = np.ascontiguousarray(visibility.T)
    surprise = np.zeros(n, dtype=np.float64)
    for j in range(joints):
        surprise += np.take(surprise_of[j], by_joint[j])
    # Rank = share of the pool strictly less surprising; queries go in sorted order (cache-friendly).
    order = np.argsort(surprise)
    in_order = surprise[order]
    fitted = in_order if pool is None else np.sort(surprise[np.asarray(pool, dtype=bool)])
    rank = np.empty(n, dtype=np.float64)
    rank[order] = np.searchsorted(fitted, in_order, side="left") / len(fitted)
    return rank


def weight_stats(weights: np.ndarray, cap: float | None = None) -> dict:
    """Summary of a weight vector: min, max, mean, quantiles, effective sample size."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0:
        return {"count": 0}
    q = np.quantile(w, [0.5, 0.9, 0.99])
    out = {
        "count": int(len(w)),
        "min": float(w.min()),
        "max": float(w.max()),
        "mean": float(w.mean()),
        "p50": float(q[0]),
        "p90": float(q[1]),
        "p99": float(q[2]),
        "ess": effective_sample_size(w),
        "ess_fraction": effective_sample_size(w) / len(w),
    }
    if cap is not None:
        out["at_cap"] = int((w >= cap).sum())
    return out


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's ESS, (sum w)^2 / sum w^2: how many equally weighted draws the weighted pool is worth."""
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum()
    return float(total * total / (w * w).sum()) if total > 0 else 0.0
