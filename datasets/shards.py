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
import os
import threading
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_SHARD_BYTES = 256 * 1024 * 1024
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


def _header_template() -> bytes:
    info = tarfile.TarInfo("")
    info.mtime, info.mode = 0, 0o644
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


# Every member has the same fixed metadata, so its 512-byte USTAR header is this template with
# the name, size and checksum filled in: tarfile's TarInfo/addfile cost more per image than
# writing the image. Names that do not fit the plain name field go through tarfile itself.
_TEMPLATE = _header_template()


def ustar_header(name: str, size: int) -> bytes:
    """The header ``tarfile`` writes (USTAR, mtime 0, mode 644, root owner) for one member."""
    raw = name.encode("ascii", "replace")
    if len(raw) > 100 or not name.isascii() or size >= 8**11:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o644
        return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    head = raw.ljust(100, b"\0") + _TEMPLATE[100:124] + b"%011o\0" % size + _TEMPLATE[136:148]
    tail = _TEMPLATE[156:]
    checksum = sum(head) + 8 * 32 + sum(tail)  # the checksum field counts as eight spaces
    return head + b"%06o\0 " % checksum + tail


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
        self._tar = None  # the open shard file, written as a plain USTAR tar
        self._hash = hashlib.sha256()  # of the open shard's bytes, as they are written
        self._offset = 0
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
            self._tar = open(self._tmp, "wb")
            self._hash = hashlib.sha256()
            self._offset = 0
            self._written = 0
        # fixed metadata: same images in the same order give the same shard bytes
        header = ustar_header(f"{sha256}.{ext}", len(data))
        offset = self._offset + len(header)  # the member's data follows its header
        padding = -len(data) % _BLOCK
        self._write(header)
        self._write(data)
        if padding:
            self._write(b"\0" * padding)
        self._offset = offset + len(data) + padding
        self._pending[sha256] = (offset, len(data))
        self._written += len(data) + 1024

    def _write(self, chunk: bytes) -> None:
        self._tar.write(chunk)
        self._hash.update(chunk)

    def _finish_shard(self) -> None:
        assert self._tar is not None and self._tmp is not None
        # End of archive as tarfile writes it: two zero blocks, then zeros to a whole record.
        end = self._offset + 2 * _BLOCK
        self._write(b"\0" * (2 * _BLOCK + -end % _RECORD))
        self._tar.flush()
        os.fsync(self._tar.fileno())
        self._tar.close()
        digest = self._hash.hexdigest()
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


class ShardReader:
    """Reads image bytes by (shard, offset, size). Uses pread, so it is safe across fork."""

    def __init__(self, shard_dir: Path):
        self.shard_dir = Path(shard_dir)
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()
        self._opening = threading.Lock()  # reads may come from several threads (evaluation's crop pool)

    def read(self, shard: str, offset: int, num_bytes: int) -> bytes:
        if os.getpid() != self._pid:  # a forked worker opens its own descriptors
            self._fds = {}
            self._pid = os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            parts = shard.split("/")
            if len(parts) > 2 or any(not p or p.startswith(".") for p in parts):
                raise ValueError(f"bad shard name {shard!r}")
            with self._opening:
                fd = self._fds.get(shard)
                if fd is None:
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
