"""The canonical pose store: Parquet tables per source plus content-addressed image shards.

Layout under the store root (default ``data/store``)::

    STORE.json                               schema version
    shards/<source>/<hash>.tar               image bytes, append-only (see shards.py)
    tables/<source>/images.parquet           one folder per source (name url-quoted)
    tables/<source>/instances.parquet
    tables/<source>/rejects.parquet
    tables/<source>/batches.parquet

Plain pandas or duckdb read it directly, e.g.
``duckdb.sql("select * from 'data/store/tables/*/instances.parquet'")``.

Writes go through :class:`Transaction`. A commit writes every changed table of the source as
a pending file, then an intent journal, then renames; a crash before the journal leaves the
old tables, a crash after it is rolled forward by the next transaction on any source that
finds the crashed source's lock free (readers of an existing source read the journaled files
meanwhile).

Locks (``flock``, so a crashed process releases its own):

* ``.locks/source-<name>.lock``, exclusive: one transaction per source at a time, held for the
  whole transaction (reading, checking, hashing and appending images included).
* ``.locks/write.lock``: every transaction holds it shared, so writers of different sources run
  side by side; ``posepipe gc`` holds it exclusive, so it never sees a writer's unreferenced
  new shard or temporary file. Writers pass ``.locks/gate.lock`` (shared) to take it, and gc
  closes that gate (exclusive) while it waits, so a stream of overlapping writers cannot keep
  it waiting for ever (``flock`` itself does not favour a waiting exclusive lock).
* ``.lock``: readers hold it shared for one read; a commit holds it exclusive only while it
  writes its journal and renames its files (milliseconds), so nobody reads half a commit and
  nobody waits for a whole ingest.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import atomic, schema
from .errors import PosepipeError
from .shards import ShardReader, ShardRef, ShardWriter

DEFAULT_STORE = Path("data/store")
_JOURNAL = ".commit.json"
# The column naming the input file each row came from; rows are replaced per file.
_FILE_COLUMN = {"images": "source_file", "instances": "source_file", "batches": "source_file", "rejects": "file"}
_VALID_SOURCE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./")


def validate_source_name(source: str) -> str:
    if (
        not source
        or not set(source) <= _VALID_SOURCE_CHARS
        or source.startswith(("/", "."))
        or source.endswith("/")
        or ".." in source.split("/")
        or "//" in source
    ):
        raise PosepipeError(
            f"invalid source name {source!r}: use letters, digits, '_', '-', '.' and '/' "
            "(e.g. coco-train or synth/run1)"
        )
    return source


def _source_dir_name(source: str) -> str:
    return urllib.parse.quote(source, safe="-_.")


class PoseStore:
    def __init__(self, root: str | os.PathLike = DEFAULT_STORE):
        self.root = Path(root)
        self.shard_dir = self.root / "shards"
        self.tables_dir = self.root / "tables"
        self._reader: ShardReader | None = None
        # Per thread: whether it holds the readers' lock exclusively (flock is per open file, so
        # its own reads must not wait on it).
        self._local = threading.local()

    # ----- reading -------------------------------------------------------------------------
    def sources(self) -> list[str]:
        if not self.tables_dir.exists():
            return []
        names = []
        for d in sorted(self.tables_dir.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and _committed_path(d, "batches").exists():
                names.append(urllib.parse.unquote(d.name))
        return sorted(names)

    def source_dir(self, source: str) -> Path:
        return self.tables_dir / _source_dir_name(validate_source_name(source))

    def table(self, name: str, sources: Iterable[str] | None = None) -> pa.Table:
        """One table across the given sources (all when None), in the canonical schema."""
        if name not in schema.TABLES:
            raise ValueError(f"unknown table {name!r}")
        parts = []
        with self._shared_lock():
            wanted = self.sources() if sources is None else list(sources)
            for source in wanted:
                path = _committed_path(self.source_dir(source), name)
                if path.exists():
                    parts.append(schema.conform(pq.read_table(path), name))
        if not parts:
            return schema.empty_table(name)
        return pa.concat_tables(parts)

    @contextlib.contextmanager
    def _shared_lock(self) -> Iterator[None]:
        """Readers wait for a commit in progress; a read-only store (a pulled release) needs none."""
        if getattr(self._local, "excluding_readers", False) or not self.root.exists():
            yield
            return
        try:
            lock = open(self.root / ".lock", "a+")
        except OSError:
            yield
            return
        with lock:
            fcntl.flock(lock, fcntl.LOCK_SH)
            yield

    def images(self, sources: Iterable[str] | None = None) -> pa.Table:
        return self.table("images", sources)

    def instances(self, sources: Iterable[str] | None = None) -> pa.Table:
        return self.table("instances", sources)

    def rejects(self, sources: Iterable[str] | None = None) -> pa.Table:
        return self.table("rejects", sources)

    def batches(self, sources: Iterable[str] | None = None) -> pa.Table:
        return self.table("batches", sources)

    def read_image(self, shard: str, offset: int, num_bytes: int) -> bytes:
        if self._reader is None:
            self._reader = ShardReader(self.shard_dir)
        return self._reader.read(shard, offset, num_bytes)

    def image_index(self) -> dict[str, ShardRef]:
        """sha256 -> where its bytes are, over every source (for de-duplication by content)."""
        images = self.images()
        if images.num_rows == 0:
            return {}
        cols = images.select(["sha256", "shard", "offset", "num_bytes"]).to_pydict()
        return {
            sha: ShardRef(shard, int(off), int(n))
            for sha, shard, off, n in zip(cols["sha256"], cols["shard"], cols["offset"], cols["num_bytes"])
        }

    # ----- writing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, source: str) -> Iterator["Transaction"]:
        """Exclusive write access to one source; commits on normal exit, discards on error.
        Transactions on other sources, and readers, go on meanwhile."""
        validate_source_name(source)
        self._create()
        source_lock = self._source_lock(_source_dir_name(source))
        with contextlib.ExitStack() as held:
            with _flock(self.root / ".locks" / "gate.lock", fcntl.LOCK_SH):
                held.enter_context(_flock(self.root / ".locks" / "write.lock", fcntl.LOCK_SH))
            held.enter_context(_flock(source_lock, fcntl.LOCK_EX))
            self._recover_crashed(skip_locked=source)
            tx = Transaction(self, source)
            try:
                yield tx
            except BaseException:
                tx.writer.abort()
                raise
            tx.commit()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """No writer and no reader but this thread (``posepipe gc``); crashed commits recovered."""
        self._create()
        with _flock(self.root / ".locks" / "gate.lock", fcntl.LOCK_EX), \
                _flock(self.root / ".locks" / "write.lock", fcntl.LOCK_EX), self.excluding_readers():
            if self.tables_dir.exists():
                for source_dir in self.tables_dir.iterdir():
                    _recover(source_dir)
            yield

    @contextlib.contextmanager
    def excluding_readers(self) -> Iterator[None]:
        """The readers' lock, exclusively: for a commit's journal and renames (and for gc)."""
        if getattr(self._local, "excluding_readers", False):
            yield
            return
        with _flock(self.root / ".lock", fcntl.LOCK_EX):
            self._local.excluding_readers = True
            try:
                yield
            finally:
                self._local.excluding_readers = False

    def _recover_crashed(self, skip_locked: str) -> None:
        """Finish (or discard) every source's crashed commit: ``skip_locked``'s, whose lock we hold,
        and any other whose lock is free (a source being written is its own writer's business)."""
        if not self.tables_dir.exists():
            return
        for source_dir in self.tables_dir.iterdir():
            if not (source_dir / _JOURNAL).exists() and not any(source_dir.glob(".*.pending")):
                continue
            if source_dir.name == _source_dir_name(skip_locked):
                with self.excluding_readers():
                    _recover(source_dir)
                continue
            with open(self._source_lock(source_dir.name), "a+") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                with self.excluding_readers():
                    _recover(source_dir)

    def _source_lock(self, dir_name: str) -> Path:
        # A source's folder name may be up to the filesystem's limit: long ones are locked by hash.
        name = dir_name if len(dir_name) <= 200 else schema.short_hash(dir_name, length=32)
        return self.root / ".locks" / f"source-{name}.lock"

    def _create(self) -> None:
        (self.root / ".locks").mkdir(parents=True, exist_ok=True)
        marker = self.root / "STORE.json"
        if not marker.exists():
            atomic.write_text(marker, json.dumps({"schema_version": schema.SCHEMA_VERSION}) + "\n")


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, mode)
        yield


