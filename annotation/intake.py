"""Annotator intake: a folder of LabelMe json files (with or without images) into a store source.

Each json file is one unit: accepted whole or rejected whole with one clear reason naming the
file, the shape index, the label and the value (files read = files accepted + files rejected).
Re-running over the same folder adds nothing (a file whose bytes did not change is skipped); a
changed file replaces what it gave before; a file that disappeared is reported, and its records
are kept unless ``prune`` is asked for. Rejected files go to a quarantine folder beside a
readable ``*.errors.txt``, and their reject rows stay in the store until a fixed file replaces
them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from pydantic import ValidationError

from posepipe.datasets import atomic, records, schema
from posepipe.datasets.coco import display_path
from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.images import ImageProblem, probe
from posepipe.datasets.progress import NoProgress, Progress
from posepipe.datasets.report import IngestReport
from posepipe.datasets.store import PoseStore, Transaction

from . import convention, labelme_format
from .labelme_format import LabelMeFile, Shape

FORMAT = "labelme"
QUARANTINE_DIRNAME = "_quarantine"
# Annotation tools snap to the pixel grid; half-pixel rounding either side of the image is fine.
EDGE_TOLERANCE = 1.0
# A joint further outside its person rectangle than this share of the rectangle is not that person.
PERSON_BOX_SLACK = 1.0
# Boxes from rectangles are rounded to 1e-6 px so a written x + w reads back as the same w.
BOX_DECIMALS = 6
_RAW_LIMIT = 2000
_KEEP_BYTES = 256 << 20
# Shape keys kept by nobody: display colours and labelme's segmentation mask slot.
_DROPPED_KEYS = frozenset(("line_color", "fill_color", "mask"))


class _Reject(Exception):
    """The first problem found in a file: it is rejected whole with this reason."""

    def __init__(self, reason: str, detail: str, field_name: str | None = None,
                 shape_index: int | None = None, raw: Any = None):
        super().__init__(detail)
        self.reason, self.detail, self.field, self.shape_index, self.raw = reason, detail, field_name, shape_index, raw


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
    status: str  # accepted, rejected or unchanged
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
    instances_accepted: int = 0
    images_accepted: int = 0
    images_embedded: int = 0
    missing: list[dict[str, str]] = field(default_factory=list)  # files the store knows that are gone
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
        d = asdict(self)
        d["reasons"] = dict(sorted(self.reasons.items()))
        d["notes"] = dict(sorted(self.notes.items()))
        return d

    def summary(self) -> str:
        text = (f"{self.folder} -> source {self.source}: {self.files_read} files read, "
                f"{self.files_accepted} accepted ({self.instances_accepted} people, {self.images_accepted} images), "
                f"{self.files_rejected} rejected, {self.files_unchanged} unchanged")
        if self.reasons:
            text += "; rejects: " + ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items()))
        if self.notes:
            text += "; notes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.notes.items()))
        return text


@dataclass
class _Accepted:
    image_row: dict[str, Any]
    columns: dict[str, list]
    keypoints: np.ndarray  # (n, 17, 3)
    boxes: np.ndarray  # (n, 4)
    notes: list[str]


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
) -> IntakeReport:
    """Ingest every ``*.json`` under ``folder`` into ``source``; see the module docstring."""
    root = Path(folder)
    if not root.is_dir():
        raise PosepipeError(f"{root}: intake folder does not exist")
    if quarantine_mode not in ("move", "copy"):
        raise PosepipeError(f"--quarantine-mode must be move or copy, not {quarantine_mode!r}")
    root = root.resolve()
    quarantine_dir = Path(quarantine).resolve() if quarantine else root / QUARANTINE_DIRNAME
    progress = progress or NoProgress()
    folder_key = display_path(root)
    report = IntakeReport(source=source, folder=folder_key, annotator=annotator)
    paths = _json_files(root, quarantine_dir)
    rejected: list[tuple[Path, bytes, FileOutcome]] = []
    with store.transaction(source) as tx:
        last_sha = tx.file_hashes()
        changed = _changed_files(root, paths, last_sha, report)
        gone = _missing(tx, folder_key, {c[1] for c in changed} | {f.file for f in report.files}, report, prune)
        # Images stay claimed only by files this run leaves alone; the others claim theirs anew.
        released = {c[1] for c in changed} | set(gone)
        owners = {img: f for img, f in tx.image_owners().items() if f not in released}
        staged: dict[str, list] = {"images": [], "batches": [], "rejects": []}
        accepted: list[_Accepted] = []
        for path, key, rel, sha, data, read_error in progress.track(changed, len(changed), "labelme files"):
            if data is None and read_error is None:
                data, read_error = _read(path)
                sha = hashlib.sha256(data).hexdigest()
            report.files_read += 1
            batch_id = schema.short_hash(source, key, sha, length=12)
            rejects = records.Rejects(source, key, batch_id)
            file_report = IngestReport(source=source, file=key, format=FORMAT, batch_id=batch_id)
            try:
                if read_error:
                    raise _Reject("file_unreadable", read_error)
                result = _read_file(tx, root, path, rel, key, data, source, batch_id, annotator, owners)
            except _Reject as problem:
                outcome = _record_reject(report, rejects, file_report, key, rel, problem, data)
                rejected.append((path, data, outcome))
            else:
                accepted.append(result)
                staged["images"].append(result.image_row)
                owners[result.image_row["image_id"]] = key
                n = len(result.keypoints)
                file_report.images_read = file_report.images_accepted = 1
                file_report.annotations_read = file_report.annotations_accepted = n
                report.files_accepted += 1
                report.images_accepted += 1
                report.instances_accepted += n
                image_from = result.image_row["provenance_from"]
                report.images_embedded += image_from == "imageData"
                for note in result.notes:
                    report.notes[note] += 1
                report.files.append(FileOutcome(key, rel, "accepted", instances=n, image_from=image_from))
            staged["rejects"].extend(rejects.rows)
            staged["batches"].append(_batch_row(file_report, sha, annotator, quarantine_mode))
        keys = [c[1] for c in changed] + gone
        if keys:
            tx.replace_files(keys, _tables(staged, accepted))
    report.check_balance()
    for path, data, outcome in rejected:
        outcome.quarantined_to = _quarantine(root, quarantine_dir, path, data, outcome, quarantine_mode, report)
    return report


def _read(path: Path) -> tuple[bytes, str | None]:
    try:
        return path.read_bytes(), None
    except OSError as exc:
        return b"", f"cannot read the file ({exc.strerror or exc})"


def _changed_files(root: Path, paths: list[Path], last_sha: dict[str, str], report: IntakeReport) -> list[tuple]:
    """(path, key, rel, sha, bytes or None, read error) of every file not ingested as it is now.

    Bytes are kept up to a memory budget; past it a file is read again when its turn comes.
    """
    changed = []
    budget = _KEEP_BYTES
    prefix = display_path(root).rstrip("/") + "/"
    start = len(str(root)) + 1
    for path in paths:
        rel = str(path)[start:].replace(os.sep, "/")
        key = prefix + rel  # display_path(path), without pathlib work per file
        data, error = _read(path)
        sha = hashlib.sha256(data).hexdigest()
        if error is None and last_sha.get(key) == sha:
            report.files_unchanged += 1
            report.files.append(FileOutcome(key, rel, "unchanged"))
            continue
        budget -= len(data)
        changed.append((path, key, rel, sha, data if budget > 0 or error else None, error))
    return changed


def _json_files(root: Path, quarantine_dir: Path) -> list[Path]:
    """Every ``*.json`` under root, sorted; hidden folders and the quarantine are not intake."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d) != quarantine_dir)
        found.extend(here / f for f in filenames if f.lower().endswith(".json") and not f.startswith("."))
    return sorted(found)


