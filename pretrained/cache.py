"""The model cache: one folder per pulled model, installed whole or not at all.

Layout (``$POSEPIPE_MODELS``, else ``$XDG_CACHE_HOME/posepipe/models``, else
``~/.cache/posepipe/models``)::

    <root>/<name>/posepipe-model.json   what it is: licence, origin, package, sha256 of each file
    <root>/<name>/LICENCE.txt           the licence and attribution, for anyone who copies the folder
    <root>/<name>/model.onnx            crops -> keypoints (onnx_io's contract), for ONNX Runtime
    <root>/<name>/graph.json            the network as a posepipe graph spec (graph.py)
    <root>/<name>/weights.safetensors   its weights, for fine-tuning (``posepipe train --init``)

A pull builds the folder under a temporary name and renames it into place, under a per-model
lock, so a crash or a concurrent pull never leaves half a model. Every load checks the files'
sha256 against the manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from posepipe.datasets.errors import PosepipeError

MANIFEST = "posepipe-model.json"
MANIFEST_FORMAT = "posepipe-model-cache/1"
FILES = ("model.onnx", "graph.json", "weights.safetensors")


def cache_root(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override)
    if os.environ.get("POSEPIPE_MODELS"):
        return Path(os.environ["POSEPIPE_MODELS"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "posepipe" / "models"


def sha256_of(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class ModelCache:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = cache_root(root)

    def folder(self, name: str) -> Path:
        return self.root / name

    def manifest(self, name: str) -> dict | None:
        """The installed model's manifest, or None when it is not installed."""
        path = self.folder(name) / MANIFEST
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            raise PosepipeError(f"{path}: unreadable model manifest; run `posepipe models pull {name} --force`") from None
        if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
            raise PosepipeError(f"{path}: not a posepipe model manifest; run `posepipe models pull {name} --force`")
        return doc

    def verify(self, name: str) -> dict:
        """The manifest of an installed model whose files all match their recorded sha256."""
        doc = self.manifest(name)
        if doc is None:
            raise PosepipeError(f"model {name!r} is not in the cache {self.root} (posepipe models pull {name})")
        for file, expected in doc["files"].items():
            path = self.folder(name) / file
            if not path.is_file():
                raise PosepipeError(f"{path}: missing from the cached model; run `posepipe models pull {name} --force`")
            found = sha256_of(path)
            if found != expected:
                raise PosepipeError(f"{path}: corrupt cached file (sha256 {found[:12]}..., manifest says "
                                    f"{expected[:12]}...); run `posepipe models pull {name} --force`")
        return doc

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{name}.lock", "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A scratch folder in the cache; on success it becomes ``<root>/<name>`` in one rename."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=self.root))
        try:
            yield tmp
            for path in tmp.rglob("*"):
                if path.is_file():
                    os.chmod(path, 0o644)  # temporary files are created private; a cache is shared
                    with open(path, "rb") as fh:
                        os.fsync(fh.fileno())
            os.chmod(tmp, 0o755)
            final = self.folder(name)
            old = None
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".old-{name}-", dir=self.root))
                os.replace(final, old / name)
            os.replace(tmp, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def installed(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file())
