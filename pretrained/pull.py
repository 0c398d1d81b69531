"""``posepipe models pull NAME``: fetch, verify, convert, check and cache a pretrained model.

Steps, each of which can refuse the model with one line saying why:

1. fetch the package tarball (``npm pack``, or ``--from FILE.tgz``) and check its integrity;
2. extract the model's files and convert them (``convert.py``): no TensorFlow involved;
3. check the converted weights' sha256 against the registry, and the network's head values on
   a seeded input against the original graph's (the fingerprint);
4. export ONNX (crops -> keypoints) and check ONNX Runtime agrees with PyTorch on that input;
5. install the folder atomically, with its licence, origin and file hashes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from posepipe.datasets import atomic
from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.progress import NoProgress, Progress

from . import convert, npm, registry
from .cache import FILES, MANIFEST, MANIFEST_FORMAT, ModelCache, sha256_of
from .graph import GraphNet
from .movenet import PersonBoxes, SinglePose

# ONNX Runtime and PyTorch must place every keypoint of the check input within this many pixels.
ONNX_MAX_PIXEL_DIFF = 0.05
# Bumped whenever the conversion or the exported decoding changes: a cache made by another version
# is pulled again rather than used (its files are intact, but they are not what this code makes).
CONVERTER_VERSION = 1


def is_current(manifest: dict | None) -> bool:
    """A cache entry made by this converter version (an older one is pulled again on first use)."""
    return manifest is not None and manifest.get("converter_version") == CONVERTER_VERSION


def pull(name: str, cache: ModelCache | None = None, tarball: Path | None = None, force: bool = False,
         progress: Progress | None = None) -> dict:
    """Install ``name`` in the cache unless it is there, intact and made by this converter version
    (so callers use it on first use too); returns the manifest and ``status`` (cached or pulled)."""
    entry = registry.get(name)
    cache = cache or ModelCache()
    progress = progress or NoProgress()
    with cache.lock(name):
        manifest = cache.manifest(name)
        if not force and is_current(manifest):
            try:
                return {**cache.verify(name), "status": "cached", "path": str(cache.folder(name))}
            except PosepipeError:
                pass  # damaged: pull it again
        for stale in cache.root.glob(f".tmp-{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a pull that crashed (we hold the lock)
        with cache.staging(name) as folder, tempfile.TemporaryDirectory(dir=cache.root, prefix=".dl-") as dl:
            manifest = _build(entry, folder, Path(dl), tarball, progress)
        return {**manifest, "status": "pulled", "path": str(cache.folder(name))}


def _build(entry: registry.ModelEntry, folder: Path, scratch: Path, tarball: Path | None, progress: Progress) -> dict:
    import onnxruntime as ort
    import torch
    from safetensors.numpy import save_file

    steps = iter(progress.track(range(5), 5, f"pulling {entry.name}"))
    next(steps)
    if tarball is None:
        tarball = npm.pack(entry.package, scratch)
    elif not Path(tarball).is_file():
        raise PosepipeError(f"{tarball}: no such tarball")
    npm.check(entry.package, Path(tarball))
    source = scratch / "source"
    source.mkdir()
    npm.extract(Path(tarball), entry.files, source)

    next(steps)
    converted = convert.convert(entry, source)
    weights = folder / "weights.safetensors"
    # No safetensors metadata: its map is written in hash order, and the pinned sha256 needs fixed bytes.
    save_file(converted.state, str(weights))
    weights_sha = sha256_of(weights)
    if entry.weights_sha256 and weights_sha != entry.weights_sha256:
        raise PosepipeError(f"{entry.name}: converted weights have sha256 {weights_sha[:12]}..., the registry pins "
                            f"{entry.weights_sha256[:12]}...")
    atomic.write_text(folder / "graph.json", json.dumps(converted.spec, indent=1))

    next(steps)
    net = GraphNet(converted.spec)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in converted.state.items()})
    net.eval()
    from posepipe.training.transforms import to_input

    image = torch.from_numpy(to_input(convert.check_input(entry.input_size)))[None]
    with torch.no_grad():
        heads = {k: v[0].numpy() for k, v in net.forward_all(image).items()}
        module, output = ((SinglePose, "keypoints") if entry.task == "single-pose" else (PersonBoxes, "boxes"))
        module = module(net, entry.input_size)
        expected = module(image).numpy()
    fingerprint_diff = convert.check_fingerprint(entry, convert.fingerprint(heads))

    next(steps)
    from .onnx_io import export

    onnx_path = folder / "model.onnx"
    export(module, entry.input_size, onnx_path, output,
           {"name": entry.name, "licence": entry.licence, "origin": entry.origin, "package": entry.package.spec})
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_diff = float(np.abs(sess.run(None, {"input": image.numpy()})[0] - expected).max())
    if onnx_diff > ONNX_MAX_PIXEL_DIFF:
        raise PosepipeError(f"{entry.name}: ONNX Runtime and PyTorch disagree by {onnx_diff:.3f} px on the check input")

    next(steps)
    atomic.write_text(folder / "LICENCE.txt", _licence_text(entry))
    manifest = {
        "format": MANIFEST_FORMAT, "name": entry.name, "task": entry.task, "description": entry.description,
        "input_size": list(entry.input_size), "licence": entry.licence, "origin": entry.origin,
        "citation": entry.citation,
        "package": {"manager": "npm", "name": entry.package.name, "version": entry.package.version,
                    "integrity": entry.package.integrity, "licence": entry.package.licence,
                    "files": list(entry.files)},
        "files": {f: sha256_of(folder / f) for f in FILES},
        "check": {"fingerprint_max_diff": fingerprint_diff, "onnx_vs_torch_max_px": onnx_diff,
                  "weights_sha256_pinned": bool(entry.weights_sha256)},
        "converter_version": CONVERTER_VERSION,
        "converted_with": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "pulled_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic.write_text(folder / MANIFEST, json.dumps(manifest, indent=2))
    next(steps, None)  # the last step done: the progress bar closes
    return manifest


def _licence_text(entry: registry.ModelEntry) -> str:
    return (f"{entry.name}: {entry.description}\n\n"
            f"Model weights: {entry.licence}, first published at {entry.origin}\n"
            f"Obtained from the npm package {entry.package.spec} ({entry.package.licence}),\n"
            f"integrity {entry.package.integrity}\n"
            f"Converted to PyTorch/ONNX by posepipe (no change to the weights).\n\n"
            f"Cite: {entry.citation}\n")
