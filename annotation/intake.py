"""Annotator intake: a folder of LabelMe json files (with or without images) into a store source.

Each json file is one unit: accepted whole or rejected whole with one clear reason naming the
file, the shape index, the label and the value (files read = files accepted + files rejected).
Re-running over the same folder adds nothing (a file whose bytes did not change is skipped); a
changed file replaces what it gave before; a file that disappeared is reported, and its records
are kept unless ``prune`` is asked for. Rejected files go to a quarantine folder beside a
readable ``*.errors.txt``, and their reject rows stay in the store until a fixed file replaces
them.

Files still being written are never read (``datasets/settle.py``): a file, or the image a json
names, is taken once its size and mtime have been still for the settle interval (at once when
its mtime is older than that: written long ago, or renamed in). The intake waits up to the
interval for fresh files; one still changing then is skipped (reported, not read, not
rejected, not moved) and taken by a later run. A file that vanishes before it is read is
skipped too. The folder is listed inside the source's transaction, so a scan beside this one
(overlapping schedule runs) cannot quarantine a file between this scan's listing and reading.
A file that cannot be read (``file_unreadable``) stays where it is and is read again next time.

Files are examined (read, hashed, parsed, checked, image probed) in a pool of forked workers
when there are enough of them to pay for it, one process otherwise; the main process settles
each file in file order (duplicate images, shard writes, rows), so both give the same bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import multiprocessing
import os
import shutil
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import orjson
import pyarrow as pa
from pydantic import ValidationError

from posepipe.datasets import atomic, records, schema
from posepipe.datasets.coco import display_path
from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.images import ImageProblem, probe
from posepipe.datasets.progress import NoProgress, Progress
from posepipe.datasets.gcpause import gc_paused
from posepipe.datasets.report import counts_text, report_dict
from posepipe.datasets.settle import DEFAULT_SETTLE_SECONDS, Settler, Snapshot, Unsettled, check_settle, decide
from posepipe.datasets.store import PoseStore, Transaction

from . import convention, labelme_format

FORMAT = "labelme"
QUARANTINE_DIRNAME = "_quarantine"
# Annotation tools snap to the pixel grid; half-pixel rounding either side of the image is fine.
EDGE_TOLERANCE = 1.0
# A joint further outside its person rectangle than this share of the rectangle is not that person.
PERSON_BOX_SLACK = 1.0
# Boxes from rectangles are rounded to 1e-6 px so a written x + w reads back as the same w.
BOX_DECIMALS = 6
_RAW_LIMIT = 2000
# Shape keys that are not extras: the declared fields, and what nobody keeps (display colours,
# labelme's segmentation mask slot).
_NOT_EXTRA = labelme_format.SHAPE_FIELD_SET | frozenset(("line_color", "fill_color", "mask"))
# Below this many files one process is as fast as starting a pool on 2 shared cores (docs/labelme.md).
POOL_MIN_FILES = 2000
_POOL_CHUNK = 64  # files per message to and from a worker
# Why a file was skipped (neither read nor rejected; a later run takes it).
SKIP_REASONS = {
    "still_being_written": "the file changed within the settle interval",
    "image_still_being_written": "the image it names changed within the settle interval",
    "waiting_for_other_file": "another file holding the same image is still being written",
    "vanished": "the file disappeared between listing and reading",
}
_UNREADABLE_SHA = ""  # file_sha256 of a file that could not be read: no content ever matches it


class FolderUnavailable(PosepipeError):
    """The intake folder is missing or cannot be listed: nothing was read, nothing changed."""


class _Reject(Exception):
    """The first problem found in a file: it is rejected whole with this reason."""

    def __init__(self, reason: str, detail: str, field_name: str | None = None,
                 shape_index: int | None = None, raw: Any = None):
        super().__init__(detail)
        self.reason, self.detail, self.field, self.shape_index, self.raw = reason, detail, field_name, shape_index, raw

    def __reduce__(self):  # crosses from pool workers to the main process
        return _Reject, (self.reason, self.detail, self.field, self.shape_index, self.raw)


class _Unsettled(Exception):
    """The file (or its image) is still being written: skipped this time, not rejected."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass
class _Person:
    key: int | None  # the group_id, None for the one ungrouped person
    first_shape: int
    joints: dict[int, tuple[float, float, int, int]] = field(default_factory=dict)  # joint -> x, y, v, shape
    box: list[float] | None = None
    box_shape: int | None = None
    crowd: bool = False
    extras: dict[str, Any] = field(default_factory=dict)  # per-shape unknown keys, by joint/person label


@dataclass
class FileOutcome:
    file: str  # key in the store (path relative to the working directory)
    relative: str  # path relative to the intake folder
    status: str  # accepted, rejected, unchanged or skipped (still being written, vanished: not read)
    instances: int = 0
    image_from: str | None = None  # imageData or imagePath
    reason: str | None = None
    field: str | None = None
    shape_index: int | None = None
    message: str | None = None
    quarantined_to: str | None = None


