"""Pinhole camera maths shared by the scene description, the renderer and the annotator.

Conventions: world is Blender's (Z up). A camera's 4x4 ``matrix`` maps camera to world; the camera
looks down its local -Z with +Y up (Blender's convention). Image coordinates have their origin at
the top-left corner of the top-left pixel, x right and y down (COCO's convention); Blender's own
normalised view coordinates start bottom-left, see :func:`from_blender_view`. The sensor is fitted
horizontally, so ``fx = focal_mm / sensor_mm * width`` for any aspect ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SENSOR_MM = 36.0


@dataclass(frozen=True)
class Intrinsics:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_focal(cls, focal_mm: float, width: int, height: int, sensor_mm: float = SENSOR_MM) -> "Intrinsics":
        f = focal_mm / sensor_mm * width
        return cls(f, f, width / 2.0, height / 2.0, width, height)

    def half_fov(self) -> float:
        """Half of the narrower field of view, radians: what must hold the subject."""
        return float(np.arctan(min(self.width, self.height) / 2.0 / self.fx))


def look_at(location: np.ndarray, target: np.ndarray, roll_deg: float = 0.0) -> np.ndarray:
    """Camera-to-world matrix of a camera at ``location`` looking at ``target``, rolled about its axis."""
    location = np.asarray(location, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - location
    forward /= np.linalg.norm(forward)
    up_hint = np.array([0.0, 0.0, 1.0]) if abs(forward[2]) < 0.999 else np.array([0.0, 1.0, 0.0])
    right = np.cross(forward, up_hint)
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    roll = np.radians(roll_deg)
    right, up = np.cos(roll) * right + np.sin(roll) * up, -np.sin(roll) * right + np.cos(roll) * up
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, -forward, location
    return m


def project(points: np.ndarray, cam_matrix: np.ndarray, k: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """World points (N, 3) -> image xy (N, 2), top-left origin, and depth along the view axis (N,).

    Depth is positive in front of the camera; points with depth <= 0 get NaN coordinates.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    world_to_cam = np.linalg.inv(cam_matrix)
    cam = pts @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    depth = -cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = k.cx + k.fx * cam[:, 0] / depth
        y = k.cy - k.fy * cam[:, 1] / depth  # camera +Y is up, image y is down
    xy = np.stack([x, y], axis=1)
    xy[depth <= 0] = np.nan
    return xy, depth


def in_frame(xy: np.ndarray, depth: np.ndarray, k: Intrinsics) -> np.ndarray:
    """Inside the image (half-open [0, W) x [0, H)) and in front of the camera."""
    x, y = xy[:, 0], xy[:, 1]
    with np.errstate(invalid="ignore"):
        return (depth > 0) & (x >= 0) & (x < k.width) & (y >= 0) & (y < k.height)


def from_blender_view(view_xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Blender's normalised view coordinates (0..1, origin bottom-left) -> image pixels, top-left origin."""
    v = np.asarray(view_xy, dtype=np.float64).reshape(-1, 2)
    return np.stack([v[:, 0] * width, (1.0 - v[:, 1]) * height], axis=1)


def frame_distance(radius: float, k: Intrinsics, fill: float) -> float:
    """Distance at which a sphere of ``radius`` spans ``fill`` of the narrower image side."""
    return float(radius / np.tan(k.half_fov()) / fill)
