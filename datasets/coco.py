"""Ingestion of COCO-style keypoint files (and MPII's native json) into the store.

Every record read ends up either accepted (images/instances tables) or rejected (rejects table,
with a stable reason code, the field, a one-line message and the raw record). Derived values
(a missing ``area`` or ``iscrowd``) are accepted with a note in the instance's ``notes``, never
silently. Checks over many annotations are vectorised with numpy; per-record Python work is
kept to pulling fields out of the parsed json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import operator
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from . import coco_split, records, schema, skeletons
from .errors import PosepipeError
from .gcpause import gc_paused
from .images import ImageProblem, probe
from .progress import NoProgress, Progress
from .report import IngestReport
from .store import PoseStore, Transaction

# A labelled keypoint further outside the image than this share of the image size is an error.
OUTSIDE_TOLERANCE = 0.10
# Boxes may overhang the image by rounding; more than this share of the image size is an error.
BBOX_TOLERANCE = 0.02
_IMAGE_KEYS = {"id", "file_name", "width", "height", "license"}
_ANNOTATION_KEYS = {
    "id", "image_id", "category_id", "keypoints", "num_keypoints", "bbox", "area", "iscrowd", "segmentation",
}
_IMAGE_CHUNK = 256
_NUMBER_TYPES = {int, float}  # exact types: bool and numeric strings are not coordinates


def display_path(path: Path) -> str:
    """Paths are recorded relative to the working directory when inside it, so stores are portable."""
    resolved = Path(os.path.abspath(path))
    try:
        return resolved.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return resolved.as_posix()


@dataclass
class _Ctx:
    tx: Transaction
    source: str
    file: str
    batch_id: str
    images_dir: Path | None
    finder: _ImageFinder
    split: str | None
    full_verify: bool
    workers: int
    fast: bool
    helper_process: bool
    progress: Progress
    report: IngestReport
    rejects: records.Rejects
    image_rows: list[dict[str, Any]] = field(default_factory=list)
    doc_meta: dict[str, Any] = field(default_factory=dict)  # info and licenses, for exports
    # source image id -> (content image id, width, height); and ids of rejected images
    accepted_images: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    rejected_images: dict[int, str] = field(default_factory=dict)

    def reject(self, kind: str, record_id: Any, index: int | None, field_name: str | None,
               reason: str, detail: str, raw: Any) -> None:
        self.add_rejects([self.reject_row(kind, record_id, index, field_name, reason, detail, raw)])

    def reject_row(self, kind: str, record_id: Any, index: int | None, field_name: str | None,
                   reason: str, detail: str, raw: Any) -> dict[str, Any]:
        what = f"{kind} {record_id}" if record_id is not None else kind
        where = f"{self.file}: {what} (record #{index})" if index is not None else f"{self.file}"
        if field_name:
            where += f", field '{field_name}'"
        return self.rejects.row(kind, record_id, index, field_name, reason, f"{where}: {detail}", raw)

    def add_rejects(self, rows: list[dict[str, Any]]) -> None:
        self.rejects.rows.extend(rows)
        for row in rows:
            self.report.reasons[row["reason"]] += 1

    def reset(self) -> None:
        """Forget everything read so far (the split reader falls back to the one-process reader).

        Images already staged in the store's shard writer stay; staging them again is a no-op."""
        self.image_rows.clear()
        self.doc_meta.clear()
        self.accepted_images.clear()
        self.rejected_images.clear()
        self.rejects.rows.clear()
        fresh = IngestReport(source=self.report.source, file=self.report.file, format=self.report.format,
                             batch_id=self.report.batch_id)
        for f in dataclasses.fields(IngestReport):
            setattr(self.report, f.name, getattr(fresh, f.name))


def ingest_coco(
    store: PoseStore,
    annotations: str | os.PathLike,
    images_dir: str | os.PathLike,
    source: str,
    *,
    skeleton: str | None = None,
    split: str | None = None,
    full_verify: bool = False,
    workers: int = 8,
    progress: Progress | None = None,
    fast: bool = True,
    helper_process: bool = True,
) -> IngestReport:
    """Ingest one COCO keypoint file (or MPII json list) and its images into ``source``.

    ``fast=False`` forces the per-record annotation reader (in this process); ``helper_process``
    lets a large file be split with a forked helper (``coco_split``). The output is the same
    either way (tests compare them).
    """
    path = Path(annotations)
    file_key = display_path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PosepipeError(f"{path}: cannot read annotation file ({exc.strerror or exc})") from None
    images_root = Path(images_dir)
    if not images_root.is_dir():
        raise PosepipeError(f"{images_root}: images folder does not exist")
    if skeleton is not None and skeleton not in skeletons.SKELETONS:
        raise PosepipeError(f"unknown --skeleton {skeleton!r}; known: {', '.join(sorted(skeletons.SKELETONS))}")
    # hashlib releases the GIL on large inputs: the file is hashed while the store is opened.
    hasher = ThreadPoolExecutor(max_workers=1)
    hashing = hasher.submit(lambda: hashlib.sha256(data).hexdigest())
    hasher.shutdown(wait=False)  # the submitted hash still runs to the end
    with gc_paused(), store.transaction(source) as tx:
        file_sha = hashing.result()
        report = IngestReport(source=source, file=file_key, format="coco")
        if tx.file_sha256(file_key) == file_sha:
            return _unchanged_report(tx, report, file_key)
        report.batch_id = schema.short_hash(source, file_key, file_sha, length=12)
        ctx = _Ctx(
            tx=tx, source=source, file=file_key, batch_id=report.batch_id, images_dir=images_root,
            finder=_ImageFinder(images_root),
            split=split, full_verify=full_verify, workers=workers, fast=fast, helper_process=helper_process,
            progress=progress or NoProgress(),
            report=report, rejects=records.Rejects(source, file_key, report.batch_id),
        )
        instances = _read_file(ctx, data, skeleton)
        if report.fatal and tx.file_sha256(file_key) is not None:
            # Keep what the last good version of this file gave; say so instead of dropping it.
            report.fatal += " (the records from its previous version are kept)"
            return report
        if report.fatal:
            instances = schema.empty_table("instances")
        report.files_rejected = ctx.rejects.count("file")
        report.check_balance()
        batch = _batch_row(ctx, file_sha, skeleton)
        tx.replace_file(
            file_key,
            {
                "images": records.images_table(ctx.image_rows),
                "instances": instances,
                "rejects": ctx.rejects.table(),
                "batches": batch,
            },
        )
        return report