@dataclass
class IntakeReport:
    source: str
    folder: str
    annotator: str | None = None
    files_read: int = 0
    files_accepted: int = 0
    files_rejected: int = 0
    files_unchanged: int = 0
    files_skipped: int = 0  # not read this time (SKIP_REASONS): a later run takes them
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    instances_accepted: int = 0
    images_accepted: int = 0
    images_embedded: int = 0
    missing: list[dict[str, str]] = field(default_factory=list)  # files the store knows that are gone
    unlisted_folders: list[str] = field(default_factory=list)  # sub-folders that could not be listed: left alone
    pruned: int = 0
    reasons: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    files: list[FileOutcome] = field(default_factory=list)

    def check_balance(self) -> None:
        if self.files_read != self.files_accepted + self.files_rejected:
            raise AssertionError(f"file counts do not add up: {self.files_read} read, "
                                 f"{self.files_accepted} accepted, {self.files_rejected} rejected")

    @property
    def rejected(self) -> int:
        return self.files_rejected

    def to_dict(self) -> dict:
        return report_dict(self)

    def summary(self) -> str:
        text = (f"{self.folder} -> source {self.source}: {self.files_read} files read, "
                f"{self.files_accepted} accepted ({self.instances_accepted} people, {self.images_accepted} images), "
                f"{self.files_rejected} rejected, {self.files_unchanged} unchanged")
        if self.files_skipped:
            text += f", {self.files_skipped} skipped (still being written: a later run takes them)"
        if self.unlisted_folders:
            text += f"; {len(self.unlisted_folders)} sub-folder(s) could not be listed and were left alone: " + \
                ", ".join(self.unlisted_folders)
        return text + counts_text(self.reasons, self.notes)


# Per person, in this order: the instances columns a file gives (keypoints and bbox go apart).
_INSTANCE_COLUMNS = ("instance_id", "area", "iscrowd", "source_annotation_id", "notes", "attributes",
                     "record_index", "num_keypoints", "image_id", "source", "skeleton", "source_file",
                     "annotator", "batch_id")


class _Accepted(NamedTuple):
    image_row: dict[str, Any]
    instances: list[tuple]  # per person, the _INSTANCE_COLUMNS values
    keypoints: bytes  # float32 (n, 17, 3), packed so that the pool sends it cheaply
    boxes: bytes  # float64 (n, 4)
    notes: list[str]


@dataclass
class _Context:
    """What examining a file needs besides the file: fixed for a run, inherited by forked workers."""
    root: Path
    last_sha: dict[str, str]
    source: str
    annotator: str | None
    settle: float = 0.0
    stable: dict[str, Snapshot | None] = field(default_factory=dict)  # path -> snapshot (None: cannot stat)
    unsettled: dict[str, Unsettled] = field(default_factory=dict)
    clock: Callable[[], float] = time.time


class _Examined(NamedTuple):
    """What examining one file found, for the main process to settle in file order (a tuple:
    pool workers send one per file, and tuples cross processes cheaply)."""
    sha: str
    unchanged: bool = False
    batch_id: str = ""
    problem: _Reject | None = None  # the first problem (after the image checks when ``image`` is set)
    data: bytes | None = None  # the file's bytes when the worker rejected it (quarantine, raw row)
    image: bytes | None = None  # set once the image passed its checks: to be claimed and stored
    image_sha: str = ""
    image_format: str = ""
    accepted: _Accepted | None = None
    skipped: tuple[str, str] | None = None  # (reason, message): not read this time
    snapshot: Snapshot | None = None  # the file as it was read