class Transaction:
    """Stages per-file replacements of one source's rows and commits them together."""

    def __init__(self, store: PoseStore, source: str):
        self.store = store
        self.source = source
        self.dir = store.source_dir(source)
        self.current = {name: self._read_current(name) for name in schema.TABLES}
        self.index = store.image_index()
        folder = _source_dir_name(source)
        self.writer = ShardWriter(store.shard_dir / folder, prefix=f"{folder}/")
        self._replaced: set[str] = set()
        # Staged rows, in groups: each group replaces a set of input files at once.
        self._groups: dict[int, tuple[list[str], dict[str, pa.Table]]] = {}
        self._group_of: dict[str, int] = {}
        self._next_group = 0
        self._image_owner: dict[str, str] | None = None
        batches = self.current["batches"]
        self._last_sha = dict(zip(batches.column("source_file").to_pylist(), batches.column("file_sha256").to_pylist()))

    def _read_current(self, name: str) -> pa.Table:
        path = _committed_path(self.dir, name)
        if path.exists():
            return schema.conform(pq.read_table(path), name)
        return schema.empty_table(name)

    # What is already there.
    def file_sha256(self, source_file: str) -> str | None:
        """The content hash this file had when last ingested into this source, if ever."""
        return self._last_sha.get(source_file)

    def file_hashes(self) -> dict[str, str]:
        """Every input file this source holds -> its content hash when last ingested."""
        return dict(self._last_sha)

    def known_files(self) -> list[str]:
        return sorted(set(self.current["batches"].column("source_file").to_pylist()))

    def image_owners(self) -> dict[str, str]:
        """image_id -> source_file for images this source already holds (excluding replaced files)."""
        if self._image_owner is None:
            images = self.current["images"]
            ids = images.column("image_id").to_pylist()
            files = images.column("source_file").to_pylist()
            self._image_owner = {i: f for i, f in zip(ids, files)}
        return {i: f for i, f in self._image_owner.items() if f not in self._replaced}

    def has_image(self, sha256: str) -> bool:
        return sha256 in self.index or sha256 in self.writer

    def put_image(self, data: bytes, sha256: str, fmt: str) -> None:
        """Store image bytes once per store, whatever source or file brings them."""
        if not self.has_image(sha256):
            self.writer.add(data, sha256, "jpg" if fmt == "jpeg" else fmt)

    # Staging.
    def replace_file(self, source_file: str, tables: dict[str, pa.Table]) -> None:
        """Everything this source holds from ``source_file`` becomes ``tables`` on commit."""
        self.replace_files([source_file], tables)

    def replace_files(self, source_files: list[str], tables: dict[str, pa.Table]) -> None:
        """Everything this source holds from these files becomes ``tables`` (rows of any of them)."""
        for source_file in source_files:
            self.remove_file(source_file)
        self._next_group += 1
        gid = self._next_group
        self._groups[gid] = (list(source_files), {name: schema.conform(t, name) for name, t in tables.items()})
        for source_file in source_files:
            self._group_of[source_file] = gid

    def remove_file(self, source_file: str) -> None:
        """Drop what this source holds from ``source_file`` (and anything staged for it)."""
        self._replaced.add(source_file)
        gid = self._group_of.pop(source_file, None)
        if gid is not None:
            files, _ = self._groups.pop(gid)
            for other in files:
                self._group_of.pop(other, None)

    def commit(self) -> None:
        refs = self.writer.close()
        if not self._replaced:
            return
        out: dict[str, pa.Table] = {}
        replaced = pa.array(sorted(self._replaced), type=pa.string())
        for name in schema.TABLES:
            old = self.current[name]
            keep = pc.invert(pc.is_in(old.column(_FILE_COLUMN[name]), value_set=replaced))
            keep = pc.fill_null(keep, True)
            parts = [old.filter(keep)] + [t[name] for _, t in self._groups.values() if name in t]
            table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            if name == "images":
                table = _fill_shard_refs(table, refs, self.index)
            out[name] = table
        _check_unique(out["images"], "image_id", self.source)
        _check_unique(out["instances"], "instance_id", self.source)
        _commit_tables(self.dir, out, self.store.excluding_readers)


