"""Gaussian heatmap targets and their decoding (argmax plus the quarter-pixel offset).

Coordinates here are in heatmap pixels; ``transforms`` maps between image, crop and heatmap.
"""

from __future__ import annotations

import numpy as np


def gaussian_targets(
    joints: np.ndarray, size: tuple[int, int], sigma: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """(17, 3) joints (x, y, v) in heatmap pixels -> (17, H, W) float32 targets and (17,) weights.

    A joint weighs 1 when labelled (v > 0) and its Gaussian reaches the heatmap; 0 otherwise, so
    unlabelled or cropped-out joints teach the network nothing (as in SimpleBaseline/MMPose).
    """
    h, w = size
    n = len(joints)
    targets = np.zeros((n, h, w), dtype=np.float32)
    weights = (joints[:, 2] > 0).astype(np.float32)
    radius = 3 * sigma
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)
    for j in range(n):
        if weights[j] == 0:
            continue
        # Rounded centre, as the reference implementations do, so the peak is exactly 1.
        mx, my = int(joints[j, 0] + 0.5), int(joints[j, 1] + 0.5)
        if mx - radius >= w or my - radius >= h or mx + radius < 0 or my + radius < 0:
            weights[j] = 0
            continue
        gx = np.exp(-((xs - mx) ** 2) / (2 * sigma**2))
        gy = np.exp(-((ys - my) ** 2) / (2 * sigma**2))
        g = np.outer(gy, gx)
        g[g < np.exp(-(radius**2) / (2 * sigma**2))] = 0  # the usual 3-sigma window
        targets[j] = g
    return targets, weights


def decode(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 17, H, W) -> coordinates (N, 17, 2) in heatmap pixels and peak values (N, 17).

    Argmax, then a quarter pixel towards the higher neighbour (SimpleBaseline's sub-pixel step).
    """
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    idx = flat.argmax(axis=2)
    maxvals = np.take_along_axis(flat, idx[..., None], axis=2)[..., 0]
    px = (idx % w).astype(np.int64)
    py = (idx // w).astype(np.int64)
    coords = np.stack([px, py], axis=-1).astype(np.float32)
    ni, ki = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")
    inner_x = (px > 0) & (px < w - 1)
    inner_y = (py > 0) & (py < h - 1)
    dx = heatmaps[ni, ki, py, np.clip(px + 1, 0, w - 1)] - heatmaps[ni, ki, py, np.clip(px - 1, 0, w - 1)]
    dy = heatmaps[ni, ki, np.clip(py + 1, 0, h - 1), px] - heatmaps[ni, ki, np.clip(py - 1, 0, h - 1), px]
    coords[..., 0] += np.where(inner_x, np.sign(dx) * 0.25, 0)
    coords[..., 1] += np.where(inner_y, np.sign(dy) * 0.25, 0)
    coords[maxvals <= 0] = 0
    return coords, maxvals.astype(np.float32)


def flip_heatmaps(heatmaps: np.ndarray, flip_index: tuple[int, ...]) -> np.ndarray:
    """Heatmaps of a horizontally flipped input, brought back to the unflipped frame."""
    return heatmaps[:, list(flip_index), :, ::-1]


# ----- single-person CenterNet targets (MoveNet's four heads) --------------------------------
# Heatmap cells are indexed by their centre: crop pixel p (index) lies at cell u = (p + 0.5) / stride
# - 0.5, and cell k holds u in [k - 0.5, k + 0.5). MoveNet decodes cell k + offset as the continuous
# position (k + offset) * stride, so the offset target is u + 0.5 - k.

MOVENET_SIGMA = 1.2  # cells: the width of Thunder's own peaks, measured on coco-mini val (1.16)
CENTER_SIGMA = 2.0


def centernet_targets(joints: np.ndarray, input_size: tuple[int, int], stride: int,
                      sigma: float = MOVENET_SIGMA, center_sigma: float = CENTER_SIGMA) -> dict[str, np.ndarray]:
    """(17, 3) joints (x, y, v) in crop pixels -> targets for the heatmap, centre, regression and
    offset heads of the person the crop is centred on (top-down: the one in the middle).

    ``joint_weight`` is 1 for a labelled joint inside the heatmap, else 0: unlabelled joints
    teach nothing, neither where they are nor that they are absent.
    """
    h, w = input_size[0] // stride, input_size[1] // stride
    u = (joints[:, :2].astype(np.float64) + 0.5) / stride - 0.5  # (17, 2) x, y in cells
    cells = np.rint(u).astype(np.int64)
    inside = (cells[:, 0] >= 0) & (cells[:, 0] < w) & (cells[:, 1] >= 0) & (cells[:, 1] < h)
    weight = ((joints[:, 2] > 0) & inside).astype(np.float32)
    cells = np.where(inside[:, None], cells, 0)
    # Peaks at whole cells (exactly 1 there, the focal loss's positives); the offsets carry the rest.
    targets, _ = gaussian_targets(np.concatenate([cells.astype(np.float32), weight[:, None]], axis=1), (h, w), sigma)
    # MoveNet's person centre is the mean of the person's joints, not its box centre (measured on
    # coco-mini: Thunder's centre head peaks 1.6 cells from the joints' mean, 4.7 from the box's);
    # the crop centre when no joint is labelled.
    if weight.any():
        center_u = u[weight > 0].mean(axis=0)
    else:
        center_u = (np.array([input_size[1] * 0.5, input_size[0] * 0.5]) + 0.5) / stride - 0.5
    center_cell = np.clip(np.rint(center_u).astype(np.int64), 0, [w - 1, h - 1])
    center, _ = gaussian_targets(np.array([[center_cell[0], center_cell[1], 2]], dtype=np.float32), (h, w), center_sigma)
    return {
        "target": targets * weight[:, None, None],
        "target_weight": weight,
        "center_target": center,
        "center_cell": np.int64(center_cell[1] * w + center_cell[0]),
        "regression_target": (u - center_cell)[:, ::-1].astype(np.float32).copy(),  # (dy, dx) per joint
        "joint_cell": (cells[:, 1] * w + cells[:, 0]).astype(np.int64),
        "offset_target": (u + 0.5 - cells)[:, ::-1].astype(np.float32).copy(),  # (dy, dx), in [0, 1)
    }