def ingest_labelme(
    store: PoseStore,
    folder: str | os.PathLike,
    source: str,
    *,
    annotator: str | None = None,
    quarantine: str | os.PathLike | None = None,
    quarantine_mode: str = "move",
    prune: bool = False,
    progress: Progress | None = None,
    workers: int | None = None,
    settle: float = DEFAULT_SETTLE_SECONDS,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> IntakeReport:
    """Ingest every ``*.json`` under ``folder`` into ``source``; see the module docstring.

    ``workers``: processes examining files; None picks one per core from POOL_MIN_FILES files on.
    ``settle``: seconds a file (and its image) must be still before it is read; the intake waits
    up to that long for fresh files, then skips those still changing. 0 reads every file as it is.
    ``clock`` and ``sleep`` are the time this waiting uses (wall clock: file mtimes are).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FolderUnavailable(f"{root}: intake folder " + ("is not a folder" if root.exists() else "does not exist"))
    if quarantine_mode not in ("move", "copy"):
        raise PosepipeError(f"--quarantine-mode must be move or copy, not {quarantine_mode!r}")
    settle = check_settle(settle)
    root = root.resolve()
    quarantine_dir = Path(quarantine).resolve() if quarantine else root / QUARANTINE_DIRNAME
    progress = progress or NoProgress()
    folder_key = display_path(root)
    report = IntakeReport(source=source, folder=folder_key, annotator=annotator, settle_seconds=settle)
    settler = Settler(settle, clock=clock, sleep=sleep)
    if settle > 0:
        # Outside the store lock: waiting for fresh files keeps no other writer of the source waiting.
        settler.wait(lambda: {p: snap for p, snap in _scan(root, quarantine_dir, True).files.items() if snap})
    prefix = folder_key.rstrip("/") + "/"
    cut = len(str(root)) + 1
    rejected: list[tuple[Path, bytes, FileOutcome, Snapshot | None]] = []
    unchanged: list[FileOutcome] = []
    skipped: list[FileOutcome] = []
    with gc_paused(), store.transaction(source) as tx:  # see datasets/gcpause.py
        # Listed inside the source's lock: a scan beside this one cannot move a file (to the
        # quarantine) between this listing and the reading below.
        scan = _scan(root, quarantine_dir, settle > 0)
        verdict = settler.look({p: snap for p, snap in scan.files.items() if snap is not None})
        stable = {p: scan.files[p] for p in scan.files if p not in verdict.unsettled}
        rels = [str(path)[cut:].replace(os.sep, "/") for path in scan.json]
        listed = [(path, prefix + rel, rel) for path, rel in zip(scan.json, rels)]  # key = display_path(path)
        items = []
        for path, key, rel in listed:
            waiting = verdict.unsettled.get(str(path))
            if waiting is None:
                items.append((path, key, rel))
            else:
                skipped.append(_skip(report, key, rel, "still_being_written",
                                     f"{key}: still being written ({waiting.why}); a later run takes it"))
        context = _Context(root, tx.file_hashes(), source, annotator, settle, stable, verdict.unsettled, clock)
        report.unlisted_folders = [display_path(Path(folder)) for folder in scan.unreadable]
        gone = _missing(tx, folder_key, {key for _, key, _ in listed}, report, prune, scan.unlisted(prefix, cut))
        claims = _Claims(tx.image_owners(), gone, {key: path for path, key, _ in items}, context.last_sha,
                         {f.file for f in skipped})
        staged: dict[str, list] = {"images": [], "batches": [], "rejects": []}
        accepted: list[_Accepted] = []
        changed: list[str] = []
        params = records.to_json({"annotator": annotator, "quarantine_mode": quarantine_mode})
        examined = _examine_all(context, items, _worker_count(workers, len(items)))
        try:
            for (path, key, rel), ex in zip(items, progress.track(examined, len(items), "labelme files")):
                if ex.skipped is not None:
                    claims.skipped.add(key)
                    skipped.append(_skip(report, key, rel, *ex.skipped))
                    continue
                if ex.unchanged:
                    claims.changed[key] = False
                    report.files_unchanged += 1
                    unchanged.append(FileOutcome(key, rel, "unchanged"))
                    continue
                problem, data = ex.problem, ex.data
                if ex.image is not None:
                    owner = claims.owner(schema.image_id_from_sha256(ex.image_sha), key)
                    if owner is not None and owner in claims.skipped:
                        # The file holding this image is being rewritten: whose it is is decided later.
                        claims.skipped.add(key)
                        skipped.append(_skip(report, key, rel, "waiting_for_other_file",
                                             f"{key}: {owner}, which holds the same image, is still being "
                                             "written; a later run takes both"))
                        continue
                    if owner is not None:
                        problem = _Reject("duplicate_image", f"the same image is already annotated by {owner} in "
                                          f"source {source}", "imagePath")
                        if data is None:
                            try:
                                data = _read(path)[0]
                            except FileNotFoundError:
                                data = b""
                    else:
                        tx.put_image(ex.image, ex.image_sha, ex.image_format)
                claims.changed[key] = True
                changed.append(key)
                report.files_read += 1
                if problem is not None:
                    rejects = records.Rejects(source, key, ex.batch_id)
                    outcome = _record_reject(report, rejects, key, rel, problem, data)
                    rejected.append((path, data, outcome, ex.snapshot))
                    staged["rejects"].extend(rejects.rows)
                    staged["batches"].append(_batch_row(source, key, ex.batch_id, ex.sha, None, params))
                    continue
                result = ex.accepted
                accepted.append(result)
                staged["images"].append(result.image_row)
                claims.run[result.image_row["image_id"]] = key
                n = len(result.instances)
                report.files_accepted += 1
                report.images_accepted += 1
                report.instances_accepted += n
                image_from = result.image_row["provenance_from"]
                report.images_embedded += image_from == "imageData"
                for note in result.notes:
                    report.notes[note] += 1
                report.files.append(FileOutcome(key, rel, "accepted", instances=n, image_from=image_from))
                staged["batches"].append(_batch_row(source, key, ex.batch_id, ex.sha, n, params))
        finally:
            examined.close()  # stops the pool at once if settling failed
        report.files[:0] = unchanged + skipped  # unchanged and skipped files are listed first
        keys = changed + gone
        if keys:
            tx.replace_files(keys, _tables(staged, accepted))
    report.check_balance()
    for path, data, outcome, snapshot in rejected:
        outcome.quarantined_to = _quarantine(root, quarantine_dir, path, data, outcome, quarantine_mode, report,
                                             snapshot)
    return report


def _skip(report: IntakeReport, key: str, rel: str, reason: str, message: str) -> FileOutcome:
    report.files_skipped += 1
    return FileOutcome(key, rel, "skipped", reason=reason, message=message)


def _read(path: Path) -> tuple[bytes, str | None, Snapshot | None]:
    """(bytes, error, snapshot taken after reading); FileNotFoundError is left to the caller."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
            return data, None, Snapshot.of(os.fstat(fh.fileno()))
    except FileNotFoundError:
        raise
    except OSError as exc:
        return b"", f"cannot read the file ({exc.strerror or exc})", None


class _Claims:
    """Which file already annotates an image, as the store had it before this run plus this run.

    A stored claim lapses when its file is pruned or changed (it claims its image anew when its
    turn comes). Whether a file further down the list changed is learnt by hashing it early.
    A file skipped this time (still being written) keeps its claim; the caller defers a file
    whose image such a file holds.
    """

    def __init__(self, stored: dict[str, str], gone: list[str], listed: dict[str, Path], last_sha: dict[str, str],
                 skipped: set[str]):
        self.stored, self.gone, self.listed, self.last_sha = stored, set(gone), listed, last_sha
        self.run: dict[str, str] = {}  # image_id -> file accepted in this run
        self.changed: dict[str, bool] = {}  # files settled so far -> whether they changed
        self.skipped = skipped  # files not read this time

    def owner(self, image_id: str, key: str) -> str | None:
        """The other file that holds this image, or None."""
        owner = self.run.get(image_id)
        if owner is not None:
            return owner
        owner = self.stored.get(image_id)
        if owner is None or owner == key or owner in self.gone:
            return None
        if owner in self.skipped:
            return owner
        if owner in self.listed:
            changed = self.changed.get(owner)
            if changed is None:
                try:
                    data, error, _ = _read(self.listed[owner])
                except FileNotFoundError:  # gone since the listing: it holds nothing any more
                    return None
                changed = error is not None or self.last_sha.get(owner) != hashlib.sha256(data).hexdigest()
            if changed:
                return None
        return owner


def _worker_count(workers: int | None, n_files: int) -> int:
    if workers is not None:
        return max(1, workers)
    if n_files < POOL_MIN_FILES or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return min(len(os.sched_getaffinity(0)), 8)


def _examine_all(context: _Context, items: list[tuple[Path, str, str]], workers: int) -> Iterator[_Examined]:
    """_examine over every file, in file order: in this process, or in a pool of forked workers."""
    if workers <= 1:
        for item in items:
            yield _examine(context, *item)
        return
    # fork: the workers inherit the context and the file list, so only (start, stop) ranges go
    # out and results come back, a chunk per message. They write nothing.
    chunks = [(start, min(start + _POOL_CHUNK, len(items))) for start in range(0, len(items), _POOL_CHUNK)]
    with multiprocessing.get_context("fork").Pool(workers, _set_worker_state, (context, items)) as pool:
        for results in pool.imap(_examine_chunk, chunks):
            yield from results


_worker_state: tuple[_Context, list[tuple[Path, str, str]]] | None = None


def _set_worker_state(context: _Context, items: list[tuple[Path, str, str]]) -> None:
    global _worker_state
    _worker_state = context, items


def _examine_chunk(bounds: tuple[int, int]) -> list[_Examined]:
    context, items = _worker_state
    return [_examine(context, *items[i]) for i in range(*bounds)]


@dataclass
class _Scan:
    json: list[Path]  # every *.json, sorted as paths sort
    files: dict[str, Snapshot | None]  # with stat: every file listed -> its snapshot (None: stat failed)
    unreadable: list[str]  # sub-folders that could not be listed

    def unlisted(self, prefix: str, cut: int) -> list[str]:
        """Store-key prefixes of the folders that could not be listed (their files are not missing)."""
        return [prefix + folder[cut:].replace(os.sep, "/") + "/" for folder in self.unreadable]


def _scan(root: Path, quarantine_dir: Path, stat: bool) -> _Scan:
    """Every file under root (hidden ones, hidden folders and the quarantine are not intake),
    with its snapshot when ``stat``. A root that cannot be listed is FolderUnavailable; a
    sub-folder that cannot be listed is noted and left alone."""
    found: list[str] = []
    files: dict[str, Snapshot | None] = {}
    unreadable: list[str] = []
    quarantine, top = str(quarantine_dir), str(root)

    def failed(exc: OSError) -> None:
        if exc.filename is None or os.path.normpath(exc.filename) == top:
            raise FolderUnavailable(f"{display_path(root)}: cannot list the intake folder "
                                    f"({exc.strerror or exc})") from None
        unreadable.append(os.path.normpath(exc.filename))

    for dirpath, dirnames, filenames in os.walk(top, onerror=failed):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and os.path.join(dirpath, d) != quarantine)
        for name in filenames:
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            if stat:
                try:
                    files[full] = Snapshot.of(os.stat(full))
                except FileNotFoundError:
                    continue  # gone since the listing (a dangling link is no intake file either)
                except OSError:
                    files[full] = None  # e.g. a link loop: reading it will say why
            if name.lower().endswith(".json"):
                found.append(full)
    found.sort(key=lambda p: p.split(os.sep))  # Path order: part by part (not "a-b" before "a/b")
    return _Scan([Path(p) for p in found], files, unreadable)


