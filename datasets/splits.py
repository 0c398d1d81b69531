"""Stable per-image train/val/test assignment.

The split of an image is a pure function of its ``image_id`` and the split seed: the id is
mixed with the seed (splitmix64) into a number ``u`` in [0, 1), and

    u < test_fraction                       -> test
    u < test_fraction + val_fraction        -> val
    otherwise                               -> train

So adding data never moves an image that was already assigned, every instance of an image lands
in the same split, and growing ``val_fraction`` only moves images from train to val.
Image ids in the store are 16 hex digits (the start of the content sha256) and are used as
they are; any other id is hashed with sha256 first.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import PosepipeError

SPLITS: tuple[str, ...] = ("train", "val", "test")
_ID_HEX_DIGITS = 16
# ASCII byte -> nibble value; 255 marks a byte that is not a hex digit.
_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise PosepipeError(f"mix: {name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise PosepipeError(
            f"mix: val_fraction + test_fraction must leave room for train, got {val_fraction} + {test_fraction}"
        )


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective, well-mixing map of uint64 (wraps by design)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def ids_to_uint64(image_ids: Iterable[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Image ids -> uint64, vectorised for the store's 16-hex-digit ids."""
    arr = _as_string_array(image_ids)
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    if arr.null_count:
        raise PosepipeError("mix: an instance has no image_id; every instance needs one to be split")
    lengths = pc.binary_length(arr).to_numpy(zero_copy_only=False)
    out = np.zeros(n, dtype=np.uint64)
    fast = lengths == _ID_HEX_DIGITS
    if fast.any():
        fixed = arr if fast.all() else arr.filter(pa.array(fast))
        nibbles = _HEX[_fixed_width_bytes(fixed).reshape(-1, _ID_HEX_DIGITS)]
        hex_ok = (nibbles != 255).all(axis=1)
        # Two nibbles per byte, then the 8 bytes read as one big-endian integer.
        packed = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
        values = np.ascontiguousarray(packed).view(">u8").reshape(-1).astype(np.uint64)
        where = np.flatnonzero(fast)
        out[where[hex_ok]] = values[hex_ok]
        fast[where[~hex_ok]] = False
    for i in np.flatnonzero(~fast):  # ids not from the store: hash them (slow path, rare)
        digest = hashlib.sha256(arr[int(i)].as_py().encode("utf-8")).hexdigest()
        out[i] = np.uint64(int(digest[:_ID_HEX_DIGITS], 16))
    return out


def split_uniform(image_ids, seed: int) -> np.ndarray:
    """Per image, a number in [0, 1) fixed by (image_id, seed); ids may be given as ``ids_to_uint64`` output."""
    if not (isinstance(image_ids, np.ndarray) and image_ids.dtype == np.uint64):
        image_ids = ids_to_uint64(image_ids)
    mixed = splitmix64(image_ids ^ splitmix64(np.uint64(seed % 2**64)))
    return (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def assign_splits(image_ids, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """Split code per id: 0 train, 1 val, 2 test (index into ``SPLITS``)."""
    check_fractions(val_fraction, test_fraction)
    u = split_uniform(image_ids, seed)
    codes = np.zeros(len(u), dtype=np.int8)
    codes[u < test_fraction + val_fraction] = 1
    codes[u < test_fraction] = 2
    return codes


def split_names(codes: np.ndarray) -> np.ndarray:
    return np.array(SPLITS, dtype=object)[codes]


def _as_string_array(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if not isinstance(values, pa.Array):
        values = pa.array(list(values) if not isinstance(values, np.ndarray) else values, type=pa.string())
    if pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    if not pa.types.is_string(values.type):
        raise PosepipeError(f"mix: image ids must be strings, got {values.type}")
    return values


def _fixed_width_bytes(arr: pa.Array) -> np.ndarray:
    """The character bytes of a string array whose values all have the same length, without copies per row."""
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)
    return data[offsets[0] : offsets[-1]]
