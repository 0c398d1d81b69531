"""Training losses: SimpleBaseline's heatmap MSE, and CenterNet's for MoveNet's four heads.

``joints_mse`` trains the heatmap models (``model.PoseNet``). ``centernet_loss`` fine-tunes a
pretrained MoveNet with the objective it was trained with (Zhou et al., "Objects as Points"):
the penalty-reduced focal loss on the joint and centre heatmaps, L1 on the joints' regression
from the centre and on their sub-cell offsets, each joint counted only where it is labelled.
"""

from __future__ import annotations

import torch

FOCAL_ALPHA, FOCAL_BETA = 2.0, 4.0
# Heads' weights in the sum: CenterNet's (heatmaps 1, offsets 1, keypoint regression 1), with
# the regression in cells, which is what the decoding compares.
WEIGHTS = {"heatmaps": 1.0, "centers": 1.0, "regression": 1.0, "offsets": 1.0}
EPS = 1e-4


def joints_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, ohkm_topk: int = 0) -> torch.Tensor:
    """SimpleBaseline's loss: per-joint MSE of weighted heatmaps (x0.5); with OHKM the top-k joints only."""
    w = weight[:, :, None, None]
    per_joint = 0.5 * ((pred * w - target * w) ** 2).flatten(2).mean(dim=2)  # (B, J)
    if ohkm_topk:
        return per_joint.topk(ohkm_topk, dim=1).values.mean()
    return per_joint.mean()


def focal(pred: torch.Tensor, target: torch.Tensor, channel_weight: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss over (B, C, H, W) probabilities, channels weighted 0/1,
    normalised by the number of positive (peak) cells."""
    p = pred.clamp(EPS, 1 - EPS)
    w = channel_weight[:, :, None, None]
    pos = (target >= 1).float() * w
    neg = (1 - pos) * w
    pos_loss = torch.log(p) * (1 - p) ** FOCAL_ALPHA * pos
    neg_loss = torch.log(1 - p) * p ** FOCAL_ALPHA * (1 - target) ** FOCAL_BETA * neg
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def _at_cells(maps: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """maps (B, C, H, W), cells (B, K) flat indices -> (B, C, K)."""
    b, c = maps.shape[:2]
    return torch.gather(maps.reshape(b, c, -1), 2, cells.unsqueeze(1).expand(b, c, cells.shape[1]))


def centernet_loss(heads: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    weight = batch["target_weight"]  # (B, 17)
    b, k = weight.shape
    n = weight.sum().clamp(min=1)
    hm = focal(heads["heatmaps"], batch["target"], weight)
    ctr = focal(heads["centers"], batch["center_target"], torch.ones(b, 1, device=weight.device))
    # Regression: every joint's (dy, dx) from the centre cell, read at that cell.
    reg = _at_cells(heads["regression"], batch["center_cell"].view(b, 1))[:, :, 0].view(b, k, 2)
    reg_loss = ((reg - batch["regression_target"]).abs().sum(dim=2) * weight).sum() / n
    # Offsets: joint j's (dy, dx) within its cell, channels (2j, 2j+1) at joint j's own cell.
    off = _at_cells(heads["offsets"], batch["joint_cell"]).view(b, k, 2, k)
    idx = torch.arange(k, device=off.device).view(1, k, 1, 1).expand(b, k, 2, 1)
    off = torch.gather(off, 3, idx)[..., 0]
    off_loss = ((off - batch["offset_target"]).abs().sum(dim=2) * weight).sum() / n
    return (WEIGHTS["heatmaps"] * hm + WEIGHTS["centers"] * ctr + WEIGHTS["regression"] * reg_loss
            + WEIGHTS["offsets"] * off_loss)