# ----- one file ---------------------------------------------------------------------------
def _examine(context: _Context, path: Path, key: str, rel: str) -> _Examined:
    """Read, hash and (when it changed) check one file; no store access, so it runs in workers."""
    try:
        data, error, snap = _read(path)
    except FileNotFoundError:
        return _Examined("", skipped=("vanished", f"{key}: disappeared before it was read"))
    if context.settle > 0 and error is None:
        expected = context.stable.get(str(path))
        if expected is not None and snap != expected:
            return _Examined("", skipped=("still_being_written", f"{key}: changed while it was read; a later "
                                          "run takes it"))
    # An unreadable file gets a hash no content has: once readable it is read again.
    sha = hashlib.sha256(data).hexdigest() if error is None else _UNREADABLE_SHA
    if context.last_sha.get(key) == sha:
        return _Examined(sha, unchanged=True)
    batch_id = schema.short_hash(context.source, key, sha, length=12)
    try:
        if error:
            raise _Reject("file_unreadable", error)
        doc, persons, notes, image, image_from, file_name, info = _check_file(context, path, rel, data)
    except _Reject as problem:
        return _Examined(sha, batch_id=batch_id, problem=problem, data=data, snapshot=snap)
    except _Unsettled as wait:
        return _Examined(sha, skipped=(wait.reason, f"{key}: {wait.detail}; a later run takes it"))
    # The main process claims the image (duplicate check) and stores it before the person checks
    # below can still reject the file, as it always did.
    try:
        accepted = _accept(context, key, rel, batch_id, doc, persons, notes, image_from, file_name, info)
    except _Reject as problem:
        return _Examined(sha, batch_id=batch_id, problem=problem, data=data, image=image, image_sha=info.sha256,
                         image_format=info.format, snapshot=snap)
    return _Examined(sha, batch_id=batch_id, image=image, image_sha=info.sha256, image_format=info.format,
                     accepted=accepted)


def _check_file(context: _Context, path: Path, rel: str, data: bytes) -> tuple:
    """Parse, group the people and get and probe the image: everything up to storing the image."""
    root = context.root
    if os.path.islink(path) and not path.resolve().is_relative_to(root):
        raise _Reject("path_escapes", f"the json file is a link to {path.resolve()}, outside the intake folder")
    try:
        doc = labelme_format.load(data)
    except ValidationError as exc:
        reason, fld, index, detail = labelme_format.describe_error(exc, data)
        raise _Reject(reason, detail, fld, index) from None
    notes: list[str] = []
    persons = _persons(doc["shapes"], notes)
    image, image_from, file_name = _image_bytes(doc, context, path, rel)
    try:
        info = probe(image)
    except ImageProblem as problem:
        where = "imageData" if image_from == "imageData" else f"imagePath '{doc.get('imagePath')}'"
        raise _Reject(problem.reason, f"{where}: {problem.message}",
                      "imageData" if image_from == "imageData" else "imagePath") from None
    for name, real in (("imageWidth", info.width), ("imageHeight", info.height)):
        declared = doc.get(name)
        if declared is None:
            notes.append("image_size_from_image")
        elif declared != real:
            raise _Reject("size_mismatch", f"{name} is {declared} but the image is {info.width}x{info.height}", name)
    _check_inside_image(persons, info.width, info.height)
    return doc, persons, notes, image, image_from, file_name, info


