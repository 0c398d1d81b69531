"""Per-image splits: a pure function of (image_id, seed), stable as data grows."""

from __future__ import annotations

import hashlib
import secrets

import numpy as np
import pyarrow as pa
import pytest

from posepipe.datasets import splits
from posepipe.datasets.errors import PosepipeError


def _ids(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"{int(x):016x}" for x in rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)]


def test_hex_ids_parse_exactly_and_other_ids_are_hashed():
    ids = ["00000000000000ff", "FFFFFFFFFFFFFFFF", secrets.token_hex(8), "not-an-image-id", "0123456789abcdeg", "ä" * 16]
    got = splits.ids_to_uint64(ids)
    assert got[0] == 255 and got[1] == 2**64 - 1 and got[2] == int(ids[2], 16)
    for i in (3, 4, 5):
        assert got[i] == int(hashlib.sha256(ids[i].encode()).hexdigest()[:16], 16)
    # The same id gives the same number alone, in a batch, and as a sliced Arrow array.
    arr = pa.array(["x"] + ids)
    assert (splits.ids_to_uint64(arr.slice(1)) == got).all()
    assert splits.ids_to_uint64([ids[3]])[0] == got[3]


def test_split_is_a_function_of_image_id_and_seed_and_stable_under_growth():
    old = _ids(5_000, seed=1)
    new = _ids(5_000, seed=2)
    before = splits.assign_splits(old, 7, 0.1, 0.1)
    after = splits.assign_splits(new + old, 7, 0.1, 0.1)  # more data, in another order
    assert (after[len(new):] == before).all()
    assert (splits.assign_splits(old[::-1], 7, 0.1, 0.1) == before[::-1]).all()
    assert (splits.assign_splits(old, 8, 0.1, 0.1) != before).mean() > 0.2  # the seed matters


def test_split_sizes_follow_the_fractions():
    n = 40_000
    codes = splits.assign_splits(_ids(n, seed=3), 0, 0.15, 0.05)
    share = np.bincount(codes, minlength=3) / n
    # Binomial standard deviation of a share is <= 0.0025 here; allow 4 of them.
    assert abs(share[1] - 0.15) < 0.01 and abs(share[2] - 0.05) < 0.01
    assert list(splits.split_names(np.array([0, 1, 2], dtype=np.int8))) == ["train", "val", "test"]


def test_growing_val_only_moves_train_images_into_val():
    ids = _ids(10_000, seed=4)
    small = splits.assign_splits(ids, 0, 0.1, 0.1)
    large = splits.assign_splits(ids, 0, 0.2, 0.1)
    moved = small != large
    assert moved.any()
    assert (small[moved] == 0).all() and (large[moved] == 1).all()
    assert (large[small == 2] == 2).all()


@pytest.mark.parametrize("val,test", [(-0.1, 0.1), (0.6, 0.5), (0.1, 1.0)])
def test_bad_fractions_are_user_errors(val, test):
    with pytest.raises(PosepipeError, match="fraction"):
        splits.assign_splits(["00000000000000ff"], 0, val, test)
