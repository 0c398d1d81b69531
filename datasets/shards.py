"""Content-addressed, append-only image shards.

Images are packed into plain tar files under ``<store>/shards/<source>/`` (a few hundred MB each
at most; one folder per source so each pipeline stage owns its own output folder in DVC),
named by the sha256 of their own bytes, and never rewritten: a new ingestion batch adds new
shards, so DVC hashes and pushes only what is new. Each image is one tar member named
``<sha256>.<ext>``; the images table records the shard and the byte offset of the member's data,
so readers fetch an image with one ``pread`` and no tar parsing. Any tar tool can unpack a shard.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_SHARD_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ShardRef:
    shard: str
    offset: int
    num_bytes: int


class ShardWriter:
    """Writes images into new shards; ``close()`` names them by content and returns their refs."""

    def __init__(self, shard_dir: Path, max_bytes: int = DEFAULT_MAX_SHARD_BYTES, prefix: str = ""):
        self.shard_dir = Path(shard_dir)
        self.prefix = prefix  # how refs name this folder relative to the shards root ("<source>/")
        self.max_bytes = max_bytes
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._pending: dict[str, tuple[int, int]] = {}  # sha -> (offset, size) in the open shard
        self._done: dict[str, ShardRef] = {}
        self._written = 0

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._pending or sha256 in self._done

    def add(self, data: bytes, sha256: str, ext: str) -> None:
        if sha256 in self:
            return
        if self._tar is not None and self._written + len(data) > self.max_bytes:
            self._finish_shard()
        if self._tar is None:
            self.shard_dir.mkdir(parents=True, exist_ok=True)
            self._tmp = self.shard_dir / f".tmp-{uuid.uuid4().hex}.tar"
            self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
            self._written = 0
        info = tarfile.TarInfo(f"{sha256}.{ext}")
        info.size = len(data)
        info.mtime = 0  # fixed metadata: same images in the same order give the same shard bytes
        info.mode = 0o644
        header = len(info.tobuf(tarfile.USTAR_FORMAT, self._tar.encoding, self._tar.errors))
        offset = self._tar.offset + header  # the member's data follows its header
        self._tar.addfile(info, io.BytesIO(data))
        self._pending[sha256] = (offset, len(data))
        self._written += len(data) + 1024

    def _finish_shard(self) -> None:
        assert self._tar is not None and self._tmp is not None
        self._tar.close()
        with open(self._tmp, "rb") as fh:
            os.fsync(fh.fileno())
        digest = _file_sha256(self._tmp)
        name = f"{digest[:32]}.tar"
        final = self.shard_dir / name
        name = self.prefix + name
        if final.exists():  # identical shard already there (same content): keep the old one
            self._tmp.unlink()
        else:
            os.replace(self._tmp, final)
        for sha, (offset, size) in self._pending.items():
            self._done[sha] = ShardRef(name, offset, size)
        self._pending = {}
        self._tar = None
        self._tmp = None

    def close(self) -> dict[str, ShardRef]:
        if self._tar is not None:
            self._finish_shard()
        return dict(self._done)

    def abort(self) -> None:
        """Drop the open shard; shards already finished stay (they are content-addressed)."""
        if self._tar is not None:
            self._tar.close()
            assert self._tmp is not None
            self._tmp.unlink(missing_ok=True)
            self._tar = None
            self._pending = {}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ShardReader:
    """Reads image bytes by (shard, offset, size). Uses pread, so it is safe across fork."""

    def __init__(self, shard_dir: Path):
        self.shard_dir = Path(shard_dir)
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()

    def read(self, shard: str, offset: int, num_bytes: int) -> bytes:
        if os.getpid() != self._pid:  # a forked worker opens its own descriptors
            self._fds = {}
            self._pid = os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            parts = shard.split("/")
            if len(parts) > 2 or any(not p or p.startswith(".") for p in parts):
                raise ValueError(f"bad shard name {shard!r}")
            fd = os.open(self.shard_dir / shard, os.O_RDONLY)
            self._fds[shard] = fd
        data = os.pread(fd, int(num_bytes), int(offset))
        if len(data) != num_bytes:
            raise OSError(f"shard {shard} is shorter than its index says (offset {offset})")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __del__(self):  # pragma: no cover - best effort
        try:
            if os.getpid() == self._pid:
                self.close()
        except Exception:
            pass
