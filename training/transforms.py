"""Top-down crops and augmentation, as in SimpleBaseline/HRNet/MMPose.

The geometric part (box to crop with 1.25 padding, random scale and rotation, half-body crops,
horizontal flip that swaps left and right joints) is done here with numpy and cv2, because
albumentations 2.0.8 flips keypoints without swapping their labels. Albumentations does the
pixel-level changes only (colour, blur, noise), which do not move joints.

Every random draw comes from a ``numpy.random.Generator`` the caller seeds per sample, so the
same seed, epoch and sample give the same bytes whichever process or worker draws them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from posepipe.datasets.schema import FLIP_INDEX

PADDING = 1.25
UPPER_BODY = tuple(range(11))  # nose .. wrists
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255  # ImageNet, RGB
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255


@dataclass(frozen=True)
class AugmentConfig:
    scale_factor: float = 0.35
    rotation_factor: float = 45.0  # degrees
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8
    pixel_prob: float = 0.5  # chance of each albumentations pixel transform


# ``--augment`` presets. "default" is HRNet's recipe, which generalises best given many steps; "light"
# fits a small set in a few hundred steps (measured on coco-mini: train PCK 0.70 vs 0.50 after 600
# steps, the same val PCK); "none" is for sanity checks (the crop is the evaluation crop).
AUGMENT_PRESETS = {
    "default": AugmentConfig(),
    "light": AugmentConfig(scale_factor=0.25, rotation_factor=30.0, rotation_prob=0.4, half_body_prob=0.0,
                           pixel_prob=0.3),
    "none": AugmentConfig(scale_factor=0.0, rotation_prob=0.0, flip_prob=0.0, half_body_prob=0.0, pixel_prob=0.0),
}


@dataclass
class Crop:
    image: np.ndarray  # (H, W, 3) uint8 RGB at the network's input size
    joints: np.ndarray  # (17, 3) x, y in crop pixels, v unchanged
    center: np.ndarray  # (2,) box centre in image pixels
    scale: np.ndarray  # (2,) width, height of the image region the crop covers
    rotation: float
    flipped: bool


def box_to_center_scale(bbox, aspect_ratio: float, padding: float = PADDING) -> tuple[np.ndarray, np.ndarray]:
    """COCO box (x, y, w, h) -> centre and region size with the network's aspect ratio (w / h), padded."""
    x, y, w, h = (float(v) for v in bbox)
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, np.array([w, h], dtype=np.float32) * padding


def crop_matrix(center, scale, rotation: float, output_size: tuple[int, int]) -> np.ndarray:
    """2x3 affine matrix from image pixels to crop pixels: centre to the crop's centre, region to the crop."""
    out_h, out_w = output_size
    s = out_w / float(scale[0])
    a = np.deg2rad(rotation)
    cos, sin = np.cos(a) * s, np.sin(a) * s
    # Rotate and scale about the box centre, then move the centre to the middle of the crop.
    m = np.array([[cos, sin, 0.0], [-sin, cos, 0.0]], dtype=np.float64)
    m[:, 2] = np.array([out_w * 0.5, out_h * 0.5]) - m[:, :2] @ np.asarray(center, dtype=np.float64)
    return m


def invert(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(matrix)


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(..., 2) points through a 2x3 matrix."""
    pts = np.asarray(points, dtype=np.float64)
    return (pts @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def flip_joints(joints: np.ndarray, width: int) -> np.ndarray:
    """Mirror (17, 3) joints in a crop ``width`` pixels wide: x -> width-1-x, left and right swapped."""
    out = joints[list(FLIP_INDEX)].copy()
    out[:, 0] = width - 1 - out[:, 0]
    return out


def half_body_box(joints: np.ndarray, aspect_ratio: float, rng: np.random.Generator):
    """Centre and region of the upper or lower body's labelled joints (HRNet's half-body crop)."""
    labelled = np.flatnonzero(joints[:, 2] > 0)
    upper = [j for j in labelled if j in UPPER_BODY]
    lower = [j for j in labelled if j not in UPPER_BODY]
    chosen = upper if (rng.random() < 0.5 and len(upper) > 2) or len(lower) < 2 else lower
    if len(chosen) < 2:
        return None
    pts = joints[chosen, :2]
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    center, scale = box_to_center_scale((x0, y0, x1 - x0, y1 - y0), aspect_ratio, padding=1.5)
    return center, scale


def top_down_crop(
    image: np.ndarray,
    keypoints: np.ndarray,
    bbox,
    input_size: tuple[int, int],
    rng: np.random.Generator | None = None,
    augment: AugmentConfig | None = None,
) -> Crop:
    """Crop one person; with ``rng`` and ``augment`` the crop is randomly scaled, rotated and flipped."""
    out_h, out_w = input_size
    aspect = out_w / out_h
    center, scale = box_to_center_scale(bbox, aspect)
    rotation, flipped = 0.0, False
    if rng is not None and augment is not None:
        if (keypoints[:, 2] > 0).sum() > augment.half_body_min_joints and rng.random() < augment.half_body_prob:
            half = half_body_box(keypoints, aspect, rng)
            if half is not None:
                center, scale = half
        sf, rf = augment.scale_factor, augment.rotation_factor
        scale = scale * float(np.clip(rng.normal() * sf + 1, 1 - sf, 1 + sf))
        rotation = float(np.clip(rng.normal() * rf, -2 * rf, 2 * rf)) if rng.random() < augment.rotation_prob else 0.0
        flipped = bool(rng.random() < augment.flip_prob)
    m = crop_matrix(center, scale, rotation, input_size)
    crop = cv2.warpAffine(image, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    joints = keypoints.astype(np.float32).copy()
    joints[:, :2] = apply_affine(keypoints[:, :2], m)
    if flipped:
        crop = np.ascontiguousarray(crop[:, ::-1])
        joints = flip_joints(joints, out_w)
    return Crop(crop, joints, center, scale, rotation, flipped)


class PixelAugment:
    """Colour, blur and noise from albumentations; they never move a joint, so no label handling."""

    def __init__(self, prob: float = 0.5):
        import albumentations as A

        self.compose = A.Compose(
            [
                A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=prob),
                A.GaussianBlur(blur_limit=(3, 5), p=prob * 0.3),
                A.GaussNoise(std_range=(0.02, 0.08), p=prob * 0.3),
            ],
            seed=0,
        )

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        self.compose.set_random_seed(seed)
        return self.compose(image=image)["image"]


def to_input(crop: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 normalised as the network (and its ONNX export) expect."""
    return np.ascontiguousarray(((crop.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1))