# ----- one file -----------------------------------------------------------------------------
def _read_file(tx: Transaction, root: Path, path: Path, rel: str, key: str, data: bytes, source: str,
               batch_id: str, annotator: str | None, owners: dict[str, str]) -> _Accepted:
    if os.path.islink(path) and not path.resolve().is_relative_to(root):
        raise _Reject("path_escapes", f"the json file is a link to {path.resolve()}, outside the intake folder")
    try:
        doc = labelme_format.parse(data)
    except ValidationError as exc:
        reason, fld, index, detail = labelme_format.describe_error(exc, data)
        raise _Reject(reason, detail, fld, index) from None
    notes: list[str] = []
    persons = _persons(doc, notes)
    image_bytes, image_from, file_name = _image_bytes(doc, root, path, rel)
    try:
        info = probe(image_bytes)
    except ImageProblem as problem:
        where = "imageData" if image_from == "imageData" else f"imagePath '{doc.imagePath}'"
        raise _Reject(problem.reason, f"{where}: {problem.message}",
                      "imageData" if image_from == "imageData" else "imagePath") from None
    for name, declared, real in (("imageWidth", doc.imageWidth, info.width), ("imageHeight", doc.imageHeight, info.height)):
        if declared is None:
            notes.append("image_size_from_image")
        elif declared != real:
            raise _Reject("size_mismatch", f"{name} is {declared} but the image is {info.width}x{info.height}", name)
    _check_inside_image(persons, info.width, info.height)
    image_id = schema.image_id_from_sha256(info.sha256)
    owner = owners.get(image_id)
    if owner is not None and owner != key:
        raise _Reject("duplicate_image", f"the same image is already annotated by {owner} in source {source}",
                      "imagePath")
    tx.put_image(image_bytes, info.sha256, info.format)
    provenance = {"labelme_version": doc.version, "imagePath": doc.imagePath, "image_from": image_from}
    if doc.model_extra:
        provenance["extra"] = {k: v for k, v in doc.model_extra.items() if k not in ("lineColor", "fillColor")}
    image_row = {
        "image_id": image_id, "source": source, "source_image_id": None, "file_name": file_name,
        "width": info.width, "height": info.height, "sha256": info.sha256, "format": info.format,
        "num_bytes": info.num_bytes, "license": None, "provenance": records.to_json(provenance), "split": None,
        "source_file": key, "record_index": 0, "batch_id": batch_id, "provenance_from": image_from,
    }
    crowd_image = bool(doc.flags and doc.flags.get(convention.CROWD_FLAG) is True)
    return _instances(persons, image_id, source, rel, key, batch_id, annotator, info.width, info.height,
                      crowd_image, image_row, notes)