def _accept(context: _Context, key: str, rel: str, batch_id: str, doc: dict, persons: list[_Person],
            notes: list[str], image_from: str, file_name: str, info: Any) -> _Accepted:
    """The file's image row and people, or the person check that fails."""
    image_id = schema.image_id_from_sha256(info.sha256)
    provenance = {"labelme_version": doc.get("version"), "imagePath": doc.get("imagePath"), "image_from": image_from}
    extra = {k: v for k, v in doc.items() if k not in labelme_format.FILE_FIELDS}
    if extra:
        provenance["extra"] = {k: v for k, v in extra.items() if k not in ("lineColor", "fillColor")}
    image_row = {
        "image_id": image_id, "source": context.source, "source_image_id": None, "file_name": file_name,
        "width": info.width, "height": info.height, "sha256": info.sha256, "format": info.format,
        "num_bytes": info.num_bytes, "license": None, "provenance": records.to_json(provenance), "split": None,
        "source_file": key, "record_index": 0, "batch_id": batch_id, "provenance_from": image_from,
    }
    flags = doc.get("flags")
    crowd_image = bool(flags and flags.get(convention.CROWD_FLAG) is True)
    return _instances(persons, image_id, context.source, rel, key, batch_id, context.annotator,
                      info.width, info.height, crowd_image, image_row, notes)


def _kind(shape: dict) -> str:
    return shape.get("shape_type") or "polygon"  # early 3.x files have no shape_type: polygons


def _label_where(index: int, shape: dict) -> str:
    return f"shape #{index} (label '{shape['label']}', {_kind(shape)})"


def _persons(shapes: list[dict], notes: list[str]) -> list[_Person]:
    """Group the shapes into people following the convention, or raise the first problem."""
    groups: dict[int | None, _Person] = {}
    joint_index, parse_joint_label = convention.JOINT_INDEX, convention.parse_joint_label
    # Most labels are exact joint names: looked up here without a call.
    parsed = [(label, False) if label in joint_index else parse_joint_label(label)
              for label in [s["label"] for s in shapes]]
    if shapes and not any(j for j, _ in parsed) and not any(
            s.get("group_id") is not None and convention.is_person_label(s["label"]) for s in shapes):
        kinds = Counter(f"{_kind(s)} '{s['label']}'" for s in shapes)
        found = ", ".join(f"{n} x {k}" if n > 1 else k for k, n in kinds.most_common(6))
        raise _Reject("no_keypoints", f"no keypoints: none of the {len(shapes)} shapes is a joint point or a "
                      f"person rectangle with a group_id (found {found}); label joints with their COCO names")
    isfinite = math.isfinite
    is_person_label, is_occluded = convention.is_person_label, convention.is_occluded
    occluded_v, visible_v = schema.VISIBILITY_OCCLUDED, schema.VISIBILITY_VISIBLE
    for i, shape in enumerate(shapes):
        raw = shape
        get = shape.get
        points = shape["points"]
        for k, pt in enumerate(points):
            if len(pt) != 2:
                raise _Reject("bad_point_count", f"{_label_where(i, shape)}: point #{k} has {len(pt)} values, "
                              "expected [x, y]", f"shapes[{i}].points", i, raw)
            if not (isfinite(pt[0]) and isfinite(pt[1])):
                raise _Reject("nonfinite_coordinate", f"{_label_where(i, shape)}: point #{k} is {pt}",
                              f"shapes[{i}].points", i, raw)
        joint, suffix = parsed[i]
        is_person = joint is None and is_person_label(shape["label"])
        if joint is None and not is_person:
            hint = convention.suggest(shape["label"])
            detail = f"{_label_where(i, shape)}: unknown label '{shape['label']}'"
            detail += f"; did you mean '{hint}'?" if hint else "; expected 'person' or a COCO joint name"
            raise _Reject("unknown_label", detail, f"shapes[{i}].label", i, raw)
        group_id = get("group_id")
        if group_id is not None and not -2**63 <= group_id < 2**63:  # stored as int64 ids
            raise _Reject("bad_type", f"{_label_where(i, shape)}: group_id {group_id} does not fit in 64 bits",
                          f"shapes[{i}].group_id", i, raw)
        person = groups.get(group_id)
        if person is None:
            person = groups[group_id] = _Person(group_id, i)
        extra = None
        if not shape.keys() <= _NOT_EXTRA:  # keys the model does not declare, less the dropped ones
            extra = {k: v for k, v in shape.items() if k not in _NOT_EXTRA and v not in (None, False, [], {}, "")}
        kind = get("shape_type") or "polygon"  # as _kind
        flags = get("flags")
        if is_person:
            if kind != "rectangle":
                raise _Reject("wrong_shape_type", f"{_label_where(i, shape)}: a person box must be a rectangle",
                              f"shapes[{i}].shape_type", i, raw)
            if len(points) not in (2, 4):
                raise _Reject("bad_point_count", f"{_label_where(i, shape)}: a rectangle needs 2 points "
                              f"(or 4 corners), got {len(points)}", f"shapes[{i}].points", i, raw)
            if person.box is not None:
                raise _Reject("ambiguous_person", f"{_label_where(i, shape)}: group_id {group_id} already has "
                              f"a person rectangle (shape #{person.box_shape})", f"shapes[{i}].group_id", i, raw)
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            x0, y0 = min(xs), min(ys)
            person.box = [x0, y0, round(max(xs) - x0, BOX_DECIMALS), round(max(ys) - y0, BOX_DECIMALS)]
            person.box_shape = i
            person.crowd = bool(flags and flags.get(convention.CROWD_FLAG) is True)
            if extra:
                person.extras["person"] = extra
            continue
        if kind != "point":
            raise _Reject("wrong_shape_type", f"{_label_where(i, shape)}: the joint '{joint}' must be a point shape",
                          f"shapes[{i}].shape_type", i, raw)
        if len(points) != 1:
            raise _Reject("bad_point_count", f"{_label_where(i, shape)}: a point needs 1 point, got "
                          f"{len(points)}", f"shapes[{i}].points", i, raw)
        j = joint_index[joint]
        if j in person.joints:
            group = "without group_id" if group_id is None else f"with group_id {group_id}"
            raise _Reject("duplicate_joint", f"{_label_where(i, shape)}: '{joint}' appears twice in the person "
                          f"{group} (shapes #{person.joints[j][3]} and #{i})", f"shapes[{i}].label", i, raw)
        occluded, how = is_occluded(flags, get("difficult"), get("description"), suffix)
        if how:
            notes.append(how)
        x, y = points[0]
        person.joints[j] = (x, y, occluded_v if occluded else visible_v, i)
        if extra:
            person.extras[joint] = extra
    loose = groups.pop(None, None)
    if loose is not None:
        if len(groups) > 1:
            i = loose.first_shape
            raise _Reject("ambiguous_person", f"{_label_where(i, shapes[i])}: no group_id, and the image has "
                          f"{len(groups)} people (group_ids {sorted(groups)}); give every shape its person's group_id",
                          f"shapes[{i}].group_id", i, shapes[i])
        if len(groups) == 1:
            _merge(next(iter(groups.values())), loose, shapes)
        else:
            groups[None] = loose
    return list(groups.values())


