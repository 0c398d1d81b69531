"""``--init NAME_OR_PATH``: the weights a training run starts from, and the model they belong to.

* a registry name (``movenet-thunder``): the pulled model in the cache, its files checked against
  their sha256 (``posepipe train`` pulls it first when it is missing);
* a pulled model's folder (``graph.json`` + ``weights.safetensors``);
* a posepipe ``checkpoint.pt`` (read with ``torch.load(weights_only=True)``): its model and weights,
  with a new optimizer (synthetic pre-training, then real fine-tuning).

Weights never come from a pickle: safetensors, or ``weights_only`` loading, which refuses code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from posepipe.datasets.errors import PosepipeError

from .model import ModelConfig


def resolve(init: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    from posepipe.pretrained import registry
    from posepipe.pretrained.cache import MANIFEST, ModelCache, sha256_of

    path = Path(init)
    if init in registry.MODELS:
        cache = ModelCache()
        if cache.manifest(init) is None:
            raise PosepipeError(f"model {init!r} is not in the cache {cache.root} (posepipe models pull {init})")
        return _from_folder(cache.folder(init))
    if path.is_dir() and (path / MANIFEST).is_file():
        return _from_folder(path)
    if path.is_file() and path.suffix == ".pt":
        from .train import load_checkpoint

        ckpt = load_checkpoint(path)
        config = ModelConfig.from_dict(ckpt["config"])
        init_info = {"checkpoint": str(path), "sha256": sha256_of(path), "step": int(ckpt.get("step", 0)),
                     "from": (config.init or {})}
        return ModelConfig.from_dict({**config.to_dict(), "init": init_info}), ckpt["model"]
    raise PosepipeError(f"--init {init}: neither a model name ({', '.join(registry.MODELS)}), a pulled model's "
                        f"folder, nor a posepipe checkpoint.pt")


def _from_folder(folder: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from posepipe.pretrained.cache import MANIFEST, sha256_of

    manifest = json.loads((folder / MANIFEST).read_text())
    weights = folder / "weights.safetensors"
    found = {}
    for name in ("graph.json", "weights.safetensors"):  # what training reads, each hashed once
        found[name] = sha256_of(folder / name)
        if manifest.get("files", {}).get(name) not in (None, found[name]):
            raise PosepipeError(f"{folder / name}: corrupt (sha256 differs from {folder / MANIFEST}); pull the model again")
    try:
        spec = json.loads((folder / "graph.json").read_text())
        state = load_file(str(weights))
    except (OSError, ValueError, SafetensorError) as exc:
        raise PosepipeError(f"{folder}: cannot read the model's graph.json / weights.safetensors ({exc})") from None
    config = ModelConfig(
        name=manifest["name"], input_size=tuple(int(v) for v in manifest["input_size"]), arch="movenet", graph=spec,
        init={"model": manifest["name"], "weights_sha256": found["weights.safetensors"], "licence": manifest.get("licence"),
              "origin": manifest.get("origin"), "package": manifest.get("package", {}).get("name")},
    )
    # The pulled weights belong to the bare network; the training form holds it as ``net``.
    return config, {f"net.{k}": v for k, v in state.items()}
