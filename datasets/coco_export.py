"""COCO person_keypoints json out of the store (and, optionally, the image files).

For one source the original image and annotation ids come back unchanged; when several sources
are exported together and their ids collide, ids are renumbered (and the export says so).
Keypoints are float32 in the store: integral values are written as integers and others with
the shortest decimal that reads back as the same float32, so COCO's own values round-trip.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from . import atomic, schema
from .errors import PosepipeError
from .progress import NoProgress, Progress
from .store import PoseStore


@dataclass
class ExportReport:
    out: str
    images: int
    annotations: int
    renumbered: bool
    images_written: int = 0


def coco_dict(store: PoseStore, sources: Iterable[str] | None = None, *, instance_ids: Iterable[str] | None = None) -> tuple[dict, bool]:
    """The COCO document for ``sources`` (optionally only some instances), and whether ids were renumbered."""
    sources = list(store.sources() if sources is None else sources)
    missing = [s for s in sources if s not in store.sources()]
    if missing:
        raise PosepipeError(f"source {missing[0]!r} is not in the store {store.root} (known: {', '.join(store.sources()) or 'none'})")
    images = store.images(sources).to_pylist()
    inst_table = store.instances(sources)
    if instance_ids is not None:
        inst_table = inst_table.filter(pc.is_in(inst_table.column("instance_id"), value_set=pa.array(list(instance_ids), pa.string())))
        keep_images = set(inst_table.column("image_id").to_pylist())
        images = [im for im in images if im["image_id"] in keep_images]
    kp = schema.keypoints_from_arrow(inst_table.column("keypoints"))
    boxes = schema.bbox_from_arrow(inst_table.column("bbox"))
    inst = inst_table.drop_columns(["keypoints", "bbox"]).to_pylist()

    image_ids = [im["source_image_id"] for im in images]
    ann_ids = [a["source_annotation_id"] for a in inst]
    renumber = (
        any(i is None for i in image_ids) or len(set(image_ids)) != len(image_ids)
        or any(i is None for i in ann_ids) or len(set(ann_ids)) != len(ann_ids)
    )
    # Map (source, content image id) -> exported integer id.
    out_image_id: dict[tuple[str, str], int] = {}
    coco_images = []
    licenses: dict = {}
    for n, im in enumerate(images, start=1):
        new_id = n if renumber else int(im["source_image_id"])
        out_image_id[(im["source"], im["image_id"])] = new_id
        rec = {"id": new_id, "file_name": im["file_name"], "width": im["width"], "height": im["height"]}
        if im["license"] is not None:
            rec["license"] = int(im["license"]) if im["license"].lstrip("-").isdigit() else im["license"]
        if im["provenance"]:
            prov = orjson.loads(im["provenance"])
            prov.pop("resolved_path", None)
            rec.update({k: v for k, v in prov.items() if k not in rec})
        coco_images.append(rec)
    integral = np.all(kp == np.round(kp), axis=(1, 2))
    annotations = []
    for n, a in enumerate(inst):
        row_kp = kp[n].reshape(-1)
        rec = {
            "id": n + 1 if renumber else int(a["source_annotation_id"]),
            "image_id": out_image_id[(a["source"], a["image_id"])],
            "category_id": 1,
            "keypoints": row_kp.astype(np.int64) if integral[n] else row_kp,
            "num_keypoints": int(a["num_keypoints"]),
            "bbox": boxes[n],
            "area": a["area"],
            "iscrowd": int(a["iscrowd"]),
        }
        if a["segmentation"] is not None:
            rec["segmentation"] = orjson.loads(a["segmentation"])
        annotations.append(rec)
    for source in sources:
        batches = store.batches([source]).column("params").to_pylist()
        for params in batches:
            for lic in (orjson.loads(params) if params else {}).get("licenses") or []:
                if isinstance(lic, dict) and "id" in lic:
                    licenses[lic["id"]] = lic
    doc = {
        "info": {"description": f"posepipe export of {', '.join(sources)}"},
        "licenses": [licenses[k] for k in sorted(licenses, key=str)],
        "images": coco_images,
        "annotations": annotations,
        "categories": [schema.PERSON_CATEGORY],
    }
    return doc, renumber


def dumps(doc: dict) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def export_coco(
    store: PoseStore,
    sources: Iterable[str] | None,
    out: str | os.PathLike,
    *,
    images_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> ExportReport:
    doc, renumbered = coco_dict(store, sources)
    atomic.write_bytes(out, dumps(doc))
    report = ExportReport(str(out), len(doc["images"]), len(doc["annotations"]), renumbered)
    if images_dir is not None:
        report.images_written = write_images(store, sources, Path(images_dir), progress or NoProgress())
    return report


def write_images(store: PoseStore, sources: Iterable[str] | None, images_dir: Path, progress: Progress) -> int:
    """Write each image under its ``file_name``; files already there with the same bytes are kept."""
    rows = store.images(sources).to_pylist()
    root = images_dir.resolve()
    written = 0
    for im in progress.track(rows, len(rows), "images"):
        rel = PurePosixPath(im["file_name"].replace("\\", "/"))
        target = (root / Path(*rel.parts)).resolve()
        if rel.is_absolute() or not target.is_relative_to(root):
            raise PosepipeError(f"image {im['file_name']!r} of source {im['source']} would be written outside {images_dir}")
        if target.exists() and target.stat().st_size == im["num_bytes"]:
            if hashlib.sha256(target.read_bytes()).hexdigest() == im["sha256"]:
                continue
        atomic.write_bytes(target, store.read_image(im["shard"], im["offset"], im["num_bytes"]))
        written += 1
    return written