def _fill_shard_refs(images: pa.Table, refs: dict[str, ShardRef], index: dict[str, ShardRef]) -> pa.Table:
    shard = images.column("shard").to_pylist()
    offset = images.column("offset").to_pylist()
    sizes = images.column("num_bytes").to_pylist()
    missing = []
    for i, sha in enumerate(images.column("sha256").to_pylist()):
        if shard[i] is not None:
            continue
        ref = refs.get(sha) or index.get(sha)
        if ref is None:
            missing.append(sha)
            continue
        shard[i], offset[i], sizes[i] = ref.shard, ref.offset, ref.num_bytes
    if missing:
        raise RuntimeError(f"{len(missing)} images were staged without their bytes (first {missing[0]})")
    images = images.set_column(images.schema.get_field_index("shard"), "shard", pa.array(shard, pa.string()))
    images = images.set_column(images.schema.get_field_index("offset"), "offset", pa.array(offset, pa.int64()))
    return images.set_column(
        images.schema.get_field_index("num_bytes"), "num_bytes", pa.array(sizes, pa.int64())
    )


def _check_unique(table: pa.Table, column: str, source: str) -> None:
    # Arrow's hash count first (~10x faster than sorting 250k strings); numpy names the culprit.
    if pc.count_distinct(table.column(column)).as_py() != table.num_rows:
        values = table.column(column).to_numpy(zero_copy_only=False)
        uniq, counts = np.unique(values, return_counts=True)
        dup = uniq[counts > 1][0]
        raise RuntimeError(f"source {source}: {column} {dup} would appear twice; nothing was written")


