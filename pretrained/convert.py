"""A registry entry's downloaded files -> posepipe's graph spec, weights and a check of both.

MoveNet's TFJS graph starts with its own preprocessing (int32 pixels -> x / 127.5 - 1) and ends
with its single-pose decoding; the conversion keeps the convolutional network in between and
its four heads, the preprocessing becomes the spec's ``input_transform`` and the decoding is
``movenet.decode_single``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posepipe.datasets.errors import PosepipeError

from . import tfjs, tfjs_convert
from .registry import ModelEntry

_P = "StatefulPartitionedCall/"
MOVENET_START = _P + "sub_1"
# The heads each recipe keeps, by role: single-pose models all four; MultiPose serves posepipe as a
# person detector, so its centre and box heads (its own keypoints are weaker than a top-down pass).
HEADS = {
    "single-pose": {
        "heatmaps": _P + "Sigmoid",
        "centers": _P + "Sigmoid_1",
        "regression": _P + "kpt_regress_0/conv2d_6/BiasAdd",
        "offsets": _P + "kpt_offset_0/conv2d_7/BiasAdd",
    },
    "person-boxes": {
        "centers": _P + "Sigmoid",
        "box_scale": _P + "box_scale_0/conv2d_5/BiasAdd",
        "box_offset": _P + "box_offset_0/conv2d_6/BiasAdd",
    },
}
MOVENET_RENAMES = {
    _P + "center_net_mobile_net_v2fpn_feature_extractor/model_1/model/": "",
    _P + "center_net_mobile_net_v2fpn_feature_extractor/model_1/": "fpn/",
    _P: "",
}
# x / 127.5 - 1 on 0..255 RGB, as the graph's own first nodes do.
MOVENET_INPUT = {"scale": [1 / 127.5] * 3, "offset": [-1.0] * 3}
# Fingerprint: head values at seeded positions of a seeded noise image, plus the head's mean and max.
FINGERPRINT_POSITIONS = {"heatmaps": (12, 1), "centers": (4, 2)}
FINGERPRINT_ATOL, FINGERPRINT_RTOL = 2e-5, 2e-3


@dataclass
class Converted:
    spec: dict
    state: dict[str, np.ndarray]


def convert(entry: ModelEntry, folder: Path) -> Converted:
    model_json = folder / Path(entry.files[0]).name
    graph = tfjs.load(model_json)
    size = _signature_size(graph)
    if size != tuple(entry.input_size):
        raise PosepipeError(f"{model_json}: input is {size[0]}x{size[1]}, the registry expects "
                            f"{entry.input_size[0]}x{entry.input_size[1]}")
    spec, state = tfjs_convert.convert(graph, MOVENET_START, HEADS[entry.task], MOVENET_INPUT, size, MOVENET_RENAMES)
    spec["name"] = entry.name
    spec["input_size"] = list(size)
    return Converted(spec, state)


def _signature_size(graph: tfjs.GraphModel) -> tuple[int, int]:
    try:
        (spec,) = graph.signature["inputs"].values()
        dims = [int(d["size"]) for d in spec["tensorShape"]["dim"]]
        return dims[1], dims[2]
    except (KeyError, ValueError, TypeError):
        raise PosepipeError(f"{graph.path}: no single NHWC image input in its signature") from None


def check_input(input_size: tuple[int, int]) -> np.ndarray:
    """The seeded noise image the fingerprints were taken on, (H, W, 3) uint8."""
    h, w = input_size
    return np.random.default_rng(0).integers(0, 256, (1, h, w, 3))[0].astype(np.uint8)


def fingerprint(heads: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """Values of each head (C, H, W, one image) at seeded positions, then its mean and max."""
    out = {}
    for head, (count, seed) in FINGERPRINT_POSITIONS.items():
        if head not in heads:
            continue
        t = np.asarray(heads[head], dtype=np.float32)
        rng = np.random.default_rng(seed)
        positions = [tuple(int(rng.integers(0, s)) for s in t.shape) for _ in range(count)]
        out[head] = [float(t[p]) for p in positions] + [float(t.mean()), float(t.max())]
    return out


def check_fingerprint(entry: ModelEntry, found: dict[str, list[float]]) -> float:
    """Largest difference to the registry's values; raises when any is out of tolerance."""
    worst = 0.0
    for head, expected in entry.fingerprint.items():
        got = np.asarray(found[head], dtype=np.float64)
        want = np.asarray(expected, dtype=np.float64)
        diff = np.abs(got - want)
        worst = max(worst, float(diff.max()))
        bad = diff > FINGERPRINT_ATOL + FINGERPRINT_RTOL * np.abs(want)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise PosepipeError(f"{entry.name}: converted model fails its known-output check: head {head!r} "
                                f"value {i} is {got[i]:.6f}, expected {want[i]:.6f}")
    return worst
