"""A small convolutional graph format and the PyTorch module that runs it.

Pretrained models arrive as other frameworks' graphs (TFJS graph models for MoveNet). Rather
than carry a converter runtime, the layers posepipe needs (convolutions, depthwise
convolutions, additions, bilinear upsampling, concatenation, activations) are described by a
plain json *spec* and built here as ordinary ``nn.Conv2d`` modules, so the result trains with
the usual loop, saves as a state dict, and exports to ONNX with ``torch.onnx.export``.

A spec::

    {"format": "posepipe-graph/1",
     "input": "image",                       # the tensor the first layers read
     "input_transform": {"scale": [..3], "offset": [..3]},   # raw 0..255 RGB -> what the net expects
     "outputs": {"heatmaps": "layer name", ...},
     "layers": [{"name": ..., "op": "conv", "inputs": [...], "in_channels": .., "out_channels": ..,
                 "kernel": [kh, kw], "stride": [sh, sw], "dilation": [dh, dw], "groups": g,
                 "padding": "same" | "valid", "bias": true, "activation": null | "relu" | "relu6"},
                {"name": ..., "op": "add", "inputs": [a, b]},
                {"name": ..., "op": "resize", "inputs": [a], "scale": 2, "mode": "bilinear"},
                {"name": ..., "op": "concat", "inputs": [a, b, ...]},
                {"name": ..., "op": "sigmoid" | "relu" | "relu6", "inputs": [a]}]}

Tensors are NCHW. The module's input is posepipe's crop tensor (RGB normalised with ImageNet's
mean and std, ``training.transforms.to_input``); ``input_transform`` maps it to the pixel range
the original network was trained on, so every posepipe model takes the same input.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from posepipe.datasets.errors import PosepipeError

SPEC_FORMAT = "posepipe-graph/1"
OPS = ("conv", "add", "resize", "concat", "sigmoid", "relu", "relu6")
ACTIVATIONS = (None, "relu", "relu6")
# posepipe's crop normalisation (training/transforms.py), restated here so this module imports no
# training code: raw = x * STD + MEAN, per RGB channel, in 0..255.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def module_key(name: str) -> str:
    """A layer name as a ModuleDict key (no dots)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def check_spec(spec: dict) -> None:
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise PosepipeError(f"not a posepipe graph spec (field 'format' is not {SPEC_FORMAT})")
    known = {spec.get("input")}
    keys = set()
    for i, layer in enumerate(spec.get("layers", [])):
        op, name = layer.get("op"), layer.get("name")
        if op not in OPS:
            raise PosepipeError(f"graph spec layer {i} ({name}): unknown op {op!r}")
        missing = [t for t in layer.get("inputs", []) if t not in known]
        if missing:
            raise PosepipeError(f"graph spec layer {i} ({name}): input {missing[0]!r} is not produced before it")
        if op == "conv" and layer.get("activation") not in ACTIVATIONS:
            raise PosepipeError(f"graph spec layer {i} ({name}): unknown activation {layer.get('activation')!r}")
        key = module_key(name)
        if key in keys:
            raise PosepipeError(f"graph spec layer {i}: name {name!r} is not unique")
        keys.add(key)
        known.add(name)
    for role, tensor in spec.get("outputs", {}).items():
        if tensor not in known:
            raise PosepipeError(f"graph spec output {role!r}: no layer named {tensor!r}")