def _merge(person: _Person, loose: _Person, shapes: list[dict]) -> None:
    """Shapes without group_id in a one-person image belong to that person."""
    for j, value in loose.joints.items():
        if j in person.joints:
            i = value[3]
            raise _Reject("duplicate_joint", f"{_label_where(i, shapes[i])}: '{convention.JOINTS[j]}' appears "
                          f"twice in the image's only person (shapes #{person.joints[j][3]} and #{i})",
                          f"shapes[{i}].label", i)
        person.joints[j] = value
    if loose.box is not None:
        if person.box is not None:
            i = loose.box_shape
            raise _Reject("ambiguous_person", f"{_label_where(i, shapes[i])}: a second person rectangle "
                          f"without group_id", f"shapes[{i}].group_id", i)
        person.box, person.box_shape, person.crowd = loose.box, loose.box_shape, loose.crowd
    person.extras.update(loose.extras)
    person.first_shape = min(person.first_shape, loose.first_shape)


def _image_bytes(doc: dict, context: _Context, path: Path, rel: str) -> tuple[bytes, str, str]:
    """(image bytes, where they came from, file_name for the store)."""
    root = context.root
    declared_path = doc.get("imagePath")
    image_path = (declared_path or "").replace("\\", "/")
    text = doc.get("imageData")
    if text:
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Reject("bad_image_data", f"imageData is not valid base64 ({exc})", "imageData") from None
        name = _confined_name(root, path, image_path, follow_links=False)  # only a name: nothing is read
        if not name:  # pathlib only here: it is slow for per-file code
            rel_path = PurePosixPath(rel)
            name = (rel_path.parent / (rel_path.stem + ".img")).as_posix()
        return data, "imageData", name
    if not image_path:
        raise _Reject("image_missing", "imageData is null and imagePath is empty: the file names no image", "imagePath")
    name = _confined_name(root, path, image_path)
    if name is None:
        raise _Reject("path_escapes", f"imagePath '{declared_path}' points outside the intake folder", "imagePath")
    full = os.path.join(root, name)
    try:
        with open(full, "rb") as fh:
            data = fh.read()
            if context.settle > 0:
                _check_image_settled(context, full, name, Snapshot.of(os.fstat(fh.fileno())))
            return data, "imagePath", name
    except FileNotFoundError:
        raise _Reject("image_missing", f"imagePath '{declared_path}': {name} does not exist in the intake folder",
                      "imagePath") from None
    except OSError as exc:
        raise _Reject("image_unreadable", f"imagePath '{declared_path}': cannot read {name} "
                      f"({exc.strerror or exc})", "imagePath") from None


def _check_image_settled(context: _Context, full: str, name: str, snap: Snapshot) -> None:
    """The image a json names is taken under the same settle rule as the json itself."""
    expected = context.stable.get(full, False)
    if expected is not False:  # listed and stable: it must not have changed since
        if expected is not None and snap != expected:
            raise _Unsettled("image_still_being_written", f"its image {name} changed while it was read")
        return
    waiting = context.unsettled.get(full)
    if waiting is None:  # not listed (it arrived since, or lies in a hidden folder): judged now, by its age
        waiting = decide({full: snap}, {}, context.clock(), context.settle)[0].unsettled.get(full)
    if waiting is not None:
        raise _Unsettled("image_still_being_written", f"its image {name} is still being written ({waiting.why})")


def _confined_name(root: Path, json_path: Path, image_path: str, follow_links: bool = True) -> str | None:
    """The image's path relative to the intake folder, or None when it would leave it."""
    if not image_path or image_path.startswith("/") or (len(image_path) > 1 and image_path[1] == ":"):
        return None
    base = str(root) + os.sep
    candidate = os.path.normpath(os.path.join(os.path.dirname(json_path), image_path))
    # Lexically inside, and still inside once links are followed (string ops: this runs per file).
    if not candidate.startswith(base) or (follow_links and not _real_inside(base, candidate)):
        return None
    return candidate[len(base):].replace(os.sep, "/")


