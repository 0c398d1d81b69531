"""Closest distances between capsules (segments with radii), vectorised, for interpenetration checks."""

from __future__ import annotations

import numpy as np


def segment_distances(p0: np.ndarray, p1: np.ndarray, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
    """Distances between segments p0-p1 and q0-q1, row by row ((N, 3) each -> (N,)).

    Closest points of two segments by clamped parameters (Ericson, *Real-Time Collision Detection*,
    section 5.1.9), which also handles degenerate (zero-length) segments.
    """
    return _distances(p1 - p0, q1 - q0, p0 - q0)


def _distances(d1: np.ndarray, d2: np.ndarray, r: np.ndarray) -> np.ndarray:
    """:func:`segment_distances` from the segments' directions ``d1 = p1 - p0``, ``d2 = q1 - q0``
    and ``r = p0 - q0``. This runs for every pose re-draw on ~100 pairs, where the cost is the
    number of numpy calls, not their size: hence divide(where=) and in-place clamping below."""
    n = len(r)
    a = np.einsum("ij,ij->i", d1, d1)
    e = np.einsum("ij,ij->i", d2, d2)
    f = np.einsum("ij,ij->i", d2, r)
    c = np.einsum("ij,ij->i", d1, r)
    b = np.einsum("ij,ij->i", d1, d2)
    eps = 1e-12
    p_ok = a > eps  # a zero-length segment keeps its parameter at 0 (so do parallel ones, for s)
    denom = a * e - b * b
    s = np.divide(b * f - c * e, denom, out=np.zeros(n), where=p_ok & (denom > eps))
    _clamp01(s)
    t = np.divide(b * s + f, e, out=np.zeros(n), where=e > eps)
    # t outside [0, 1]: clamp it and recompute s for the clamped t.
    outside = (t < 0) | (t > 1)
    _clamp01(t)
    s_t = np.divide(t * b - c, a, out=np.zeros(n), where=p_ok)
    s = np.where(outside, _clamp01(s_t), s)
    gap = r + d1 * s[:, None] - d2 * t[:, None]  # closest point on p0-p1 minus closest on q0-q1
    return np.sqrt(np.einsum("ij,ij->i", gap, gap))


def _clamp01(x: np.ndarray) -> np.ndarray:
    """Clamp ``x`` to [0, 1] in place (np.clip's Python wrapper costs more than the work here)."""
    np.maximum(x, 0.0, out=x)
    return np.minimum(x, 1.0, out=x)


def penetrations(segments: np.ndarray, radii: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """How deep each pair of capsules overlaps (negative: the gap), for (K, 2, 3) segments and (P, 2) pairs."""
    if len(pairs) == 0:
        return np.zeros(0)
    i, j = np.ascontiguousarray(pairs.T)  # (contiguous index arrays gather faster)
    starts = segments[:, 0]
    dirs = segments[:, 1] - starts  # once per capsule, not once per pair
    return radii[i] + radii[j] - _distances(dirs[i], dirs[j], starts[i] - starts[j])