def _commit_tables(source_dir: Path, tables: dict[str, pa.Table], excluding_readers) -> None:
    source_dir.mkdir(parents=True, exist_ok=True)
    # Pending files are invisible to readers until the journal names them: written unlocked.
    # Parquet encoding releases the GIL: the small tables are written beside the big one.
    with ThreadPoolExecutor(max_workers=len(tables)) as pool:
        list(pool.map(lambda item: atomic.write_parquet(source_dir / f".{item[0]}.parquet.pending", item[1]),
                      tables.items()))
    with excluding_readers():
        atomic.write_text(source_dir / _JOURNAL, json.dumps(sorted(tables)))
        _recover(source_dir)


def _committed_path(source_dir: Path, name: str) -> Path:
    """A journal left by a crashed writer means its pending files are the committed state."""
    pending = source_dir / f".{name}.parquet.pending"
    if (source_dir / _JOURNAL).exists() and pending.exists():
        return pending
    return source_dir / f"{name}.parquet"


def _recover(source_dir: Path) -> None:
    """Under the source's lock, readers excluded: finish a journaled commit, or drop pending files
    of one that was not."""
    journal = source_dir / _JOURNAL
    if journal.exists():
        for name in json.loads(journal.read_text()):
            pending = source_dir / f".{name}.parquet.pending"
            if pending.exists():
                os.replace(pending, source_dir / f"{name}.parquet")
        journal.unlink()
    else:
        for stray in source_dir.glob(".*.pending"):
            stray.unlink()