def _label_where(index: int, shape: Shape) -> str:
    return f"shape #{index} (label '{shape.label}', {shape.kind})"


def _persons(doc: LabelMeFile, notes: list[str]) -> list[_Person]:
    """Group the shapes into people following the convention, or raise the first problem."""
    groups: dict[int | None, _Person] = {}
    parsed = [convention.parse_joint_label(s.label) for s in doc.shapes]
    if doc.shapes and not any(j for j, _ in parsed) and not any(
            s.group_id is not None and convention.is_person_label(s.label) for s in doc.shapes):
        kinds = Counter(f"{s.kind} '{s.label}'" for s in doc.shapes)
        found = ", ".join(f"{n} x {k}" if n > 1 else k for k, n in kinds.most_common(6))
        raise _Reject("no_keypoints", f"no keypoints: none of the {len(doc.shapes)} shapes is a joint point or a "
                      f"person rectangle with a group_id (found {found}); label joints with their COCO names")
    for i, shape in enumerate(doc.shapes):
        raw = shape
        for k, pt in enumerate(shape.points):
            if len(pt) != 2:
                raise _Reject("bad_point_count", f"{_label_where(i, shape)}: point #{k} has {len(pt)} values, "
                              "expected [x, y]", f"shapes[{i}].points", i, raw)
            if not (math.isfinite(pt[0]) and math.isfinite(pt[1])):
                raise _Reject("nonfinite_coordinate", f"{_label_where(i, shape)}: point #{k} is {pt}",
                              f"shapes[{i}].points", i, raw)
        joint, suffix = parsed[i]
        is_person = joint is None and convention.is_person_label(shape.label)
        if joint is None and not is_person:
            hint = convention.suggest(shape.label)
            detail = f"{_label_where(i, shape)}: unknown label '{shape.label}'"
            detail += f"; did you mean '{hint}'?" if hint else "; expected 'person' or a COCO joint name"
            raise _Reject("unknown_label", detail, f"shapes[{i}].label", i, raw)
        person = groups.get(shape.group_id)
        if person is None:
            person = groups[shape.group_id] = _Person(shape.group_id, i)
        extra = shape.model_extra
        if extra:
            extra = {k: v for k, v in extra.items() if v not in (None, False, [], {}, "") and k not in _DROPPED_KEYS}
        if is_person:
            if shape.kind != "rectangle":
                raise _Reject("wrong_shape_type", f"{_label_where(i, shape)}: a person box must be a rectangle",
                              f"shapes[{i}].shape_type", i, raw)
            if len(shape.points) not in (2, 4):
                raise _Reject("bad_point_count", f"{_label_where(i, shape)}: a rectangle needs 2 points "
                              f"(or 4 corners), got {len(shape.points)}", f"shapes[{i}].points", i, raw)
            if person.box is not None:
                raise _Reject("ambiguous_person", f"{_label_where(i, shape)}: group_id {shape.group_id} already has "
                              f"a person rectangle (shape #{person.box_shape})", f"shapes[{i}].group_id", i, raw)
            xs = [p[0] for p in shape.points]
            ys = [p[1] for p in shape.points]
            x0, y0 = min(xs), min(ys)
            person.box = [x0, y0, round(max(xs) - x0, BOX_DECIMALS), round(max(ys) - y0, BOX_DECIMALS)]
            person.box_shape = i
            person.crowd = bool(shape.flags and shape.flags.get(convention.CROWD_FLAG) is True)
            if extra:
                person.extras["person"] = extra
            continue
        if shape.kind != "point":
            raise _Reject("wrong_shape_type", f"{_label_where(i, shape)}: the joint '{joint}' must be a point shape",
                          f"shapes[{i}].shape_type", i, raw)
        if len(shape.points) != 1:
            raise _Reject("bad_point_count", f"{_label_where(i, shape)}: a point needs 1 point, got "
                          f"{len(shape.points)}", f"shapes[{i}].points", i, raw)
        j = convention.JOINT_INDEX[joint]
        if j in person.joints:
            group = "without group_id" if shape.group_id is None else f"with group_id {shape.group_id}"
            raise _Reject("duplicate_joint", f"{_label_where(i, shape)}: '{joint}' appears twice in the person "
                          f"{group} (shapes #{person.joints[j][3]} and #{i})", f"shapes[{i}].label", i, raw)
        occluded, how = convention.is_occluded(shape.flags, shape.difficult, shape.description, suffix)
        if how:
            notes.append(how)
        x, y = shape.points[0]
        person.joints[j] = (x, y, schema.VISIBILITY_OCCLUDED if occluded else schema.VISIBILITY_VISIBLE, i)
        if extra:
            person.extras[joint] = extra
    loose = groups.pop(None, None)
    if loose is not None:
        if len(groups) > 1:
            i = loose.first_shape
            raise _Reject("ambiguous_person", f"{_label_where(i, doc.shapes[i])}: no group_id, and the image has "
                          f"{len(groups)} people (group_ids {sorted(groups)}); give every shape its person's group_id",
                          f"shapes[{i}].group_id", i, doc.shapes[i])
        if len(groups) == 1:
            _merge(next(iter(groups.values())), loose, doc)
        else:
            groups[None] = loose
    return list(groups.values())


