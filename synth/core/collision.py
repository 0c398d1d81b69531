"""Closest distances between capsules (segments with radii), vectorised, for interpenetration checks."""

from __future__ import annotations

import numpy as np


def segment_distances(p0: np.ndarray, p1: np.ndarray, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
    """Distances between segments p0-p1 and q0-q1, row by row ((N, 3) each -> (N,)).

    Closest points of two segments by clamped parameters (Ericson, *Real-Time Collision Detection*,
    section 5.1.9), which also handles degenerate (zero-length) segments.
    """
    d1, d2, r = p1 - p0, q1 - q0, p0 - q0
    a = np.einsum("ij,ij->i", d1, d1)
    e = np.einsum("ij,ij->i", d2, d2)
    f = np.einsum("ij,ij->i", d2, r)
    c = np.einsum("ij,ij->i", d1, r)
    b = np.einsum("ij,ij->i", d1, d2)
    eps = 1e-12
    denom = a * e - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(denom > eps, np.clip((b * f - c * e) / np.where(denom > eps, denom, 1), 0, 1), 0.0)
        s = np.where(a <= eps, 0.0, s)
        t = np.where(e > eps, (b * s + f) / np.where(e > eps, e, 1), 0.0)
        # t outside [0, 1]: clamp it and recompute s for the clamped t.
        t_c = np.clip(t, 0, 1)
        s_c = np.where(a > eps, np.clip((t_c * b - c) / np.where(a > eps, a, 1), 0, 1), 0.0)
        s = np.where((t < 0) | (t > 1), s_c, s)
        t = t_c
    closest_p = p0 + d1 * s[:, None]
    closest_q = q0 + d2 * t[:, None]
    return np.linalg.norm(closest_p - closest_q, axis=1)


def penetrations(segments: np.ndarray, radii: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """How deep each pair of capsules overlaps (negative: the gap), for (K, 2, 3) segments and (P, 2) pairs."""
    if len(pairs) == 0:
        return np.zeros(0)
    i, j = pairs[:, 0], pairs[:, 1]
    dist = segment_distances(segments[i, 0], segments[i, 1], segments[j, 0], segments[j, 1])
    return radii[i] + radii[j] - dist
