"""TFJS graph nodes -> a posepipe graph spec and its weights (``graph.py``), without TensorFlow.

Only the convolutional part of a network is converted: the layers between a start tensor (the
network's input after its own preprocessing) and the named output tensors (its heads). A
model's decoding (arg-max, gathers, ...) is rewritten for batches in ``movenet.py`` instead.

TensorFlow's NHWC layouts become PyTorch's NCHW here: Conv2D filters [kh, kw, in, out] ->
[out, in, kh, kw]; depthwise filters [kh, kw, in, multiplier] -> [in * multiplier, 1, kh, kw]
(output channel c * multiplier + m, as both frameworks order them); concatenation on axis 3 ->
axis 1.
"""

from __future__ import annotations

import numpy as np

from posepipe.datasets.errors import PosepipeError

from .graph import SPEC_FORMAT, check_spec, conv_output_size, module_key
from .tfjs import GraphModel, Node

CONV_OPS = {"Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"}
ADD_OPS = {"Add", "AddV2"}
ACTIVATION_OPS = {"Relu": "relu", "Relu6": "relu6", "Sigmoid": "sigmoid"}


def convert(model: GraphModel, start: str, outputs: dict[str, str], input_transform: dict,
            input_size: tuple[int, int], renames: dict[str, str] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(spec, state dict of float32 arrays) for the layers from ``start`` to ``outputs``.

    ``outputs`` maps a role ("heatmaps", "center", ...) to a TFJS node name; ``renames`` shortens
    node names (prefix -> replacement) so layer names stay readable.
    """
    renames = renames or {}

    def short(name: str) -> str:
        for prefix, replacement in renames.items():
            if name.startswith(prefix):
                return replacement + name[len(prefix):]
        return name

    if start not in model.nodes:
        raise PosepipeError(f"{model.path}: no node {start!r} to start the conversion from")
    for role, name in outputs.items():
        if name not in model.nodes:
            raise PosepipeError(f"{model.path}: no node {name!r} for output {role!r}")
    needed = _between(model, start, outputs.values())
    layers, state = [], {}
    for node in model.nodes.values():  # file order is topological
        if node.name not in needed or node.name == start:
            continue
        layer, weights = _layer(model, node, short)
        layers.append(layer)
        for suffix, array in weights.items():
            state[f"convs.{module_key(layer['name'])}.{suffix}"] = array
    spec = {"format": SPEC_FORMAT, "input": short(start), "input_transform": input_transform,
            "outputs": {role: short(name) for role, name in outputs.items()}, "layers": layers}
    _resize_scales(spec, input_size)
    check_spec(spec)
    return spec, state


def _between(model: GraphModel, start: str, outputs) -> set[str]:
    """Nodes on a path from ``start`` to any output (constants excluded)."""
    needed, stack = set(), list(outputs)
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        node = model.nodes[name]
        if node.op == "Const":
            continue
        needed.add(name)
        if name == start:
            continue
        inputs = [i for i in node.inputs if model.nodes[i.split(":")[0]].op != "Const"]
        if node.op == "ResizeBilinear":
            inputs = inputs[:1]  # the size input is shape arithmetic (or a constant), not data
        if not inputs:
            raise PosepipeError(f"{model.path}: node {name!r} ({node.op}) does not depend on {start!r}")
        stack.extend(i.split(":")[0] for i in inputs)
    return needed


def _const(model: GraphModel, node: Node, index: int) -> np.ndarray:
    name = node.inputs[index]
    if name not in model.weights:
        raise PosepipeError(f"{model.path}: node {node.name!r} ({node.op}): input {index} ({name!r}) is not a constant")
    return model.weights[name]


def _layer(model: GraphModel, node: Node, short) -> tuple[dict, dict[str, np.ndarray]]:
    data = [short(i) for i in node.inputs if i in model.nodes and model.nodes[i].op != "Const"]
    name = short(node.name)
    if node.op in CONV_OPS:
        return _conv(model, node, name, data[0])
    if node.op in ADD_OPS:
        if len(data) != 2:
            raise PosepipeError(f"{model.path}: node {node.name!r}: only tensor + tensor additions are supported")
        return {"name": name, "op": "add", "inputs": data}, {}
    if node.op in ACTIVATION_OPS:
        return {"name": name, "op": ACTIVATION_OPS[node.op], "inputs": data}, {}
    if node.op == "ResizeBilinear":
        if node.flag("align_corners") or not node.flag("half_pixel_centers"):
            raise PosepipeError(f"{model.path}: node {node.name!r}: only half-pixel-centre bilinear resizing is supported")
        data = data[:1]
        size_ref = node.inputs[1]
        if size_ref in model.weights:
            return {"name": name, "op": "resize", "inputs": data, "size": [int(v) for v in model.weights[size_ref]],
                    "mode": "bilinear"}, {}
        # Keras' UpSampling2D on a dynamic shape: size = shape[1:3] * factor, the factor a constant.
        mul = model.nodes.get(size_ref.split(":")[0])
        factors = [model.weights[i] for i in (mul.inputs if mul is not None and mul.op == "Mul" else []) if i in model.weights]
        if len(factors) != 1 or len(set(int(v) for v in np.ravel(factors[0]))) != 1:
            raise PosepipeError(f"{model.path}: node {node.name!r}: cannot find a fixed scale factor for its size")
        return {"name": name, "op": "resize", "inputs": data, "scale": int(np.ravel(factors[0])[0]), "mode": "bilinear"}, {}
    if node.op == "ConcatV2":
        axis = int(np.ravel(_const(model, node, len(node.inputs) - 1))[0])
        if axis not in (3, -1):
            raise PosepipeError(f"{model.path}: node {node.name!r}: only channel concatenation is supported")
        return {"name": name, "op": "concat", "inputs": data}, {}
    raise PosepipeError(f"{model.path}: node {node.name!r}: op {node.op} is not supported by posepipe's converter")


def _conv(model: GraphModel, node: Node, name: str, source: str) -> tuple[dict, dict[str, np.ndarray]]:
    if node.string("data_format", "NHWC") != "NHWC":
        raise PosepipeError(f"{model.path}: node {node.name!r}: only NHWC convolutions are supported")
    padding = node.string("padding", "VALID")
    if padding not in ("SAME", "VALID"):
        raise PosepipeError(f"{model.path}: node {node.name!r}: padding {padding} is not supported")
    strides, dilations = node.ints("strides") or [1, 1, 1, 1], node.ints("dilations") or [1, 1, 1, 1]
    fused = node.strings("fused_ops")
    unknown = [f for f in fused if f not in ("BiasAdd", "Relu", "Relu6")]
    if unknown:
        raise PosepipeError(f"{model.path}: node {node.name!r}: fused op {unknown[0]} is not supported")
    kernel = _const(model, node, 1).astype(np.float32)
    kh, kw = kernel.shape[:2]
    depthwise = "Depthwise" in node.op
    if depthwise:
        cin, mult = kernel.shape[2], kernel.shape[3]
        weight = kernel.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
        groups, cout = cin, cin * mult
    else:
        cin, cout = kernel.shape[2], kernel.shape[3]
        weight = kernel.transpose(3, 2, 0, 1)
        groups = 1
    weights = {"weight": np.ascontiguousarray(weight)}
    if "BiasAdd" in fused:
        weights["bias"] = np.ascontiguousarray(_const(model, node, 2).astype(np.float32).reshape(cout))
    activation = "relu6" if "Relu6" in fused else "relu" if "Relu" in fused else None
    layer = {"name": name, "op": "conv", "inputs": [source], "in_channels": int(cin), "out_channels": int(cout),
             "kernel": [int(kh), int(kw)], "stride": [strides[1], strides[2]],
             "dilation": [dilations[1], dilations[2]], "groups": int(groups), "padding": padding.lower(),
             "bias": "bias" in weights, "activation": activation}
    return layer, weights


def _resize_scales(spec: dict, input_size: tuple[int, int]) -> None:
    """TFJS resizes name an output size; the spec keeps the factor, found by following sizes."""
    sizes = {spec["input"]: tuple(input_size)}
    for layer in spec["layers"]:
        h, w = sizes[layer["inputs"][0]]
        if layer["op"] == "conv":
            sizes[layer["name"]] = conv_output_size(layer, (h, w))
        elif layer["op"] == "resize" and "scale" in layer:
            sizes[layer["name"]] = (h * layer["scale"], w * layer["scale"])
        elif layer["op"] == "resize":
            th, tw = layer.pop("size")
            if th % h or tw % w or th // h != tw // w:
                raise PosepipeError(f"resize layer {layer['name']!r}: {h}x{w} -> {th}x{tw} is not a whole scale factor")
            layer["scale"] = th // h
            sizes[layer["name"]] = (th, tw)
        else:
            sizes[layer["name"]] = (h, w)
