"""Read a TensorFlow.js graph model (``model.json`` + weight shards) with numpy alone.

A TFJS graph model is a frozen TensorFlow GraphDef written as json (``modelTopology.node``:
name, op, inputs, attributes) plus a ``weightsManifest`` listing the constant tensors in the
order their bytes follow one another in the shard files. Weights may be stored quantized
(float16, or uint8/uint16 with a scale and minimum) and are returned as float32 here.

Nothing here runs TensorFlow: ``graph.py`` turns the nodes posepipe needs into PyTorch layers.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posepipe.datasets.errors import PosepipeError

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_QUANTIZED = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]  # data inputs as "node" or "node:k"; control inputs ("^node") are dropped
    attr: dict

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.attr.get(key, {}).get("s")
        return base64.b64decode(value).decode() if value is not None else default

    def ints(self, key: str) -> list[int]:
        return [int(v) for v in self.attr.get(key, {}).get("list", {}).get("i", [])]

    def strings(self, key: str) -> list[str]:
        return [base64.b64decode(v).decode() for v in self.attr.get(key, {}).get("list", {}).get("s", [])]

    def flag(self, key: str, default: bool = False) -> bool:
        return bool(self.attr.get(key, {}).get("b", default))


@dataclass
class GraphModel:
    path: Path
    nodes: dict[str, Node]  # in file order (TFJS writes them topologically sorted)
    weights: dict[str, np.ndarray]
    signature: dict
    generated_by: str | None


def tensor_name(ref: str) -> str:
    """"node:0" and "node" name the same tensor."""
    return ref[:-2] if ref.endswith(":0") else ref


def load(model_json: str | Path) -> GraphModel:
    path = Path(model_json)
    try:
        doc = json.loads(path.read_text())
        topology = doc["modelTopology"]
        raw_nodes = topology["node"]
        manifest = doc["weightsManifest"]
    except (OSError, ValueError) as exc:
        raise PosepipeError(f"{path}: not a readable TFJS model.json ({exc})") from None
    except (KeyError, TypeError):
        raise PosepipeError(f"{path}: not a TFJS graph model (missing 'modelTopology.node' or 'weightsManifest')") from None
    nodes: dict[str, Node] = {}
    for raw in raw_nodes:
        inputs = [tensor_name(i) for i in raw.get("input", []) if not i.startswith("^")]
        nodes[raw["name"]] = Node(raw["name"], raw["op"], inputs, raw.get("attr", {}))
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        data = b"".join(_read_shard(path, shard) for shard in group["paths"])
        offset = 0
        for spec in group["weights"]:
            array, offset = _decode_weight(path, spec, data, offset)
            weights[spec["name"]] = array
        if offset != len(data):
            raise PosepipeError(f"{path}: weight shards hold {len(data)} bytes, the manifest describes {offset}")
    return GraphModel(path, nodes, weights, doc.get("signature", {}), doc.get("generatedBy"))


def _read_shard(model_json: Path, name: str) -> bytes:
    shard = (model_json.parent / name).resolve()
    if model_json.parent.resolve() not in shard.parents:
        raise PosepipeError(f"{model_json}: weight shard {name!r} points outside the model's folder")
    try:
        return shard.read_bytes()
    except OSError as exc:
        raise PosepipeError(f"{model_json}: cannot read weight shard {name!r} ({exc.strerror})") from None


def _decode_weight(path: Path, spec: dict, data: bytes, offset: int) -> tuple[np.ndarray, int]:
    shape = [int(d) for d in spec["shape"]]
    count = int(np.prod(shape)) if shape else 1
    quant = spec.get("quantization")
    if quant:
        stored = _QUANTIZED.get(quant.get("dtype"))
        if stored is None:
            raise PosepipeError(f"{path}: weight {spec['name']!r}: unknown quantization {quant.get('dtype')!r}")
    else:
        stored = _DTYPES.get(spec["dtype"])
        if stored is None:
            raise PosepipeError(f"{path}: weight {spec['name']!r}: unsupported dtype {spec['dtype']!r}")
    size = count * np.dtype(stored).itemsize
    if offset + size > len(data):
        raise PosepipeError(f"{path}: weight {spec['name']!r} runs past the end of its shards (truncated file?)")
    array = np.frombuffer(data, dtype=stored, count=count, offset=offset).reshape(shape)
    if quant and stored is not np.float16:
        # Affine uint8/uint16: value = q * scale + min (tfjs-converter's quantization).
        array = array.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
    target = _DTYPES.get(spec["dtype"], np.float32)
    return np.ascontiguousarray(array.astype(target)), offset + size
