"""MoveNet (Google, Apache-2.0): its heads and its single-pose decoding, rewritten for batches.

MoveNet is a CenterNet-style MobileNetV2-FPN network with four stride-4 heads on a square crop:
a person-centre heatmap, per-joint regression from the centre, per-joint heatmaps and per-joint
sub-pixel offsets. The single-pose models decode one person per crop:

1. the centre heatmap, weighted by 1 / (distance to the crop centre + 1.8), picks the person;
2. the regression at that centre gives a first guess of every joint;
3. each joint's heatmap, divided by (distance to its guess + 1.8), picks the joint's cell;
4. the offset at that cell refines it; the joint's score is its heatmap value there.

The TFJS graph does the same for a batch of one with Reshape/GatherNd constants; here it is
written with ``torch.gather`` for any batch, so the exported ONNX takes batches.
"""

from __future__ import annotations

import torch
from torch import nn

from posepipe.datasets.errors import PosepipeError

from .graph import GraphNet

# MoveNet's own constant: 1.8 heatmap cells keeps the weights finite at distance 0.
DISTANCE_OFFSET = 1.8
HEADS = ("heatmaps", "centers", "regression", "offsets")


def _grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(height, dtype=torch.float32).view(1, 1, height, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width)
    return ys, xs


def _at(maps: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
    """maps (B, C, H, W), flat_index (B, K) -> (B, C, K): every channel at each of the K cells."""
    b, c = maps.shape[:2]
    flat = maps.reshape(b, c, -1)
    return torch.gather(flat, 2, flat_index.unsqueeze(1).expand(b, c, flat_index.shape[1]))


def decode_single(heatmaps, centers, regression, offsets, input_size: tuple[int, int]) -> torch.Tensor:
    """Heads (sigmoid already applied to heatmaps and centres) -> (B, 17, 3): x, y in crop pixels, score."""
    b, k, h, w = heatmaps.shape
    ys, xs = _grid(h, w)
    centre_weight = 1.0 / (torch.sqrt((ys - h / 2) ** 2 + (xs - w / 2) ** 2) + DISTANCE_OFFSET)
    centre = (centers * centre_weight).reshape(b, -1).argmax(dim=1, keepdim=True)  # (B, 1)
    cy = torch.div(centre, w, rounding_mode="floor").to(torch.float32)
    cx = (centre % w).to(torch.float32)
    guess = _at(regression, centre)[:, :, 0].reshape(b, k, 2)  # (dy, dx) per joint
    gy = (cy + guess[..., 0]).view(b, k, 1, 1)
    gx = (cx + guess[..., 1]).view(b, k, 1, 1)
    distance = torch.sqrt((ys - gy) ** 2 + (xs - gx) ** 2)
    cell = (heatmaps / (distance + DISTANCE_OFFSET)).reshape(b, k, -1).argmax(dim=2)  # (B, 17)
    ky = torch.div(cell, w, rounding_mode="floor").to(torch.float32)
    kx = (cell % w).to(torch.float32)
    # Joint j's offset is channels (2j, 2j+1) of the offset head at joint j's own cell.
    off = _at(offsets, cell).reshape(b, k, 2, k)  # (B, joint pair, yx, cell of joint)
    joint = torch.arange(k).view(1, k, 1, 1).expand(b, k, 2, 1)
    off = torch.gather(off, 3, joint)[..., 0]  # (B, 17, 2)
    score = torch.gather(heatmaps.reshape(b, k, -1), 2, cell.unsqueeze(2))[..., 0]
    in_h, in_w = input_size
    # MoveNet answers in continuous coordinates (a pixel's centre at +0.5); posepipe's crops index
    # pixels by their centre (training/transforms.py), hence the half pixel (+0.006 AP on coco-mini).
    x = (kx + off[..., 1]) / w * in_w - 0.5
    y = (ky + off[..., 0]) / h * in_h - 0.5
    return torch.stack([x, y, score], dim=2)


class Heads(nn.Module):
    """The training form: crops -> the four heads by name (``training.losses.centernet_loss``)."""

    def __init__(self, spec: dict, input_size: tuple[int, int]):
        super().__init__()
        missing = [h for h in HEADS if h not in spec.get("outputs", {})]
        if missing:
            raise PosepipeError(f"graph spec {spec.get('name', '?')!r} lacks the MoveNet head(s) {', '.join(missing)}")
        self.net = GraphNet(spec)
        self.input_size = tuple(input_size)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net.forward_all(x)


class Decoded(nn.Module):
    """A MoveNet graph and a decoding of its heads: what inference and ONNX export run."""

    def __init__(self, net: GraphNet, input_size: tuple[int, int]):
        super().__init__()
        self.net = net
        self.input_size = tuple(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.net.forward_all(x))

    def decode(self, heads: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class SinglePose(Decoded):
    """Single-pose decoding: crops (B, 3, H, W) -> keypoints (B, 17, 3)."""

    def decode(self, heads: dict[str, torch.Tensor]) -> torch.Tensor:
        return decode_single(heads["heatmaps"], heads["centers"], heads["regression"], heads["offsets"],
                             self.input_size)


MAX_PEOPLE = 6  # MultiPose's TopK


def decode_boxes(centers, box_scale, box_offset, input_size: tuple[int, int], k: int = MAX_PEOPLE) -> torch.Tensor:
    """MultiPose's person boxes: (B, K, 5) x0, y0, x1, y1 in input pixels and the centre's score.

    Centres are the local maxima of the centre heatmap (5x5, as the graph's MaxPool), the best K
    of them; each box is its centre cell + the box offset, +- half the box scale (in cells).
    """
    b, _, h, w = centers.shape
    peaks = torch.nn.functional.max_pool2d(centers, 5, stride=1, padding=2)
    kept = centers * ((centers - peaks).abs() < 1e-6).to(centers.dtype)
    score, cell = kept.reshape(b, -1).topk(k, dim=1)  # (B, K)
    cy = torch.div(cell, w, rounding_mode="floor").to(torch.float32)
    cx = (cell % w).to(torch.float32)
    size = _at(box_scale, cell).clamp(min=0)  # (B, 2, K): height, width in cells
    off = _at(box_offset, cell)  # (B, 2, K): dy, dx
    y, x = cy + off[:, 0], cx + off[:, 1]
    y0 = (y - size[:, 0] / 2).clamp(0, h)
    y1 = (y + size[:, 0] / 2).clamp(0, h)
    x0 = (x - size[:, 1] / 2).clamp(0, w)
    x1 = (x + size[:, 1] / 2).clamp(0, w)
    sy, sx = input_size[0] / h, input_size[1] / w
    return torch.stack([x0 * sx, y0 * sy, x1 * sx, y1 * sy, score], dim=2)


class PersonBoxes(Decoded):
    """MultiPose's box decoding: images (B, 3, 256, 256) -> boxes (B, 6, 5)."""

    def decode(self, heads: dict[str, torch.Tensor]) -> torch.Tensor:
        return decode_boxes(heads["centers"], heads["box_scale"], heads["box_offset"], self.input_size)