def _merge(person: _Person, loose: _Person, doc: LabelMeFile) -> None:
    """Shapes without group_id in a one-person image belong to that person."""
    for j, value in loose.joints.items():
        if j in person.joints:
            i = value[3]
            raise _Reject("duplicate_joint", f"{_label_where(i, doc.shapes[i])}: '{convention.JOINTS[j]}' appears "
                          f"twice in the image's only person (shapes #{person.joints[j][3]} and #{i})",
                          f"shapes[{i}].label", i)
        person.joints[j] = value
    if loose.box is not None:
        if person.box is not None:
            i = loose.box_shape
            raise _Reject("ambiguous_person", f"{_label_where(i, doc.shapes[i])}: a second person rectangle "
                          f"without group_id", f"shapes[{i}].group_id", i)
        person.box, person.box_shape, person.crowd = loose.box, loose.box_shape, loose.crowd
    person.extras.update(loose.extras)
    person.first_shape = min(person.first_shape, loose.first_shape)


def _image_bytes(doc: LabelMeFile, root: Path, path: Path, rel: str) -> tuple[bytes, str, str]:
    """(image bytes, where they came from, file_name for the store)."""
    image_path = (doc.imagePath or "").replace("\\", "/")
    rel_dir = PurePosixPath(rel).parent
    if doc.imageData:
        text = doc.imageData
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Reject("bad_image_data", f"imageData is not valid base64 ({exc})", "imageData") from None
        name = _confined_name(root, path, image_path, follow_links=False)  # only a name: nothing is read
        return data, "imageData", name or (rel_dir / (PurePosixPath(rel).stem + ".img")).as_posix()
    if not image_path:
        raise _Reject("image_missing", "imageData is null and imagePath is empty: the file names no image", "imagePath")
    name = _confined_name(root, path, image_path)
    if name is None:
        raise _Reject("path_escapes", f"imagePath '{doc.imagePath}' points outside the intake folder", "imagePath")
    target = root / name
    try:
        return target.read_bytes(), "imagePath", name
    except FileNotFoundError:
        raise _Reject("image_missing", f"imagePath '{doc.imagePath}': {name} does not exist in the intake folder",
                      "imagePath") from None
    except OSError as exc:
        raise _Reject("image_unreadable", f"imagePath '{doc.imagePath}': cannot read {name} "
                      f"({exc.strerror or exc})", "imagePath") from None