def _read_file(ctx: _Ctx, data: bytes, skeleton: str | None):
    """The instances table of a parsed file (None when it is unusable).

    The parsed document lives only in this call: it is freed on return, while the cyclic
    collector is still paused, so the collector never walks it."""
    if ctx.fast and ctx.helper_process and coco_split.usable(data):
        table = coco_split.read(ctx, data, skeleton)
        if table is not coco_split.DECLINED:
            return table
    try:
        doc = _parse_json(data)
    except ValueError as exc:
        _fatal(ctx, "invalid_json", f"not valid json ({exc}); the file may be truncated", data[:2000])
        return None
    if isinstance(doc, list):
        ctx.report.format = "mpii"
        return _read_mpii(ctx, doc, skeleton)
    return _read_coco(ctx, doc, skeleton)


def _fatal(ctx: _Ctx, reason: str, detail: str, raw: Any) -> None:
    if isinstance(raw, bytes):  # a broken file is kept as its first bytes, not whole
        raw = raw.decode("utf-8", "replace")
    ctx.reject("file", None, None, None, reason, detail, raw)
    ctx.report.fatal = f"{ctx.file}: {detail}"


def _parse_json(data: bytes) -> Any:
    """orjson for speed; Python's json as a fallback because files written by Python may hold
    NaN or Infinity literals, which must reach validation (and be rejected per record)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(str(exc)) from None


def _unchanged_report(tx: Transaction, report: IngestReport, file_key: str) -> IngestReport:
    batches = tx.current["batches"].to_pylist()
    last = [b for b in batches if b["source_file"] == file_key][-1]
    report.unchanged = True
    report.batch_id = last["batch_id"]
    report.format = last["format"]
    for key in ("images_read", "images_accepted", "images_rejected", "annotations_read",
                "annotations_accepted", "annotations_rejected", "files_rejected"):
        setattr(report, key, int(last[key]))
    return report


def _batch_row(ctx: _Ctx, file_sha: str, skeleton: str | None):
    r = ctx.report
    row = {
        "batch_id": ctx.batch_id, "source": ctx.source, "source_file": ctx.file, "file_sha256": file_sha,
        "format": r.format, "images_read": r.images_read, "images_accepted": r.images_accepted,
        "images_rejected": r.images_rejected, "annotations_read": r.annotations_read,
        "annotations_accepted": r.annotations_accepted, "annotations_rejected": r.annotations_rejected,
        "files_rejected": r.files_rejected,
        "params": records.to_json({"skeleton": skeleton, "split": ctx.split, **ctx.doc_meta}),
    }
    return pa.Table.from_pylist([row], schema=schema.BATCHES_SCHEMA)


# ----- COCO ---------------------------------------------------------------------------------
def _read_coco(ctx: _Ctx, doc: Any, skeleton_name: str | None):
    if not isinstance(doc, dict):
        _fatal(ctx, "bad_structure", f"top level is {type(doc).__name__}, expected an object with "
               "'images', 'annotations' and 'categories'", None)
        return None
    for key in ("images", "annotations", "categories"):
        if key not in doc:
            _fatal(ctx, "missing_key", f"missing top-level key '{key}'", {k: "..." for k in doc})
            return None
        if not isinstance(doc[key], list):
            _fatal(ctx, "bad_structure", f"top-level '{key}' is {type(doc[key]).__name__}, expected a list", None)
            return None
    ctx.doc_meta = {"info": doc.get("info"), "licenses": doc.get("licenses")}
    annotations = doc["annotations"]
    category_id, skel = _person_category(ctx, doc["categories"], annotations, skeleton_name)
    if skel is None:
        ctx.report.images_read = len(doc["images"])
        ctx.report.annotations_read = len(annotations)
        # Nothing can be trusted without a skeleton; every record is accounted for as rejected.
        for i, rec in enumerate(doc["images"]):
            ctx.reject("image", _rid(rec), i, None, "unknown_skeleton", "file has no usable skeleton", rec)
        for i, rec in enumerate(annotations):
            ctx.reject("annotation", _rid(rec), i, None, "unknown_skeleton", "file has no usable skeleton", rec)
        ctx.report.images_rejected = len(doc["images"])
        ctx.report.annotations_rejected = len(annotations)
        return None
    _read_images(ctx, doc["images"])
    return _read_annotations(ctx, annotations, category_id, skel)


def _rid(rec: Any) -> Any:
    return rec.get("id") if isinstance(rec, dict) else None


def _person_category(ctx: _Ctx, categories: list, annotations: list, skeleton_name: str | None):
    cats = [c for c in categories if isinstance(c, dict)]
    with_kp = [c for c in cats if isinstance(c.get("keypoints"), list)]
    persons = [c for c in with_kp if c.get("name") == "person"] or with_kp or [c for c in cats if c.get("name") == "person"]
    if not persons:
        _fatal(ctx, "no_person_category", "no category declares keypoints (and none is named 'person')", categories)
        return None, None
    cat = persons[0]
    category_id = cat.get("id")
    if skeleton_name:
        return category_id, skeletons.get(skeleton_name)
    first = next((a for a in annotations if isinstance(a, dict) and isinstance(a.get("keypoints"), list)), None)
    names = [str(n) for n in cat.get("keypoints") or []]
    skel = skeletons.detect(names, len(first["keypoints"]) if first else None, set(first) if first else set())
    if skel is None and names:
        normalised = tuple(skeletons._norm(n) for n in names)
        if len(set(normalised) & set(schema.COCO17_JOINTS)) >= 4:
            # Unknown layout whose names include COCO joints: map by name, keep the rest as extras.
            skel = skeletons.Skeleton(f"custom{len(names)}", normalised)
    if skel is None:
        detail = (f"keypoint names {names[:6]}{'...' if len(names) > 6 else ''} match no known skeleton"
                  if names else "the category lists no keypoint names and the keypoint count is ambiguous")
        _fatal(ctx, "unknown_skeleton", detail + "; pass --skeleton " + "|".join(sorted(skeletons.SKELETONS)), cat)
    return category_id, skel


class _ImageFinder:
    """The image file for a json ``file_name``, confined to the images folder.

    ``find`` returns (path, None), or (None, "path_escapes") when the name escapes the folder
    (``..``, absolute names, symlinks pointing out). Names that carry the dataset's own root
    (Human-Art's ``HumanArt/images/...``) are found by dropping leading folders; the resolved
    path is recorded in the image's provenance. Each folder is resolved once per ingest and each
    file costs one ``lstat``: only a symlink can lead out of its (resolved) folder.
    """

    def __init__(self, images_dir: Path):
        self.root = os.path.realpath(images_dir)
        self.root_path = Path(self.root)
        self._prefix = self.root.rstrip(os.sep) + os.sep
        self._real_dirs: dict[str, str] = {}

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self._prefix)

    def find(self, file_name: str) -> tuple[Path | None, str | None]:
        name = file_name.replace("\\", "/")
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts or (len(name) > 1 and name[1] == ":"):
            return None, "path_escapes"
        parts = pure.parts
        for start in range(len(parts)):
            folder = os.path.join(self.root, *parts[start:-1])
            real_folder = self._real_dirs.get(folder)
            if real_folder is None:
                real_folder = self._real_dirs[folder] = os.path.realpath(folder)
            candidate = os.path.join(real_folder, parts[-1])
            try:
                mode = os.lstat(candidate).st_mode
            except OSError:
                mode = 0
            is_link = stat.S_ISLNK(mode)
            real = os.path.realpath(candidate) if is_link else candidate
            if not self._inside(real):
                return None, "path_escapes"
            if os.path.isfile(real) if is_link else stat.S_ISREG(mode):
                return Path(real), None
        return self.root_path.joinpath(*parts), None


def _load_image(args: tuple[Path, bool]) -> tuple[bytes | None, Any]:
    path, full = args
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, ImageProblem("image_missing", f"image file {path} does not exist")
    except OSError as exc:
        return None, ImageProblem("image_unreadable", f"cannot read {path} ({exc.strerror or exc})")
    try:
        return data, probe(data, full=full)
    except ImageProblem as problem:
        return None, problem


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_images(ctx: _Ctx, images: list) -> None:
    report = ctx.report
    report.images_read = len(images)
    seen: set[int] = set()
    pending: list[tuple[int, dict, Path, str]] = []
    for i, rec in enumerate(images):
        if not isinstance(rec, dict):
            ctx.reject("image", None, i, None, "bad_type", f"record is {type(rec).__name__}, expected an object", rec)
            continue
        rid = rec.get("id")
        problem = _image_field_problem(rec)
        if problem:
            fld, reason, detail = problem
            ctx.reject("image", rid, i, fld, reason, detail, rec)
            if _is_int(rid):
                ctx.rejected_images.setdefault(rid, reason)
            continue
        if rid in seen:
            ctx.reject("image", rid, i, "id", "duplicate_image_id", f"image id {rid} appears more than once", rec)
            continue
        seen.add(rid)
        path, escape = ctx.finder.find(rec["file_name"])
        if escape:
            ctx.reject("image", rid, i, "file_name", "path_escapes",
                       f"'{rec['file_name']}' points outside the images folder {ctx.images_dir}", rec)
            ctx.rejected_images[rid] = "path_escapes"
            continue
        pending.append((i, rec, path, rec["file_name"]))

    owners = ctx.tx.image_owners()
    by_sha: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=max(1, ctx.workers)) as pool:
        chunks = [pending[k:k + _IMAGE_CHUNK] for k in range(0, len(pending), _IMAGE_CHUNK)]
        iterator = ctx.progress.track(chunks, len(chunks), f"images ({len(pending)})")
        for chunk in iterator:
            loaded = pool.map(_load_image, [(p, ctx.full_verify) for _, _, p, _ in chunk])
            for (i, rec, path, file_name), (data, info) in zip(chunk, loaded):
                rid = rec["id"]
                if isinstance(info, ImageProblem):
                    fld = "file_name"
                    ctx.reject("image", rid, i, fld, info.reason, f"{file_name}: {info.message}", rec)
                    ctx.rejected_images[rid] = info.reason
                    continue
                if (info.width, info.height) != (rec["width"], rec["height"]):
                    ctx.reject("image", rid, i, "width/height", "size_mismatch",
                               f"json says {rec['width']}x{rec['height']} but {file_name} is {info.width}x{info.height}", rec)
                    ctx.rejected_images[rid] = "size_mismatch"
                    continue
                image_id = schema.image_id_from_sha256(info.sha256)
                if image_id in by_sha or (image_id in owners and owners[image_id] != ctx.file):
                    other = f"image id {by_sha[image_id]}" if image_id in by_sha else f"file {owners[image_id]}"
                    ctx.reject("image", rid, i, "file_name", "duplicate_image",
                               f"{file_name} has the same content as {other} already in source {ctx.source}", rec)
                    ctx.rejected_images[rid] = "duplicate_image"
                    continue
                by_sha[image_id] = rid
                ctx.tx.put_image(data, info.sha256, info.format)
                extra = {k: v for k, v in rec.items() if k not in _IMAGE_KEYS}
                resolved = path.relative_to(ctx.finder.root_path).as_posix()
                if resolved != file_name.replace("\\", "/"):
                    extra["resolved_path"] = resolved
                ctx.image_rows.append(
                    {
                        "image_id": image_id, "source": ctx.source, "source_image_id": rid,
                        "file_name": file_name, "width": info.width, "height": info.height,
                        "sha256": info.sha256, "format": info.format, "num_bytes": info.num_bytes,
                        "license": None if rec.get("license") is None else str(rec["license"]),
                        "provenance": records.to_json(extra) if extra else None,
                        "split": ctx.split, "source_file": ctx.file, "record_index": i, "batch_id": ctx.batch_id,
                    }
                )
                ctx.accepted_images[rid] = (image_id, info.width, info.height)
    report.images_accepted = len(ctx.image_rows)
    report.images_rejected = report.images_read - report.images_accepted


def _image_field_problem(rec: dict) -> tuple[str, str, str] | None:
    for key in ("id", "file_name", "width", "height"):
        if key not in rec:
            return key, "missing_field", f"missing '{key}'"
    if not _is_int(rec["id"]):
        return "id", "bad_type", f"id {rec['id']!r} is not an integer"
    if not isinstance(rec["file_name"], str) or not rec["file_name"]:
        return "file_name", "bad_type", f"file_name {rec['file_name']!r} is not a non-empty string"
    for key in ("width", "height"):
        v = rec[key]
        if not _is_int(v):
            return key, "bad_type", f"{key} {v!r} is not an integer"
        if v <= 0:
            return key, "bad_value", f"{key} {v} is not positive"
    return None


@dataclass
class _Sound:
    """Structurally sound annotations, gathered for the vectorised checks."""
    index: list[int]  # record positions in the file
    recs: list[dict]
    keypoints: np.ndarray  # (n, k, 3) float64
    boxes: np.ndarray  # (n, 4)
    sizes: np.ndarray  # (n, 2) width and height of each one's image
    image_ids: list[str]
    kp_field: str  # the keypoints field in use after the last record (Human-Art switches it)
    fast: bool  # read by the column path


@dataclass
class _Part:
    """A run of annotations (the whole file, or one slice of it) checked and turned into rows.

    Structural rejects are already in ``ctx``; vector-check rejects wait in ``vector_rejects``
    as (check rank, record index, row), because the file's order puts them after every
    structural reject, ordered by check and then by record."""
    read: int
    sound: _Sound
    vector_rejects: list[tuple[int, int, dict[str, Any]]]
    table: pa.Table
    note_counts: np.ndarray  # accepted rows per combination of derived-value notes (see _instances)


def _read_annotations(ctx: _Ctx, annotations: list, category_id: Any, skel: skeletons.Skeleton):
    part = _check_annotations(ctx, annotations, category_id, skel)
    finish_annotations(ctx, [part])
    return part.table


def _check_annotations(ctx: _Ctx, annotations: list, category_id: Any, skel: skeletons.Skeleton,
                       offset: int = 0, earlier_ids: frozenset = frozenset()) -> _Part:
    """Check ``annotations`` (records ``offset``... of the file) and build their instance rows.

    ``earlier_ids``: the ids records before ``offset`` took (a copy here is a duplicate)."""
    sound = _sound_columns(ctx, annotations, category_id, skel, offset, earlier_ids) if ctx.fast else None
    if sound is None:
        sound = _sound_records(ctx, annotations, category_id, skel, offset, earlier_ids)
    columns: dict[str, list] = {}
    bad = _vector_checks(sound.keypoints, sound.boxes, sound.sizes, sound.recs, skel, sound.kp_field, columns)
    vector_rejects = []
    for row, (fld, reason, detail, rank) in bad.items():
        rec = sound.recs[row]
        index = sound.index[row]
        vector_rejects.append((rank, index, ctx.reject_row("annotation", rec.get("id"), index, fld, reason, detail, rec)))
    counts = np.zeros(8, dtype=np.int64)
    if not bad:  # the common case: no copies of 250k-row arrays and lists
        table = _instances(ctx, sound.recs, sound.keypoints, sound.boxes, sound.image_ids, skel, sound.index,
                           columns=columns, note_counts=counts)
    else:
        ok = np.ones(len(sound.index), dtype=bool)
        ok[list(bad)] = False
        keep = np.flatnonzero(ok)
        table = _instances(ctx, [sound.recs[r] for r in keep], sound.keypoints[keep], sound.boxes[keep],
                           [sound.image_ids[r] for r in keep], skel, [sound.index[r] for r in keep],
                           note_counts=counts)
    return _Part(len(annotations), sound, vector_rejects, table, counts)


def finish_annotations(ctx: _Ctx, parts: list[_Part]) -> None:
    """Account for the annotations of ``parts`` (in file order) in the report and the rejects."""
    pending = sorted(itertools.chain.from_iterable(p.vector_rejects for p in parts), key=lambda r: r[:2])
    ctx.add_rejects([row for _, _, row in pending])
    report = ctx.report
    report.annotations_read = sum(p.read for p in parts)
    report.annotations_accepted = sum(p.table.num_rows for p in parts)
    report.annotations_rejected = report.annotations_read - report.annotations_accepted
    _add_notes(report, _note_combos(()), sum(p.note_counts for p in parts))


def taken_ids(annotations: list) -> set[int]:
    """The ids these records take, as the per-record loop counts them (for a later duplicate)."""
    return {rid for rec in annotations if isinstance(rec, dict) and _is_int(rid := rec.get("id"))}


def _sound_columns(ctx: _Ctx, anns: list, category_id: Any, skel: skeletons.Skeleton,
                   offset: int = 0, earlier_ids: frozenset = frozenset()) -> _Sound | None:
    """Fast path for a well-formed file: each field pulled for all records at once, checked as a column.

    Returns None as soon as any record would be rejected by ``_sound_records`` (or is unusual in any
    way): that per-record loop stays the single source of reasons, messages and their order.
    """
    n, k = len(anns), skel.num_joints
    if not n or set(map(type, anns)) != {dict}:
        return None
    try:
        ids = [a["id"] for a in anns]
        if set(map(type, ids)) != {int} or len(set(ids)) != n or not earlier_ids.isdisjoint(ids):
            return None
        if not all(map(operator.eq, [a["category_id"] for a in anns], itertools.repeat(category_id))):
            return None
        accepted = ctx.accepted_images
        imgs = [a["image_id"] for a in anns]
        if not all(map(accepted.__contains__, imgs)):
            return None
        kp_field = "keypoints"
        kps = [a["keypoints"] for a in anns]
        if set(map(type, kps)) != {list}:
            return None
        if set(map(len, kps)) != {3 * k}:
            # Human-Art keeps its 21 joints in a second field beside COCO-17's ``keypoints``.
            kp_field = f"keypoints_{k}"
            kps = [a[kp_field] for a in anns]
            if set(map(type, kps)) != {list} or set(map(len, kps)) != {3 * k}:
                return None
            if 3 * k in set(map(len, (a["keypoints"] for a in anns))):
                return None  # a mix of both fields: the per-record loop decides each
        boxes = [a["bbox"] for a in anns]
        if set(map(type, boxes)) != {list} or set(map(len, boxes)) != {4}:
            return None
    except (KeyError, TypeError):  # a missing field, or an unhashable image id
        return None
    flat = itertools.chain.from_iterable
    if not set(map(type, flat(kps))) <= _NUMBER_TYPES or not set(map(type, flat(boxes))) <= _NUMBER_TYPES:
        return None
    # fromiter over the flattened lists is ~1.5x faster than np.array on a list of lists.
    kp_arr = np.fromiter(flat(kps), dtype=np.float64, count=n * 3 * k).reshape(n, k, 3)
    box_arr = np.fromiter(flat(boxes), dtype=np.float64, count=n * 4).reshape(n, 4)
    slot = {img: j for j, img in enumerate(accepted)}
    table = np.array([(w, h) for _, w, h in accepted.values()], dtype=np.float64).reshape(-1, 2)
    sizes = table[np.fromiter(map(slot.__getitem__, imgs), dtype=np.intp, count=n)]
    image_ids = [accepted[img][0] for img in imgs]
    return _Sound(list(range(offset, offset + n)), anns, kp_arr, box_arr, sizes, image_ids, kp_field, True)


def _sound_records(ctx: _Ctx, annotations: list, category_id: Any, skel: skeletons.Skeleton,
                   offset: int = 0, earlier_ids: frozenset = frozenset()) -> _Sound:
    """The careful path: each record checked on its own, structural problems rejected in file order."""
    k = skel.num_joints
    kp_field = "keypoints"
    seen: set[int] = set(earlier_ids)
    # Structurally sound annotations, gathered for the vectorised checks.
    idx: list[int] = []
    kps: list[list] = []
    boxes: list[Any] = []
    sizes: list[tuple[int, int]] = []
    image_ids: list[str] = []
    for i, rec in enumerate(ctx.progress.track(annotations, len(annotations), "annotations"), start=offset):
        if not isinstance(rec, dict):
            ctx.reject("annotation", None, i, None, "bad_type", f"record is {type(rec).__name__}, expected an object", rec)
            continue
        rid = rec.get("id")
        if rid is None:
            ctx.reject("annotation", None, i, "id", "missing_field", "missing 'id'", rec)
            continue
        if not _is_int(rid):
            ctx.reject("annotation", rid, i, "id", "bad_type", f"id {rid!r} is not an integer", rec)
            continue
        if rid in seen:
            ctx.reject("annotation", rid, i, "id", "duplicate_annotation_id", f"annotation id {rid} appears more than once", rec)
            continue
        seen.add(rid)
        if rec.get("category_id") != category_id:
            ctx.reject("annotation", rid, i, "category_id", "not_person_category",
                       f"category_id {rec.get('category_id')!r} is not the person category {category_id}", rec)
            continue
        img = rec.get("image_id")
        unhashable = isinstance(img, (list, dict))  # json arrays and objects are never image ids
        if unhashable or img not in ctx.accepted_images:
            if "image_id" not in rec:
                ctx.reject("annotation", rid, i, "image_id", "missing_field", "missing 'image_id'", rec)
            elif not unhashable and img in ctx.rejected_images:
                ctx.reject("annotation", rid, i, "image_id", "image_rejected",
                           f"image {img} was rejected ({ctx.rejected_images[img]})", rec)
            else:
                ctx.reject("annotation", rid, i, "image_id", "image_not_found", f"image id {img!r} is not in 'images'", rec)
            continue
        kp = rec.get(kp_field)
        if isinstance(kp, list) and len(kp) != 3 * k:
            # Human-Art keeps its 21 joints in a second field beside COCO-17's ``keypoints``.
            alt = rec.get(f"keypoints_{k}")
            if isinstance(alt, list) and len(alt) == 3 * k:
                kp, kp_field = alt, f"keypoints_{k}"
        if kp is None:
            ctx.reject("annotation", rid, i, "keypoints", "missing_field", "missing 'keypoints'", rec)
            continue
        if not isinstance(kp, list) or len(kp) != 3 * k:
            n = len(kp) if isinstance(kp, list) else type(kp).__name__
            ctx.reject("annotation", rid, i, "keypoints", "keypoints_length",
                       f"keypoints has {n} values, expected {3 * k} (3 x {k} joints of {skel.name})", rec)
            continue
        if not set(map(type, kp)) <= _NUMBER_TYPES:
            ctx.reject("annotation", rid, i, "keypoints", "bad_type", "keypoints holds non-numbers", rec)
            continue
        bbox = rec.get("bbox")
        if bbox is None:
            ctx.reject("annotation", rid, i, "bbox", "bbox_missing", "missing 'bbox'", rec)
            continue
        if not isinstance(bbox, list) or len(bbox) != 4 or not set(map(type, bbox)) <= _NUMBER_TYPES:
            ctx.reject("annotation", rid, i, "bbox", "bbox_invalid", f"bbox {bbox!r} is not 4 numbers", rec)
            continue
        image_id, w, h = ctx.accepted_images[img]
        idx.append(i)
        kps.append(kp)
        boxes.append(bbox)
        sizes.append((w, h))
        image_ids.append(image_id)

    n = len(idx)
    kp_arr = np.array(kps, dtype=np.float64).reshape(n, k, 3) if n else np.zeros((0, k, 3))
    box_arr = np.array(boxes, dtype=np.float64).reshape(n, 4) if n else np.zeros((0, 4))
    wh = np.array(sizes, dtype=np.float64).reshape(n, 2)
    return _Sound(idx, [annotations[i - offset] for i in idx], kp_arr, box_arr, wh, image_ids, kp_field, False)


def _vector_checks(kp: np.ndarray, box: np.ndarray, wh: np.ndarray, recs: list[dict],
                   skel: skeletons.Skeleton, kp_field: str,
                   columns: dict[str, list] | None = None) -> dict[int, tuple[str, str, str]]:
    """First problem of each bad row: row -> (field, reason, message detail, check rank).

    Rows are inserted check by check, so the rank (the check's position) orders rows of several
    slices of a file the way one pass over the whole file would. Fields pulled from ``recs`` are
    left in ``columns`` for the table build."""
    bad: dict[int, tuple[str, str, str, int]] = {}
    names = skel.joints
    ranks = itertools.count()

    def flag(mask: np.ndarray, fld: str, reason: str, detail) -> None:
        rank = next(ranks)
        for row in np.flatnonzero(mask):
            if row not in bad:
                bad[int(row)] = (fld, reason, detail(int(row)), rank)

    if len(kp) == 0:
        return bad
    # Per-joint tests spell out x, y (and v): numpy reductions over a length-3 axis are slow.
    xy, x, y, v = kp[..., :2], kp[..., 0], kp[..., 1], kp[..., 2]
    finite = np.isfinite(x) & np.isfinite(y) & np.isfinite(v)
    flag(~finite.all(axis=1), "keypoints", "nonfinite_coordinate",
         lambda r: f"joint {_first(~finite[r])} ({names[_first(~finite[r])]}) is NaN or infinite")
    v_ok = (v == 0) | (v == 1) | (v == 2)  # np.isin sorts: ~10x slower here
    flag(~v_ok.all(axis=1), "keypoints", "bad_visibility",
         lambda r: f"visibility {v[r][_first(~v_ok[r])]!r} at joint {_first(~v_ok[r])} "
                   f"({names[_first(~v_ok[r])]}) is not 0, 1 or 2")
    labelled = v > 0
    neg = labelled & ((x < 0) | (y < 0))
    flag(neg.any(axis=1), "keypoints", "negative_coordinate",
         lambda r: f"joint {_first(neg[r])} ({names[_first(neg[r])]}) is at "
                   f"({xy[r, _first(neg[r]), 0]:g}, {xy[r, _first(neg[r]), 1]:g})")
    limit = wh * (1 + OUTSIDE_TOLERANCE)
    outside = labelled & ((x > limit[:, :1]) | (y > limit[:, 1:]))
    flag(outside.any(axis=1), "keypoints", "keypoint_outside_image",
         lambda r: f"joint {_first(outside[r])} ({names[_first(outside[r])]}) at "
                   f"({xy[r, _first(outside[r]), 0]:g}, {xy[r, _first(outside[r]), 1]:g}) is far outside "
                   f"the {int(wh[r, 0])}x{int(wh[r, 1])} image")
    num_field = "num_keypoints" if kp_field == "keypoints" else f"num_keypoints_{skel.num_joints}"
    counted = labelled[:, : skel.counted_joints or skel.num_joints].sum(axis=1)
    declared = np.array(_numbers(_column(recs, num_field, columns)), dtype=np.float64)
    has_declared = ~np.isnan(declared)
    mismatch = has_declared & (declared != counted)
    flag(mismatch, num_field, "num_keypoints_mismatch",
         lambda r: f"{num_field} is {declared[r]:g} but {counted[r]} joints have v>0")
    finite_box = np.isfinite(box).all(axis=1)
    flag(~finite_box, "bbox", "bbox_invalid", lambda r: f"bbox {box[r].tolist()} has NaN or infinite values")
    neg_box = finite_box & ((box[:, 2] <= 0) | (box[:, 3] <= 0))
    flag(neg_box, "bbox", "bbox_invalid", lambda r: f"bbox {box[r].tolist()} has a non-positive width or height")
    tol = wh * BBOX_TOLERANCE + 1.0
    outside_box = finite_box & (
        (box[:, 0] < -tol[:, 0]) | (box[:, 1] < -tol[:, 1])
        | (box[:, 0] + box[:, 2] > wh[:, 0] + tol[:, 0]) | (box[:, 1] + box[:, 3] > wh[:, 1] + tol[:, 1])
    )
    flag(outside_box, "bbox", "bbox_outside_image",
         lambda r: f"bbox {box[r].tolist()} does not fit the {int(wh[r, 0])}x{int(wh[r, 1])} image")
    areas = np.array(_numbers(_column(recs, "area", columns)), dtype=np.float64)
    flag(~(areas >= 0) & ~np.isnan(areas), "area", "bad_value", lambda r: f"area {recs[r].get('area')!r} is not valid")
    crowd = _column(recs, "iscrowd", columns)
    # Types first: a list (unhashable) must not reach set(crowd).
    if not set(map(type, crowd)) <= {int, bool, type(None)} or not set(crowd) <= {0, 1, None}:
        bad_crowd = np.array([c not in (0, 1, None) or isinstance(c, float) for c in crowd])
        flag(bad_crowd, "iscrowd", "bad_value", lambda r: f"iscrowd {crowd[r]!r} is not 0 or 1")
    return bad


def _column(recs: list[dict], key: str, cache: dict[str, list] | None) -> list:
    """``rec.get(key)`` of every record, pulled once and shared by the checks and the table build."""
    if cache is None:
        return [rec.get(key) for rec in recs]
    if key not in cache:
        cache[key] = [rec.get(key) for rec in recs]
    return cache[key]


def _note_combos(fixed_notes: tuple[str, ...]) -> list[list[str]]:
    """The notes of each 3-bit code: which of area, iscrowd and num_keypoints were derived."""
    names = ("area_derived_from_bbox", "iscrowd_defaulted_to_0", "num_keypoints_derived")
    return [list(fixed_notes) + [nm for bit, nm in enumerate(names) if c >> bit & 1] for c in range(8)]


def _add_notes(report: IngestReport, combos: list[list[str]], counts: np.ndarray) -> None:
    for c, count in enumerate(counts.tolist()):
        if count:
            report.notes.update({nm: count for nm in combos[c]})


def _nones(values: list) -> np.ndarray:
    """Mask of the absent (None) values."""
    if None not in values:
        return np.zeros(len(values), dtype=bool)
    return np.fromiter(map(operator.is_, values, itertools.repeat(None)), dtype=bool, count=len(values))


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _numbers(values: list) -> list:
    """Values for a float array: numbers stay, None becomes NaN (absent), anything else -inf.

    -inf fails every range check, so a string or bool where a number belongs is rejected."""
    if set(map(type, values)) <= _NUMBER_TYPES | {type(None)}:
        return values  # numpy turns None into NaN
    return [v if type(v) in _NUMBER_TYPES or v is None else -np.inf for v in values]


def _instances(ctx: _Ctx, recs: list[dict], kp: np.ndarray, box: np.ndarray, image_ids: list[str],
               skel: skeletons.Skeleton, record_indices: list[int], fixed_notes: tuple[str, ...] = (),
               columns: dict[str, list] | None = None, note_counts: np.ndarray | None = None):
    """The instances table of accepted annotations; ``columns`` holds fields already pulled from
    these same ``recs`` (by ``_vector_checks``). The notes are counted into the report, or, when
    ``note_counts`` is given, per combination into it (the caller adds them to the report)."""
    n = len(recs)
    coco = np.zeros((n, schema.NUM_JOINTS, 3), dtype=np.float32)
    mapping = np.array(skel.coco_index)
    src = np.flatnonzero(mapping >= 0)
    for j in src:  # joint by joint: one fancy-indexed copy of all joints is ~10x slower
        coco[:, mapping[j], :] = kp[:, j, :]
    coco[coco[..., 2] == 0] = 0  # unlabelled joints are (0, 0, 0), as in COCO
    extra_idx = np.flatnonzero(mapping < 0)
    extra_names = [skel.joints[j] for j in extra_idx]
    known = _ANNOTATION_KEYS | {f"keypoints_{skel.num_joints}", f"num_keypoints_{skel.num_joints}"}
    known |= {name for name, _ in skel.extra_fields}
    # Column-wise comprehensions: this runs once per annotation of a full COCO, so keep it lean.
    columns = {} if columns is None else columns
    area = _column(recs, "area", columns)
    iscrowd = _column(recs, "iscrowd", columns)
    declared = _column(recs, "num_keypoints", columns)
    # Which values were derived, as a 3-bit code per row, so notes cost no per-row Python work.
    missing_area, missing_crowd, missing_num = _nones(area), _nones(iscrowd), _nones(declared)
    if "visibility_assumed_visible" in fixed_notes:
        missing_num[:] = False
    code = missing_area * 1 + missing_crowd * 2 + missing_num * 4
    combos = _note_combos(fixed_notes)
    # Eight possible note lists, picked per row by Arrow instead of building 250k Python lists.
    notes = pa.array(combos, type=pa.list_(pa.string())).take(pa.array(code, type=pa.int64()))
    counts = np.bincount(code, minlength=8)
    if note_counts is None:
        _add_notes(ctx.report, combos, counts)
    else:
        note_counts += counts
    area = np.where(missing_area, box[:, 2] * box[:, 3], np.array(_numbers(area), dtype=np.float64))
    iscrowd = [bool(c) for c in iscrowd]
    extras: list[list[dict] | None] = [None] * n
    if len(extra_idx) or skel.extra_fields:
        for row, rec in enumerate(recs):
            row_extras = [{"name": nm, "x": float(x), "y": float(y), "visibility": float(vv)}
                          for nm, (x, y, vv) in zip(extra_names, kp[row, extra_idx])]
            for fld, fld_names in skel.extra_fields:
                arr = rec.get(fld)
                if isinstance(arr, list) and len(arr) == 3 * len(fld_names):
                    row_extras += [{"name": nm, "x": float(arr[3 * j]), "y": float(arr[3 * j + 1]),
                                    "visibility": float(arr[3 * j + 2])} for j, nm in enumerate(fld_names)]
            extras[row] = row_extras or None
    to_json = records.to_json
    attributes: list[str | None] = [None] * n
    # One union of all keys first: most files hold no unknown field, so no per-record work.
    present = set().union(*map(dict.keys, recs))
    if not present <= known:
        attributes = [
            # In record order: a set's order of strings changes from one process to the next.
            to_json({key: v for key, v in rec.items() if key not in known}) if rec.keys() - known else None
            for rec in recs
        ]
    segmentation = records.json_column([rec.get("segmentation") for rec in recs])
    ann_ids = [rec["id"] for rec in recs]
    cols = dict(
        instance_id=schema.instance_ids(ctx.source, ann_ids, prefix="ann:"),
        area=area, iscrowd=iscrowd,
        source_annotation_id=ann_ids, segmentation=segmentation, notes=notes, attributes=attributes,
        extra_keypoints=extras, record_index=record_indices,
        image_id=image_ids, source=[ctx.source] * n, num_keypoints=(coco[..., 2] > 0).sum(axis=1).astype(np.int32),
        skeleton=[skel.name] * n, source_file=[ctx.file] * n, batch_id=[ctx.batch_id] * n,
        annotator=[None if (a := rec.get("annotator")) is None else str(a) for rec in recs]
        if "annotator" in present else None,
    )
    return records.instances_table(cols, coco, box)


# ----- MPII native json ---------------------------------------------------------------------
def _read_mpii(ctx: _Ctx, doc: list, skeleton_name: str | None):
    """MPII's json: one record per person with ``joints``, ``joints_vis`` and ``image``.

    It has no boxes, ids or occlusion flags: boxes are derived from the joints (noted), ids are
    record positions, and labelled joints are taken as visible (noted).
    """
    skel = skeletons.get(skeleton_name or "mpii16")
    k = skel.num_joints
    report = ctx.report
    report.annotations_read = len(doc)
    names = sorted({r["image"] for r in doc if isinstance(r, dict) and isinstance(r.get("image"), str)})
    image_recs = []
    for n_i, name in enumerate(names):
        stem = PurePosixPath(name.replace("\\", "/")).stem
        image_recs.append({"id": int(stem) if stem.isdigit() else n_i, "file_name": name})
    # Sizes come from the files themselves: MPII's json does not carry them.
    sized = []
    for rec in image_recs:
        path, escape = ctx.finder.find(rec["file_name"])
        info = None
        if not escape and path is not None and path.is_file():
            try:
                info = probe(path.read_bytes())
            except (OSError, ImageProblem):
                info = None
        sized.append({**rec, "width": info.width if info else 1, "height": info.height if info else 1})
    _read_images(ctx, sized)
    image_of = {rec["file_name"]: rec["id"] for rec in sized}
    coco_like = []
    for i, rec in enumerate(doc):
        if not isinstance(rec, dict) or not isinstance(rec.get("joints"), list) or not isinstance(rec.get("joints_vis"), list):
            ctx.reject("annotation", i, i, "joints", "missing_field", "record needs 'joints' and 'joints_vis' lists", rec)
            continue
        joints, vis = rec["joints"], rec["joints_vis"]
        if len(joints) != k or len(vis) != k or not all(isinstance(j, list) and len(j) == 2 for j in joints):
            ctx.reject("annotation", i, i, "joints", "keypoints_length",
                       f"expected {k} joints of [x, y] and {k} flags, got {len(joints)} and {len(vis)}", rec)
            continue
        img = image_of.get(rec.get("image"))
        if img not in ctx.accepted_images:
            reason = ctx.rejected_images.get(img, "image_not_found")
            ctx.reject("annotation", i, i, "image", "image_rejected" if img in ctx.rejected_images else "image_not_found",
                       f"image {rec.get('image')!r} was not accepted ({reason})", rec)
            continue
        flat = []
        for (x, y), v in zip(joints, vis):
            flat += [x, y, 2 if v else 0]
        _, w, h = ctx.accepted_images[img]
        kp = np.array(flat, dtype=np.float64).reshape(k, 3)
        coco_like.append((i, {"id": i, "image_id": img, "keypoints": flat,
                              "bbox": records.bbox_from_keypoints(kp, w, h), "iscrowd": 0,
                              "mpii": {"scale": rec.get("scale"), "center": rec.get("center")}}))
    table = _mpii_instances(ctx, [r for _, r in coco_like], skel)
    report.annotations_accepted = table.num_rows
    report.annotations_rejected = report.annotations_read - table.num_rows
    return table


def _mpii_instances(ctx: _Ctx, recs: list[dict], skel: skeletons.Skeleton):
    n = len(recs)
    kp = np.array([r["keypoints"] for r in recs], dtype=np.float64).reshape(n, skel.num_joints, 3)
    box = np.array([r["bbox"] for r in recs], dtype=np.float64).reshape(n, 4)
    wh = np.array([ctx.accepted_images[r["image_id"]][1:] for r in recs], dtype=np.float64).reshape(n, 2)
    bad = _vector_checks(kp, box, wh, recs, skel, "keypoints")
    keep = [r for r in range(n) if r not in bad]
    for row, (fld, reason, detail, _) in bad.items():
        ctx.reject("annotation", recs[row]["id"], recs[row]["id"], fld, reason, detail, recs[row])
    kept = [recs[r] for r in keep]
    fixed = ("bbox_derived_from_joints", "visibility_assumed_visible")
    return _instances(ctx, kept, kp[keep], box[keep], [ctx.accepted_images[r["image_id"]][0] for r in kept],
                      skel, [r["id"] for r in kept], fixed)
