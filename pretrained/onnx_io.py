"""posepipe's ONNX pose-model contract: how models are written, and how a file is recognised.

Every pose model posepipe writes (pulled pretrained ones, ``export-model``'s FP32 and INT8)
takes ``input``: (N, 3, H, W) float32 crops, RGB normalised with ImageNet's mean and std
(``training.transforms.to_input``), and gives one output:

* ``keypoints``: (N, 17, 3) COCO-17 x, y in crop pixels and a score in 0..1, or
* ``heatmaps``: (N, 17, H/4, W/4), decoded by ``training.heatmaps.decode``;
* ``boxes`` (person detectors): (N, K, 5) x0, y0, x1, y1 in input pixels and a score.

Metadata (``metadata_props``) say which, with the crop size, the model's name, licence and
origin. A file without them is accepted when its shapes say the same; anything else is "not a
pose model".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from posepipe.datasets import atomic
from posepipe.datasets.errors import PosepipeError

FORMAT = "posepipe-pose-model/1"
OPSET = 17
OUTPUTS = ("keypoints", "heatmaps", "boxes")
NUM_JOINTS = 17


@dataclass
class PoseOnnx:
    path: Path
    output: str  # "keypoints" or "heatmaps"
    input_size: tuple[int, int]
    metadata: dict[str, str]


def export(module, input_size: tuple[int, int], target: Path, output: str, metadata: dict[str, str]) -> None:
    """``module`` (crops -> ``output``) to ONNX at ``target``, atomically, with posepipe's metadata."""
    import onnx
    import torch

    if output not in OUTPUTS:
        raise ValueError(output)
    h, w = input_size
    module.eval()
    with atomic.atomic_path(target) as tmp, warnings.catch_warnings():
        # The TorchScript exporter: the dynamo one needs onnxscript, which this project does not ship.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            out_shape = tuple(module(torch.zeros(1, 3, h, w)).shape)
            torch.onnx.export(module, (torch.zeros(1, 3, h, w),), str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=[output],
                              dynamic_axes={"input": {0: "batch"}, output: {0: "batch"}})
        model = onnx.load(str(tmp))
        # Shapes computed inside the graph (the decoding's reshapes) leave the output's dims
        # symbolic; state them, so readers see (N, 17, 3) or (N, 17, h, w).
        dims = model.graph.output[0].type.tensor_type.shape.dim
        for dim, size in zip(list(dims)[1:], out_shape[1:]):
            dim.ClearField("dim_param")
            dim.dim_value = int(size)
        props = {"posepipe.format": FORMAT, "posepipe.output": output, "posepipe.input_size": f"{h},{w}",
                 **{f"posepipe.{k}": str(v) for k, v in metadata.items()}}
        del model.metadata_props[:]
        for key, value in sorted(props.items()):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(tmp))


def describe(path: str | Path) -> PoseOnnx:
    """What a pose-model ONNX file holds; one line naming the problem when it is not one."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise PosepipeError(f"{path}: no such model file")
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for every kind of bad file
        raise PosepipeError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise PosepipeError(f"{path}: not a pose model (it has {len(inputs)} inputs and {len(outputs)} outputs; "
                            f"a posepipe pose model has one of each)")
    shape = inputs[0].shape
    if len(shape) != 4 or shape[1] != 3 or not all(isinstance(d, int) for d in shape[2:]):
        raise PosepipeError(f"{path}: not a pose model (input {inputs[0].name} has shape {shape}, "
                            f"expected (N, 3, H, W) with fixed H and W)")
    input_size = (int(shape[2]), int(shape[3]))
    out_shape = outputs[0].shape
    if len(out_shape) == 3 and out_shape[1:] == [NUM_JOINTS, 3]:
        kind = "keypoints"
    elif len(out_shape) == 4 and out_shape[1] == NUM_JOINTS:
        kind = "heatmaps"
    elif len(out_shape) == 3 and out_shape[2] == 5 and meta.get("posepipe.output") == "boxes":
        kind = "boxes"
    else:
        raise PosepipeError(f"{path}: not a pose model (output {outputs[0].name} has shape {out_shape}, "
                            f"expected (N, 17, 3) keypoints or (N, 17, h, w) heatmaps)")
    declared = meta.get("posepipe.output")
    if declared is not None and declared != kind:
        raise PosepipeError(f"{path}: metadata says output {declared!r} but the output's shape is {out_shape}")
    return PoseOnnx(path, kind, input_size, {k.removeprefix("posepipe."): v for k, v in meta.items()})