def _confined_name(root: Path, json_path: Path, image_path: str, follow_links: bool = True) -> str | None:
    """The image's path relative to the intake folder, or None when it would leave it."""
    if not image_path or image_path.startswith("/") or (len(image_path) > 1 and image_path[1] == ":"):
        return None
    base = str(root) + os.sep
    candidate = os.path.normpath(os.path.join(os.path.dirname(json_path), image_path))
    # Lexically inside, and still inside once links are followed (string ops: this runs per file).
    if not candidate.startswith(base) or (follow_links and not os.path.realpath(candidate).startswith(base)):
        return None
    return candidate[len(base):].replace(os.sep, "/")


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
    n = len(persons)
    kp = np.zeros((n, schema.NUM_JOINTS, 3), dtype=np.float32)
    boxes = np.zeros((n, 4), dtype=np.float64)
    cols: dict[str, list] = {k: [] for k in ("instance_id", "area", "iscrowd", "source_annotation_id",
                                             "notes", "attributes", "record_index")}
    for row, p in enumerate(sorted(persons, key=lambda q: q.first_shape)):
        person_notes = []
        if p.joints:
            joints = list(p.joints)
            kp[row, joints] = [p.joints[j][:3] for j in joints]
        if p.box is None:
            box = records.bbox_from_keypoints(kp[row], width, height)
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
            for j, (jx, jy, _, i) in p.joints.items():
                if not (x - w * PERSON_BOX_SLACK <= jx <= x + w * (1 + PERSON_BOX_SLACK)
                        and y - h * PERSON_BOX_SLACK <= jy <= y + h * (1 + PERSON_BOX_SLACK)):
                    raise _Reject("implausible_person", f"shape #{i} (label '{convention.JOINTS[j]}'): ({jx:g}, {jy:g}) "
                                  f"is far outside its person rectangle {_fmt_box(box)} (group_id {p.key}); "
                                  "is the group_id right?", f"shapes[{i}].group_id", i)
        boxes[row] = box
        person_notes.append("area_derived_from_bbox")
        notes.extend(person_notes)
        attrs: dict[str, Any] = {"group_id": p.key}
        if p.extras:
            attrs["shape_extras"] = p.extras
        cols["instance_id"].append(schema.instance_id(source, f"labelme:{rel}:{p.key}"))
        cols["area"].append(float(box[2] * box[3]))
        cols["iscrowd"].append(p.crowd or crowd_image)
        cols["source_annotation_id"].append(p.key)
        cols["notes"].append(person_notes)
        cols["attributes"].append(records.to_json(attrs))
        cols["record_index"].append(p.first_shape)
    cols.update(image_id=[image_id] * n, source=[source] * n, num_keypoints=[int(c) for c in (kp[..., 2] > 0).sum(axis=1)],
                skeleton=["coco17"] * n, source_file=[key] * n, annotator=[annotator] * n, batch_id=[batch_id] * n)
    return _Accepted(image_row, cols, kp, boxes, notes)