def prune(spec: dict, outputs: dict[str, str]) -> dict:
    """The spec with only the layers ``outputs`` depend on (e.g. a network cut at one head)."""
    by_name = {layer["name"]: layer for layer in spec["layers"]}
    needed, stack = set(), list(outputs.values())
    while stack:
        name = stack.pop()
        if name in needed or name not in by_name:
            continue
        needed.add(name)
        stack.extend(by_name[name]["inputs"])
    return {**spec, "outputs": dict(outputs), "layers": [l for l in spec["layers"] if l["name"] in needed]}


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding for one dimension: (before, after); the extra pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def conv_output_size(layer: dict, size: tuple[int, int]) -> tuple[int, int]:
    (kh, kw), (sh, sw), (dh, dw) = layer["kernel"], layer["stride"], layer.get("dilation", [1, 1])
    h, w = size
    if layer["padding"] == "same":
        return math.ceil(h / sh), math.ceil(w / sw)
    return (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1


def input_sizes(spec: dict, input_size: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """The spatial size of every layer's first input, for a given network input size."""
    sizes = {spec["input"]: tuple(input_size)}
    first_input = {}
    for layer in spec["layers"]:
        size = sizes[layer["inputs"][0]]
        first_input[layer["name"]] = size
        if layer["op"] == "conv":
            sizes[layer["name"]] = conv_output_size(layer, size)
        elif layer["op"] == "resize":
            sizes[layer["name"]] = (size[0] * layer["scale"], size[1] * layer["scale"])
        else:
            sizes[layer["name"]] = size
    return first_input


class GraphNet(nn.Module):
    """Runs a spec; ``forward`` returns the first output, ``forward_all`` every output by role."""

    def __init__(self, spec: dict):
        super().__init__()
        check_spec(spec)
        self.spec = spec
        self.layers = spec["layers"]
        self.output_roles = list(spec["outputs"])
        self.convs = nn.ModuleDict()
        # Stride 1 and an odd kernel pad evenly, so Conv2d's own padding gives SAME; other SAME
        # convolutions pad one more pixel after than before: fixed pads from the spec's input size
        # (so the ONNX export holds constants, not shape arithmetic), else computed per call.
        sizes = input_sizes(spec, spec["input_size"]) if spec.get("input_size") else {}
        self._pads: dict[str, tuple[int, int, int, int] | None] = {}
        for layer in self.layers:
            if layer["op"] != "conv":
                continue
            kh, kw = layer["kernel"]
            sh, sw = layer["stride"]
            dh, dw = layer.get("dilation", [1, 1])
            symmetric = layer["padding"] == "valid" or (sh == sw == 1 and kh % 2 == 1 and kw % 2 == 1)
            padding = (0, 0) if layer["padding"] == "valid" or not symmetric else ((kh - 1) // 2 * dh, (kw - 1) // 2 * dw)
            if symmetric:
                self._pads[layer["name"]] = (0, 0, 0, 0)
            elif layer["name"] in sizes:
                h, w = sizes[layer["name"]]
                self._pads[layer["name"]] = (*_same_padding(w, kw, sw, dw), *_same_padding(h, kh, sh, dh))
            else:
                self._pads[layer["name"]] = None
            self.convs[module_key(layer["name"])] = nn.Conv2d(
                layer["in_channels"], layer["out_channels"], (kh, kw), (sh, sw), padding, (dh, dw),
                groups=layer.get("groups", 1), bias=layer.get("bias", True))
        transform = spec.get("input_transform", {"scale": [1.0] * 3, "offset": [0.0] * 3})
        scale = torch.tensor(transform["scale"], dtype=torch.float32)
        offset = torch.tensor(transform["offset"], dtype=torch.float32)
        std, mean = torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
        # x (ImageNet-normalised) -> raw pixels -> the network's own input: one affine per channel.
        self.register_buffer("in_scale", (std * scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_offset", (mean * scale + offset).view(1, 3, 1, 1), persistent=False)

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.spec.get("input_size") and list(x.shape[2:]) != list(self.spec["input_size"]):
            raise PosepipeError(f"model {self.spec.get('name', '?')!r} takes {self.spec['input_size'][0]}x"
                                f"{self.spec['input_size'][1]} crops, not {x.shape[2]}x{x.shape[3]}")
        values = {self.spec["input"]: x * self.in_scale + self.in_offset}
        for layer in self.layers:
            op, name = layer["op"], layer["name"]
            args = [values[t] for t in layer["inputs"]]
            if op == "conv":
                values[name] = self._conv(layer, args[0])
            elif op == "add":
                values[name] = args[0] + args[1]
            elif op == "resize":
                values[name] = F.interpolate(args[0], scale_factor=layer["scale"], mode="bilinear",
                                             align_corners=False)
            elif op == "concat":
                values[name] = torch.cat(args, dim=1)
            elif op == "sigmoid":
                values[name] = torch.sigmoid(args[0])
            elif op == "relu":
                values[name] = F.relu(args[0])
            else:  # relu6
                values[name] = F.relu6(args[0])
        return {role: values[t] for role, t in self.spec["outputs"].items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)[self.output_roles[0]]

    def _conv(self, layer: dict, x: torch.Tensor) -> torch.Tensor:
        conv = self.convs[module_key(layer["name"])]
        pads = self._pads[layer["name"]]
        if pads is None:
            (kh, kw), (sh, sw), (dh, dw) = layer["kernel"], layer["stride"], layer.get("dilation", [1, 1])
            pads = (*_same_padding(int(x.shape[3]), kw, sw, dw), *_same_padding(int(x.shape[2]), kh, sh, dh))
        if pads != (0, 0, 0, 0):
            x = F.pad(x, pads)
        y = conv(x)
        act = layer.get("activation")
        if act == "relu":
            return F.relu(y)
        if act == "relu6":
            return F.relu6(y)
        return y
