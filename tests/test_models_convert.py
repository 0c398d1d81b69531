"""The TFJS -> PyTorch converter against TensorFlow's semantics, written out in numpy here.

A small graph model is built by hand (model.json + a weight shard, weights stored as float32,
float16 and affine uint8 the way tfjs-converter writes them) with every op the converter takes:
strided SAME convolution (TensorFlow pads one more pixel after than before), depthwise
convolution, 1x1 VALID convolution, half-pixel bilinear upsampling, addition, channel
concatenation, fused BiasAdd/Relu/Relu6 and Sigmoid. The converted module must give what a
plain NHWC numpy implementation of the same graph gives.
"""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest
import torch

from posepipe.datasets.errors import PosepipeError
from posepipe.pretrained import graph, tfjs, tfjs_convert
from posepipe.training.transforms import to_input


def _s(text: str) -> dict:
    return {"s": base64.b64encode(text.encode()).decode()}


def _conv_attr(stride: int, padding: str, fused: list[str]) -> dict:
    return {"strides": {"list": {"i": ["1", str(stride), str(stride), "1"]}}, "padding": _s(padding),
            "data_format": _s("NHWC"), "dilations": {"list": {"i": ["1", "1", "1", "1"]}},
            "fused_ops": {"list": {"s": [base64.b64encode(f.encode()).decode() for f in fused]}}}


def make_model(folder, rng):
    w = {
        "c1/w": rng.normal(size=(3, 3, 3, 4)).astype(np.float32), "c1/b": rng.normal(size=4).astype(np.float32),
        "d1/w": rng.normal(size=(3, 3, 4, 1)).astype(np.float32), "d1/b": rng.normal(size=4).astype(np.float32),
        "p1/w": rng.normal(size=(1, 1, 4, 6)).astype(np.float32),
        "c2/w": rng.normal(size=(1, 1, 3, 6)).astype(np.float32), "c2/b": rng.normal(size=6).astype(np.float32),
    }
    # Storage as tfjs-converter writes it: c1/w float16, d1/w affine uint8, the rest float32.
    w["c1/w"] = w["c1/w"].astype(np.float16).astype(np.float32)
    q = rng.integers(0, 256, size=w["d1/w"].shape).astype(np.uint8)
    scale, low = np.float32(0.01), np.float32(-1.2)
    w["d1/w"] = q.astype(np.float32) * scale + low
    consts = {"up/size": np.array([8, 8], dtype=np.int32), "cat/axis": np.array(3, dtype=np.int32)}
    specs, blobs = [], []
    for name, arr in list(w.items()) + list(consts.items()):
        spec = {"name": name, "shape": list(arr.shape), "dtype": "int32" if arr.dtype == np.int32 else "float32"}
        if name == "c1/w":
            spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            blobs.append(arr.astype(np.float16).tobytes())
        elif name == "d1/w":
            spec["quantization"] = {"dtype": "uint8", "scale": float(scale), "min": float(low), "original_dtype": "float32"}
            blobs.append(q.tobytes())
        else:
            blobs.append(arr.tobytes())
        specs.append(spec)
    nodes = [{"name": "x", "op": "Placeholder", "attr": {}}]
    nodes += [{"name": n, "op": "Const", "attr": {}} for n in list(w) + list(consts)]
    nodes += [
        {"name": "c1", "op": "_FusedConv2D", "input": ["x", "c1/w", "c1/b"], "attr": _conv_attr(2, "SAME", ["BiasAdd", "Relu6"])},
        {"name": "d1", "op": "FusedDepthwiseConv2dNative", "input": ["c1", "d1/w", "d1/b"],
         "attr": _conv_attr(1, "SAME", ["BiasAdd", "Relu"])},
        {"name": "p1", "op": "Conv2D", "input": ["d1", "p1/w"], "attr": _conv_attr(1, "VALID", [])},
        {"name": "up", "op": "ResizeBilinear", "input": ["p1", "up/size"],
         "attr": {"half_pixel_centers": {"b": True}, "align_corners": {"b": False}}},
        {"name": "c2", "op": "_FusedConv2D", "input": ["x", "c2/w", "c2/b"], "attr": _conv_attr(1, "VALID", ["BiasAdd"])},
        {"name": "add", "op": "AddV2", "input": ["up", "c2"], "attr": {}},
        {"name": "cat", "op": "ConcatV2", "input": ["add", "c2", "cat/axis"], "attr": {}},
        {"name": "sig", "op": "Sigmoid", "input": ["cat"], "attr": {}},
    ]
    doc = {"format": "graph-model", "modelTopology": {"node": nodes},
           "weightsManifest": [{"paths": ["w.bin"], "weights": specs}],
           "signature": {"inputs": {"x:0": {"tensorShape": {"dim": [{"size": "1"}, {"size": "8"}, {"size": "8"}, {"size": "3"}]}}}}}
    (folder / "model.json").write_text(json.dumps(doc))
    (folder / "w.bin").write_bytes(b"".join(blobs))
    return w


# ----- TensorFlow's semantics in numpy (NHWC, one image) ------------------------------------