def _real_inside(base: str, candidate: str) -> bool:
    """Whether ``candidate`` (normalised, lexically under ``base``) stays under it with links followed.

    ``base`` is the resolved intake folder, so only the parts below it can be links: one lstat per
    part there instead of realpath's lstat of every part from ``/``; realpath only when one is a link.
    """
    part = base[:-1]
    for name in candidate[len(base):].split(os.sep):
        part = part + os.sep + name
        if os.path.islink(part):
            return os.path.realpath(candidate).startswith(base)
    return True


def _check_inside_image(persons: list[_Person], width: int, height: int) -> None:
    lo_x, lo_y, hi_x, hi_y = -EDGE_TOLERANCE, -EDGE_TOLERANCE, width + EDGE_TOLERANCE, height + EDGE_TOLERANCE
    for p in persons:
        for j, (x, y, _, i) in p.joints.items():
            if not (lo_x <= x <= hi_x and lo_y <= y <= hi_y):
                raise _Reject("keypoint_outside_image", f"shape #{i} (label '{convention.JOINTS[j]}'): ({x:g}, {y:g}) "
                              f"is outside the {width}x{height} image", f"shapes[{i}].points", i)
        if p.box is not None:
            x, y, w, h = p.box
            if x < lo_x or y < lo_y or x + w > hi_x or y + h > hi_y:
                raise _Reject("bbox_outside_image", f"shape #{p.box_shape} (label 'person'): rectangle "
                              f"{_fmt_box(p.box)} is outside the {width}x{height} image",
                              f"shapes[{p.box_shape}].points", p.box_shape)


