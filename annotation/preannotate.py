"""Pre-annotations for annotators: LabelMe json (and the images) out of any store source.

Each image becomes ``<file_name>.json`` beside a copy of the image, in the convention of
``convention.py``: one ``group_id`` per person (1, 2, ... in store order), a ``person``
rectangle from the stored box (flag ``crowd`` for iscrowd regions), one ``point`` per labelled
joint with the flag ``occluded`` (v=1) or not (v=2); unlabelled joints (v=0) are left out.
Files are written as labelme writes them with ``--nodata`` (imageData null), so labelme opens
them directly, and ingesting the folder gives back the same keypoints, visibility, boxes and
iscrowd. Same store, same bytes: nothing random, keys in a fixed order.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import orjson

from posepipe.datasets import atomic, schema
from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.progress import NoProgress, Progress
from posepipe.datasets.store import PoseStore

from . import convention, labelme_format


@dataclass
class PreannotationReport:
    out: str
    files: int
    people: int
    images_written: int


def export_labelme(store: PoseStore, source: str, out: str | os.PathLike,
                   progress: Progress | None = None) -> PreannotationReport:
    if source not in store.sources():
        raise PosepipeError(f"source {source!r} is not in the store {store.root} "
                            f"(known: {', '.join(store.sources()) or 'none'})")
    out_dir = Path(out)
    progress = progress or NoProgress()
    images = store.images([source]).to_pylist()
    inst = store.instances([source])
    kp = schema.keypoints_from_arrow(inst.column("keypoints"))
    boxes = schema.bbox_from_arrow(inst.column("bbox"))
    by_image: dict[str, list[int]] = {}
    for row, image_id in enumerate(inst.column("image_id").to_pylist()):
        by_image.setdefault(image_id, []).append(row)
    crowd = inst.column("iscrowd").to_pylist()
    used: set[str] = set()
    report = PreannotationReport(str(out_dir), 0, 0, 0)
    for im in progress.track(images, len(images), "labelme files"):
        rel = _unique(_safe_name(im["file_name"], im["image_id"], im["format"]), im["image_id"], used)
        image_target = out_dir / rel
        data = store.read_image(im["shard"], im["offset"], im["num_bytes"])
        if not (image_target.is_file() and hashlib.sha256(image_target.read_bytes()).hexdigest() == im["sha256"]):
            atomic.write_bytes(image_target, data)
            report.images_written += 1
        shapes = []
        rows = by_image.get(im["image_id"], [])
        for group_id, row in enumerate(rows, start=1):
            shapes.extend(_person_shapes(kp[row], boxes[row], bool(crowd[row]), group_id))
        doc = labelme_format.file_dict(
            shapes, PurePosixPath(rel).name, im["height"], im["width"], {convention.CROWD_FLAG: False},
            {"posepipe": {"source": source, "image_id": im["image_id"]}},
        )
        atomic.write_bytes(out_dir / PurePosixPath(rel).with_suffix(".json"), orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        report.files += 1
        report.people += len(rows)
    return report


def _person_shapes(kp: np.ndarray, box: np.ndarray, crowd: bool, group_id: int) -> list[dict]:
    x, y, w, h = (float(v) for v in box)
    shapes = [labelme_format.shape_dict(convention.PERSON_LABEL, [[x, y], [x + w, y + h]], "rectangle",
                                        group_id, {convention.CROWD_FLAG: crowd})]
    for j, (jx, jy, v) in enumerate(kp):
        if v <= 0:
            continue
        shapes.append(labelme_format.shape_dict(
            convention.JOINTS[j], [[_f32(jx), _f32(jy)]], "point", group_id,
            {convention.OCCLUDED_FLAG: bool(v == schema.VISIBILITY_OCCLUDED)}))
    return shapes


def _f32(value: np.float32) -> float:
    """The shortest decimal that reads back as the same float32 (263.0, not 263.0000000001)."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="0"))


def _safe_name(file_name: str | None, image_id: str, fmt: str) -> str:
    """A relative path inside the output folder for the image: the store's name when it is safe."""
    ext = "jpg" if fmt == "jpeg" else fmt
    parts = [p for p in PurePosixPath((file_name or "").replace("\\", "/")).parts if p not in ("", ".", "/")]
    if not parts or ".." in parts or parts[0].endswith(":") or parts[-1].lower().endswith(".json"):
        return f"{image_id}.{ext}"
    return PurePosixPath(*parts).as_posix()


def _unique(rel: str, image_id: str, used: set[str]) -> str:
    """Two images with one name (from different folders of a source) get their id added."""
    key = PurePosixPath(rel).with_suffix("").as_posix().lower()
    if key in used:
        p = PurePosixPath(rel)
        rel = p.with_name(f"{p.stem}-{image_id}{p.suffix}").as_posix()
        key = PurePosixPath(rel).with_suffix("").as_posix().lower()
    used.add(key)
    return rel
