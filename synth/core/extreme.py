"""Measures of how extreme a pose is, on 2D COCO-17 keypoints of any source (real or synthetic).

All measures work on image coordinates (y down) so they apply to real annotations as they are.
Each category is decided only for instances whose needed joints are labelled (v>0); the share is
over those instances.

* ``head_below_hips``: the mean of the labelled face points is lower in the image than the hip centre.
* ``torso_horizontal``: the hip-centre -> shoulder-centre line is within 30 degrees of horizontal.
* ``deep_flexion``: a knee (hip-knee-ankle) or hip (shoulder-hip-knee) angle below 90 degrees, i.e.
  flexion past 90 degrees in the image plane.
* ``crossing_midline``: a wrist or ankle is on the other side of the torso's midline (shoulder
  centre to hip centre) than its own shoulder or hip, by more than 10% of the torso length.
"""

from __future__ import annotations

import numpy as np

from posepipe.datasets.schema import JOINT_INDEX as J

CATEGORIES = ("head_below_hips", "torso_horizontal", "deep_flexion", "crossing_midline")
FACE = [J["nose"], J["left_eye"], J["right_eye"], J["left_ear"], J["right_ear"]]
FLEXION_DEGREES = 90.0
HORIZONTAL_DEGREES = 30.0
MIDLINE_MARGIN = 0.10


def _angle(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Angle at b of a-b-c in degrees, (N, 2) each."""
    u, v = a - b, c - b
    cos = np.einsum("ij,ij->i", u, v) / np.maximum(np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1), 1e-9)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def categories(keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 17, 3) -> (flags, decidable), both (N, 4) bool, columns in :data:`CATEGORIES` order."""
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 17, 3)
    n = len(kp)
    xy, lab = kp[..., :2], kp[..., 2] > 0
    flags = np.zeros((n, 4), dtype=bool)
    ok = np.zeros((n, 4), dtype=bool)
    ls, rs, lh, rh = J["left_shoulder"], J["right_shoulder"], J["left_hip"], J["right_hip"]
    hips_ok = lab[:, lh] & lab[:, rh]
    shoulders_ok = lab[:, ls] & lab[:, rs]
    hip_c = (xy[:, lh] + xy[:, rh]) / 2
    sh_c = (xy[:, ls] + xy[:, rs]) / 2

    face_n = lab[:, FACE].sum(axis=1)
    face_y = np.where(lab[:, FACE], xy[:, FACE, 1], 0).sum(axis=1) / np.maximum(face_n, 1)
    ok[:, 0] = hips_ok & (face_n > 0)
    flags[:, 0] = ok[:, 0] & (face_y > hip_c[:, 1])

    torso = sh_c - hip_c
    torso_len = np.linalg.norm(torso, axis=1)
    ok[:, 1] = hips_ok & shoulders_ok & (torso_len > 1e-6)
    tilt = np.degrees(np.arctan2(np.abs(torso[:, 1]), np.abs(torso[:, 0])))  # 0 = horizontal
    flags[:, 1] = ok[:, 1] & (tilt < HORIZONTAL_DEGREES)

    for hip, knee, ankle, shoulder in (("left_hip", "left_knee", "left_ankle", "left_shoulder"),
                                       ("right_hip", "right_knee", "right_ankle", "right_shoulder")):
        h, k, a, s = J[hip], J[knee], J[ankle], J[shoulder]
        knee_ok = lab[:, h] & lab[:, k] & lab[:, a]
        hip_ok = lab[:, s] & lab[:, h] & lab[:, k]
        ok[:, 2] |= knee_ok | hip_ok
        flags[:, 2] |= knee_ok & (_angle(xy[:, h], xy[:, k], xy[:, a]) < FLEXION_DEGREES)
        flags[:, 2] |= hip_ok & (_angle(xy[:, s], xy[:, h], xy[:, k]) < FLEXION_DEGREES)

    axis_ok = ok[:, 1]
    unit = torso / np.maximum(torso_len, 1e-9)[:, None]
    normal = np.stack([-unit[:, 1], unit[:, 0]], axis=1)

    def side(point: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", point - hip_c, normal) / np.maximum(torso_len, 1e-9)

    for end, root in (("left_wrist", ls), ("right_wrist", rs), ("left_ankle", lh), ("right_ankle", rh)):
        e = J[end]
        usable = axis_ok & lab[:, e]
        ok[:, 3] |= usable
        root_side, end_side = side(xy[:, root]), side(xy[:, e])
        flags[:, 3] |= usable & (np.sign(root_side) != np.sign(end_side)) & (np.abs(end_side) > MIDLINE_MARGIN)
    return flags, ok


def shares(keypoints: np.ndarray) -> dict[str, dict[str, float | int]]:
    """Per category: instances flagged, instances decidable, and the share (flagged / decidable)."""
    flags, ok = categories(keypoints)
    out = {}
    for c, name in enumerate(CATEGORIES):
        n_ok, n_flag = int(ok[:, c].sum()), int(flags[:, c].sum())
        out[name] = {"flagged": n_flag, "decidable": n_ok, "share": (n_flag / n_ok) if n_ok else 0.0}
    return out
