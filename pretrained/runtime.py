"""Load any posepipe pose model for inference: a registry name (pulled on first use) or an ONNX file.

Either way the result is a :class:`PoseModel`: ONNX Runtime on the CPU (or CUDA where its
provider is installed), crops in, the model's output out, with its crop size, its output kind
and where it came from. ``training.evaluate`` decodes both kinds, so pulled pretrained models,
exported FP32/INT8 models and fine-tuned ones are scored and used by the same code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.progress import Progress

from . import onnx_io, registry
from .cache import ModelCache


@dataclass
class PoseModel:
    name: str
    path: Path
    output: str  # "keypoints" or "heatmaps"
    input_size: tuple[int, int]
    metadata: dict = field(default_factory=dict)
    threads: int = 0
    _session: object = None

    @property
    def session(self):
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
            self._session = ort.InferenceSession(str(self.path), opts, providers=providers)
        return self._session

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 crops -> the model's output (a ``training.evaluate.PredictFn``)."""
        return self.session.run(None, {self.session.get_inputs()[0].name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def describe(self) -> dict:
        return {"name": self.name, "path": str(self.path), "output": self.output,
                "input_size": list(self.input_size), "licence": self.metadata.get("licence"),
                "origin": self.metadata.get("origin")}


def is_path(name_or_path: str) -> bool:
    return name_or_path not in registry.MODELS and (os.sep in name_or_path or name_or_path.endswith(".onnx")
                                                    or Path(name_or_path).exists())


def load(name_or_path: str, cache: ModelCache | None = None, threads: int = 0, pull_missing: bool = True,
         progress: Progress | None = None) -> PoseModel:
    """A registry name (verified in the cache, pulled when missing) or a pose-model ONNX path."""
    if is_path(name_or_path):
        info = onnx_io.describe(name_or_path)
        return PoseModel(info.metadata.get("name", Path(name_or_path).stem), info.path, info.output,
                         info.input_size, info.metadata, threads)
    from .pull import is_current, pull

    entry = registry.get(name_or_path)
    cache = cache or ModelCache()
    if pull_missing:
        manifest = pull(entry.name, cache, progress=progress)
    else:
        manifest = cache.verify(entry.name)
        if not is_current(manifest):
            raise PosepipeError(f"model {entry.name!r} in {cache.root} was converted by another posepipe version "
                                f"(posepipe models pull {entry.name})")
    path = cache.folder(entry.name) / "model.onnx"
    info = onnx_io.describe(path)
    return PoseModel(entry.name, path, info.output, info.input_size,
                     {**info.metadata, "licence": manifest["licence"], "origin": manifest["origin"]}, threads)