def _fmt_box(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def _instances(persons: list[_Person], image_id: str, source: str, rel: str, key: str, batch_id: str,
               annotator: str | None, width: int, height: int, crowd_image: bool, image_row: dict,
               notes: list[str]) -> _Accepted:
    keypoints: list[float] = []
    boxes: list[float] = []
    rows: list[tuple] = []
    persons = sorted(persons, key=lambda q: q.first_shape)
    ids = schema.instance_ids(source, [p.key for p in persons], f"labelme:{rel}:")  # one call per file
    for p, instance_id in zip(persons, ids):
        person_notes = []
        flat = [0.0] * (schema.NUM_JOINTS * 3)
        for j, (x, y, v, _) in p.joints.items():
            k = 3 * j
            flat[k] = x  # three stores: quicker than a slice assignment
            flat[k + 1] = y
            flat[k + 2] = v
        if p.box is None:
            joints = np.array(flat, dtype=np.float32).reshape(schema.NUM_JOINTS, 3)
            box = records.bbox_from_keypoints(joints, width, height)
            if box[2] <= 0 or box[3] <= 0:
                i = p.first_shape
                who = f"group_id {p.key}" if p.key is not None else "the person without group_id"
                raise _Reject("implausible_person", f"{who}: {len(p.joints)} joint(s) and no person rectangle "
                              "give no box; draw a 'person' rectangle with the same group_id",
                              f"shapes[{i}].group_id", i)
            person_notes.append("bbox_derived_from_joints")
        else:
            box = p.box
            x, y, w, h = box
            if w <= 0 or h <= 0:
                raise _Reject("bbox_invalid", f"shape #{p.box_shape} (label 'person'): rectangle {_fmt_box(box)} "
                              "has no area", f"shapes[{p.box_shape}].points", p.box_shape)
            lo_x, hi_x = x - w * PERSON_BOX_SLACK, x + w * (1 + PERSON_BOX_SLACK)
            lo_y, hi_y = y - h * PERSON_BOX_SLACK, y + h * (1 + PERSON_BOX_SLACK)
            for j, (jx, jy, _, i) in p.joints.items():
                if not (lo_x <= jx <= hi_x and lo_y <= jy <= hi_y):
                    raise _Reject("implausible_person", f"shape #{i} (label '{convention.JOINTS[j]}'): "
                                  f"({jx:g}, {jy:g}) "
                                  f"is far outside its person rectangle {_fmt_box(box)} (group_id {p.key}); "
                                  "is the group_id right?", f"shapes[{i}].group_id", i)
        keypoints += flat
        boxes += box
        person_notes.append("area_derived_from_bbox")
        notes.extend(person_notes)
        attrs: dict[str, Any] = {"group_id": p.key}
        if p.extras:
            attrs["shape_extras"] = p.extras
        rows.append((instance_id, float(box[2] * box[3]),
                     p.crowd or crowd_image, p.key, person_notes, records.to_json(attrs), p.first_shape,
                     len(p.joints),  # every joint held is labelled (v is 1 or 2)
                     image_id, source, "coco17", key, annotator, batch_id))
    # array.array packs a short list several times faster than numpy, to the same native bytes.
    return _Accepted(image_row, rows, array("f", keypoints).tobytes(), array("d", boxes).tobytes(), notes)


# ----- rejects, batches, staging --------------------------------------------------------------
def _record_reject(report: IntakeReport, rejects: records.Rejects, key: str, rel: str, problem: _Reject,
                   data: bytes) -> FileOutcome:
    message = f"{key}: {problem.detail}"
    raw = problem.raw
    if isinstance(raw, dict):  # a shape
        raw = labelme_format.shape_raw(raw)
    if raw is None:
        raw = _raw_file(data)
    rejects.add("file", rel, problem.shape_index, problem.field, problem.reason, message, raw)
    report.files_rejected += 1
    report.reasons[problem.reason] += 1
    outcome = FileOutcome(key, rel, "rejected", reason=problem.reason, field=problem.field,
                          shape_index=problem.shape_index, message=message)
    report.files.append(outcome)
    return outcome


def _raw_file(data: bytes) -> str:
    """The file for the reject row, without embedded image bytes, cut to a readable size."""
    try:
        doc = orjson.loads(data)
        if isinstance(doc, dict) and isinstance(doc.get("imageData"), str):
            doc["imageData"] = f"<{len(doc['imageData'])} base64 characters>"
        text = orjson.dumps(doc).decode()
    except orjson.JSONDecodeError:
        text = data.decode("utf-8", "replace")
    return text if len(text) <= _RAW_LIMIT else text[:_RAW_LIMIT] + "..."


def _batch_row(source: str, key: str, batch_id: str, sha: str, people: int | None, params: str) -> dict[str, Any]:
    """The file's batches row: one image and its people when accepted (people is not None)."""
    images = 0 if people is None else 1
    return {
        "batch_id": batch_id, "source": source, "source_file": key, "file_sha256": sha, "format": FORMAT,
        "images_read": images, "images_accepted": images, "images_rejected": 0,
        "annotations_read": people or 0, "annotations_accepted": people or 0, "annotations_rejected": 0,
        "files_rejected": int(people is None), "params": params,
    }


def _tables(staged: dict[str, list], accepted: list[_Accepted]) -> dict[str, pa.Table]:
    for row in staged["images"]:
        row.pop("provenance_from", None)
    if accepted:
        values = zip(*(row for a in accepted for row in a.instances))
        columns: dict[str, list] = {name: [] for name in _INSTANCE_COLUMNS}  # files without people give none
        columns.update((name, list(column)) for name, column in zip(_INSTANCE_COLUMNS, values))
        kp = np.frombuffer(b"".join(a.keypoints for a in accepted), dtype=np.float32).reshape(-1, schema.NUM_JOINTS, 3)
        boxes = np.frombuffer(b"".join(a.boxes for a in accepted), dtype=np.float64).reshape(-1, 4)
        instances = records.instances_table(columns, kp, boxes)
    else:
        instances = schema.empty_table("instances")
    rejects = pa.Table.from_pylist(staged["rejects"], schema=schema.REJECTS_SCHEMA) if staged["rejects"] \
        else schema.empty_table("rejects")
    return {
        "images": records.images_table(staged["images"]),
        "instances": instances,
        "rejects": rejects,
        "batches": pa.Table.from_pylist(staged["batches"], schema=schema.BATCHES_SCHEMA),
    }


def _missing(tx: Transaction, folder_key: str, seen: set[str], report: IntakeReport, prune: bool,
             unlisted: list[str] = ()) -> list[str]:
    """Files of this folder the source holds that are gone now: reported, and pruned only when asked.
    Files under a sub-folder that could not be listed (``unlisted`` key prefixes) are not gone."""
    batches = tx.current["batches"]
    if batches.num_rows == 0:
        return []
    last: dict[str, dict] = {}
    cols = batches.select(["source_file", "format", "files_rejected"]).to_pydict()
    for f, fmt, rej in zip(cols["source_file"], cols["format"], cols["files_rejected"]):
        if fmt == FORMAT:
            last[f] = {"rejected": bool(rej)}
    prefix = folder_key.rstrip("/") + "/"
    gone = []
    for f in sorted(last):
        if f in seen or not f.startswith(prefix) or f.startswith(tuple(unlisted)):
            continue
        if last[f]["rejected"]:
            report.missing.append({"file": f, "state": "quarantined",
                                   "action": "its rejection stays listed until a fixed file is dropped in"})
        elif prune:
            report.missing.append({"file": f, "state": "deleted", "action": "pruned: its records were removed"})
            report.pruned += 1
            gone.append(f)
        else:
            report.missing.append({"file": f, "state": "deleted",
                                   "action": "its records are kept; run with --prune to remove them"})
    return gone


def _quarantine(root: Path, quarantine_dir: Path, path: Path, data: bytes, outcome: FileOutcome,
                mode: str, report: IntakeReport, snapshot: Snapshot | None) -> str | None:
    """Move (or copy) a rejected file to the quarantine, with a readable ``.errors.txt`` beside it.

    A file that could not be read stays where it is (it is read again next time), and so does one
    that changed since it was read (its new content is read next time): moving either could take
    a file that is still being written away from the folder."""
    if outcome.reason == "file_unreadable":
        report.notes["unreadable_left_in_place"] += 1
        return None
    if mode == "move":
        try:
            now = Snapshot.of(os.stat(path))
        except OSError:
            now = None
        if now is None or now != snapshot:
            report.notes["changed_since_read_left_in_place"] += 1
            return None
    target = quarantine_dir / outcome.relative
    errors = target.with_name(PurePosixPath(outcome.relative).stem + ".errors.txt")
    lines = [
        f"file:    {outcome.file}",
        f"reason:  {outcome.reason} ({schema.REASONS.get(outcome.reason or '', '')})",
    ]
    if outcome.shape_index is not None:
        lines.append(f"shape:   #{outcome.shape_index}")
    if outcome.field:
        lines.append(f"field:   {outcome.field}")
    lines += [f"problem: {outcome.message}", "",
              "Fix the file and drop it into the intake folder again at the same place "
              f"({outcome.relative}); the next `posepipe ingest labelme` replaces this rejection.",
              "Convention: one group_id per person; joints are point shapes named with COCO joint names; "
              "a 'person' rectangle with the same group_id; flag 'occluded' for hidden joints."]
    atomic.write_text(errors, "\n".join(lines) + "\n")
    if mode == "move":
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            return display_path(target)
        except OSError:
            try:
                shutil.move(str(path), str(target))
                return display_path(target)
            except OSError:
                report.notes["quarantine_copied_not_moved"] += 1  # e.g. a read-only intake folder
    atomic.write_bytes(target, data)
    return display_path(target)