# ----- rejects, batches, staging --------------------------------------------------------------
def _record_reject(report: IntakeReport, rejects: records.Rejects, file_report: IngestReport, key: str, rel: str,
                   problem: _Reject, data: bytes) -> FileOutcome:
    message = f"{key}: {problem.detail}"
    raw = problem.raw
    if isinstance(raw, Shape):
        raw = raw.model_dump(exclude_none=True)
    if raw is None:
        raw = _raw_file(data)
    rejects.add("file", rel, problem.shape_index, problem.field, problem.reason, message, raw)
    file_report.files_rejected = 1
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


def _batch_row(r: IngestReport, sha: str, annotator: str | None, quarantine_mode: str) -> dict[str, Any]:
    return {
        "batch_id": r.batch_id, "source": r.source, "source_file": r.file, "file_sha256": sha, "format": FORMAT,
        "images_read": r.images_read, "images_accepted": r.images_accepted, "images_rejected": r.images_rejected,
        "annotations_read": r.annotations_read, "annotations_accepted": r.annotations_accepted,
        "annotations_rejected": r.annotations_rejected, "files_rejected": r.files_rejected,
        "params": records.to_json({"annotator": annotator, "quarantine_mode": quarantine_mode}),
    }


def _tables(staged: dict[str, list], accepted: list[_Accepted]) -> dict[str, pa.Table]:
    for row in staged["images"]:
        row.pop("provenance_from", None)
    if accepted:
        columns = {k: [v for a in accepted for v in a.columns[k]] for k in accepted[0].columns}
        kp = np.concatenate([a.keypoints for a in accepted])
        boxes = np.concatenate([a.boxes for a in accepted])
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


def _missing(tx: Transaction, folder_key: str, seen: set[str], report: IntakeReport, prune: bool) -> list[str]:
    """Files of this folder the source holds that are gone now: reported, and pruned only when asked."""
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
        if f in seen or not f.startswith(prefix):
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
                mode: str, report: IntakeReport) -> str:
    """Move (or copy) a rejected file to the quarantine, with a readable ``.errors.txt`` beside it."""
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