def np_conv(x, k, stride, padding, depthwise=False):
    h, w, _ = x.shape
    kh, kw = k.shape[:2]
    if padding == "SAME":
        oh, ow = math.ceil(h / stride), math.ceil(w / stride)
        ph = max((oh - 1) * stride + kh - h, 0)
        pw = max((ow - 1) * stride + kw - w, 0)
        x = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = np.zeros((oh, ow, k.shape[2] if depthwise else k.shape[3]), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = x[i * stride:i * stride + kh, j * stride:j * stride + kw]
            if depthwise:
                out[i, j] = (patch * k[..., 0]).sum(axis=(0, 1))
            else:
                out[i, j] = np.tensordot(patch, k, axes=([0, 1, 2], [0, 1, 2]))
    return out


def np_resize_half_pixel(x, oh, ow):
    h, w, _ = x.shape

    def coords(out, size):
        src = (np.arange(out) + 0.5) * (size / out) - 0.5
        lo = np.floor(src).astype(int)
        frac = src - lo
        return np.clip(lo, 0, size - 1), np.clip(lo + 1, 0, size - 1), np.where(src < 0, 0.0, frac)

    y0, y1, fy = coords(oh, h)
    x0, x1, fx = coords(ow, w)
    top = x[y0][:, x0] * (1 - fx)[None, :, None] + x[y0][:, x1] * fx[None, :, None]
    bottom = x[y1][:, x0] * (1 - fx)[None, :, None] + x[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def np_graph(x, w):
    c1 = np.clip(np_conv(x, w["c1/w"], 2, "SAME") + w["c1/b"], 0, 6)
    d1 = np.maximum(np_conv(c1, w["d1/w"], 1, "SAME", depthwise=True) + w["d1/b"], 0)
    p1 = np_conv(d1, w["p1/w"], 1, "VALID")
    up = np_resize_half_pixel(p1, 8, 8)
    c2 = np_conv(x, w["c2/w"], 1, "VALID") + w["c2/b"]
    cat = np.concatenate([up + c2, c2], axis=2)
    return 1 / (1 + np.exp(-cat))


def test_converted_graph_computes_what_tensorflow_would(tmp_path):
    rng = np.random.default_rng(3)
    weights = make_model(tmp_path, rng)
    model = tfjs.load(tmp_path / "model.json")
    # The stored weights decode to the values written (float16 and uint8 dequantized exactly).
    np.testing.assert_array_equal(model.weights["c1/w"], weights["c1/w"])
    np.testing.assert_allclose(model.weights["d1/w"], weights["d1/w"], rtol=0, atol=1e-6)
    spec, state = tfjs_convert.convert(model, "x", {"out": "sig"}, {"scale": [1 / 255] * 3, "offset": [0.0] * 3}, (8, 8))
    assert [layer["op"] for layer in spec["layers"]] == ["conv", "conv", "conv", "resize", "conv", "add", "concat", "sigmoid"]
    net = graph.GraphNet({**spec, "input_size": [8, 8]})
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    pixels = rng.integers(0, 256, size=(8, 8, 3)).astype(np.uint8)
    with torch.no_grad():
        got = net(torch.from_numpy(to_input(pixels))[None])[0].numpy().transpose(1, 2, 0)
    want = np_graph(pixels.astype(np.float64) / 255, weights)
    assert got.shape == want.shape == (8, 8, 12)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    # The same module without a fixed input size pads per call, with the same result.
    free = graph.GraphNet(spec)
    free.load_state_dict(net.state_dict())
    with torch.no_grad():
        again = free(torch.from_numpy(to_input(pixels))[None])[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(again, got, rtol=0, atol=1e-6)


def test_pruning_keeps_only_what_an_output_needs(tmp_path):
    make_model(tmp_path, np.random.default_rng(0))
    spec, _ = tfjs_convert.convert(tfjs.load(tmp_path / "model.json"), "x", {"out": "sig", "side": "c2"},
                                   {"scale": [1.0] * 3, "offset": [0.0] * 3}, (8, 8))
    side = graph.prune(spec, {"side": "c2"})
    assert [layer["name"] for layer in side["layers"]] == ["c2"]


def test_unsupported_ops_and_broken_files_are_named(tmp_path):
    make_model(tmp_path, np.random.default_rng(0))
    doc = json.loads((tmp_path / "model.json").read_text())
    for node in doc["modelTopology"]["node"]:
        if node["name"] == "sig":
            node["op"] = "Softplus"
    (tmp_path / "model.json").write_text(json.dumps(doc))
    model = tfjs.load(tmp_path / "model.json")
    with pytest.raises(PosepipeError, match=r"node 'sig': op Softplus is not supported"):
        tfjs_convert.convert(model, "x", {"out": "sig"}, {"scale": [1.0] * 3, "offset": [0.0] * 3}, (8, 8))

    data = (tmp_path / "w.bin").read_bytes()
    (tmp_path / "w.bin").write_bytes(data[:-9])
    with pytest.raises(PosepipeError, match="runs past the end of its shards"):
        tfjs.load(tmp_path / "model.json")

    doc["weightsManifest"][0]["paths"] = ["../outside.bin"]
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(PosepipeError, match="points outside the model's folder"):
        tfjs.load(tmp_path / "model.json")

    (tmp_path / "model.json").write_text('{"format": "layers-model"}')
    with pytest.raises(PosepipeError, match="not a TFJS graph model"):
        tfjs.load(tmp_path / "model.json")


def test_spec_errors_name_the_layer():
    spec = {"format": graph.SPEC_FORMAT, "input": "x", "outputs": {"out": "b"},
            "layers": [{"name": "b", "op": "add", "inputs": ["x", "a"]}]}
    with pytest.raises(PosepipeError, match=r"layer 0 \(b\): input 'a' is not produced before it"):
        graph.GraphNet(spec)
    with pytest.raises(PosepipeError, match="not a posepipe graph spec"):
        graph.GraphNet({"layers": []})
