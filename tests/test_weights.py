"""Visibility-aware weights: the documented formula, its bounds and its parameters."""

from __future__ import annotations

import numpy as np
import pytest

from posepipe.datasets import weights
from posepipe.datasets.errors import PosepipeError

VISIBLE = np.full(17, 2, dtype=np.int8)


def _pool(n_plain: int, *extra: np.ndarray) -> np.ndarray:
    return np.vstack([np.tile(VISIBLE, (n_plain, 1)), *[e[None, :] for e in extra]])


def test_uniform_is_all_ones():
    vis = np.random.default_rng(0).integers(0, 3, size=(50, 17))
    assert (weights.compute_weights(vis, "uniform") == 1.0).all()


def test_plain_instances_weigh_one_and_occluded_or_rare_ones_more():
    occluded = VISIBLE.copy()
    occluded[[13, 14, 15, 16]] = 1  # legs occluded
    rare = VISIBLE.copy()
    rare[[0, 1, 2]] = 0  # face not labelled: rare in this pool, but nothing occluded
    vis = _pool(96, occluded, rare)
    w = weights.compute_weights(vis, "visibility", weights.WeightParams(occlusion_gain=2.0, rarity_gain=2.0, cap=10.0))
    assert (w[:96] == 1.0).all()
    assert w[96] > 1.0 and w[97] > 1.0
    # Hand computation: occluded share 4/17; both odd patterns are rarer than the 96 plain ones
    # and share the rank 96/98 (equal surprise: each differs from the pool in ways seen once).
    rarity = weights.pattern_rarity(vis)
    assert rarity[:96].max() == 0.0
    assert w[96] == pytest.approx(1 + 2.0 * 4 / 17 + 2.0 * rarity[96])
    assert w[97] == pytest.approx(1 + 2.0 * rarity[97])
    assert rarity[96] >= 96 / 98


def test_rarer_joint_states_rank_higher():
    rng = np.random.default_rng(1)
    vis = np.tile(VISIBLE, (1000, 1))
    vis[rng.random(1000) < 0.3, 15] = 1  # left ankle occluded in 30%
    vis[rng.random(1000) < 0.02, 0] = 0  # nose missing in 2%
    r = weights.pattern_rarity(vis)
    only_nose = (vis[:, 0] == 0) & (vis[:, 15] == 2)
    only_ankle = (vis[:, 0] == 2) & (vis[:, 15] == 1)
    assert r[only_nose].min() > r[only_ankle].max()


def test_cap_bounds_every_weight_and_pool_fits_frequencies():
    rng = np.random.default_rng(2)
    vis = rng.integers(0, 3, size=(2000, 17))
    params = weights.WeightParams(occlusion_gain=5.0, rarity_gain=5.0, cap=3.0)
    w = weights.compute_weights(vis, "visibility", params)
    assert w.min() >= 1.0 and w.max() == 3.0
    # Frequencies fitted on a pool where joint 0 is always visible: everyone else's state is unseen.
    pool = vis[:, 0] == 2
    r = weights.pattern_rarity(vis, pool)
    assert (r[~pool] == 1.0).all() and r[pool].max() < 1.0


def test_stats_and_effective_sample_size():
    assert weights.effective_sample_size(np.ones(40)) == pytest.approx(40.0)
    # Half the pool at weight 3: (20 + 60)^2 / (20 + 180) = 32.
    assert weights.effective_sample_size(np.r_[np.ones(20), np.full(20, 3.0)]) == pytest.approx(32.0)
    s = weights.weight_stats(np.r_[np.ones(20), np.full(20, 3.0)], cap=3.0)
    assert s["count"] == 40 and s["min"] == 1.0 and s["max"] == 3.0 and s["mean"] == 2.0 and s["at_cap"] == 20


@pytest.mark.parametrize("kwargs,field", [({"cap": 0.5}, "cap"), ({"occlusion_gain": -1}, "occlusion_gain"),
                                          ({"rarity_gain": float("nan")}, "rarity_gain")])
def test_bad_parameters_are_user_errors(kwargs, field):
    with pytest.raises(PosepipeError, match=field):
        weights.WeightParams(**kwargs)


def test_unknown_scheme_names_the_choices():
    with pytest.raises(PosepipeError, match="uniform, visibility"):
        weights.compute_weights(np.tile(VISIBLE, (2, 1)), "hardness")
