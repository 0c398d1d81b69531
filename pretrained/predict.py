"""``posepipe predict``: run a pose model on people, wherever they are.

Inputs:

* a store source: every non-crowd person with a usable box, cropped from the store's shards;
* a COCO json + images folder: ingested into a scratch store first, so it is checked exactly
  as ``posepipe ingest coco`` checks it (rejects are counted, with their reasons);
* a plain folder of images: boxes from ``--boxes whole-image`` (one person filling the picture,
  e.g. sports photos) or from the MultiPose model (every person it finds).

Outputs: COCO keypoint results (``image_id``, ``category_id``, ``keypoints``, ``score``) and/or
a store source ``pred/NAME``: one instance per prediction, ``keypoints`` with v=2 where the
joint's score reaches ``min_score`` and it lies in the image (else v=0), the raw
``keypoint_scores`` and ``score`` kept.

Cropping, the model call, the flip test and the decoding are ``training.evaluate``'s, so a
model scores the same here as in training and export. An image that cannot be read is counted
and named, never fatal to the run.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from posepipe.datasets import atomic, records, schema
from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.progress import NoProgress, Progress
from posepipe.datasets.store import PoseStore, validate_source_name

from .runtime import PoseModel

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
BOX_MODES = ("annotations", "whole-image", "multipose")


@dataclass
class PredictOptions:
    batch_size: int = 16
    flip_test: bool = False  # twice the model calls for a little AP (Thunder: +0.001 on coco-mini val)
    min_score: float = 0.3  # joints under it are v=0 in a pred/ source and left out of pre-annotations
    boxes: str = "annotations"  # for folders: "whole-image" or "multipose"
    min_box: float = 4.0  # pixels: smaller boxes cannot be cropped meaningfully
    labelled_only: bool = False  # only people with a labelled joint: exactly the people evaluation scores


@dataclass
class Person:
    """One person to predict: an image (store id or file) and a COCO box."""

    image_key: str
    bbox: np.ndarray
    file_name: str
    width: int
    height: int
    coco_image_id: int
    instance_id: str | None = None  # the labelled person this is a prediction for
    source_annotation_id: int | None = None


@dataclass
class Predictions:
    model: dict
    input: dict
    people: list[Person]
    keypoints: np.ndarray  # (N, 17, 3): x, y in image pixels, joint score
    scores: np.ndarray  # (N,)
    unreadable: list[dict] = field(default_factory=list)  # {"file", "reason"}
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> people not predicted

    def coco_results(self) -> list[dict]:
        from posepipe.training.evaluate import coco_results

        return coco_results(self.keypoints, self.scores, [(p.coco_image_id, 0) for p in self.people])

    def summary(self) -> dict:
        return {"model": self.model, "input": self.input, "people": len(self.people),
                "images": len({p.image_key for p in self.people}), "unreadable_images": len(self.unreadable),
                "unreadable": self.unreadable[:20], "skipped": self.skipped}


class _Images:
    """Decodes images by key, a few kept (people of one image come together), safe across threads."""

    def __init__(self, load: Callable[[str], bytes], what: Callable[[str], str]):
        self.load, self.what = load, what
        self.cache: OrderedDict[str, np.ndarray | None] = OrderedDict()
        self.lock = threading.Lock()
        self.failed: dict[str, str] = {}

    def get(self, key: str) -> np.ndarray | None:
        import cv2

        with self.lock:
            if key in self.cache:
                return self.cache[key]
        try:
            data = self.load(key)
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
            reason = None if image is not None else "does not decode as an image"
        except OSError as exc:
            image, reason = None, f"cannot be read ({exc.strerror or exc})"
        if image is not None:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        with self.lock:
            if reason:
                self.failed[key] = reason
            self.cache[key] = image
            while len(self.cache) > 16:
                self.cache.popitem(last=False)
        return image


class _Crops:
    """The ``training.evaluate.predict`` view of the people: ``sample(i)`` -> a crop, as PoseDataset's."""

    def __init__(self, people: list[Person], images: _Images, input_size: tuple[int, int]):
        self.people, self.images, self.input_size = people, images, tuple(input_size)
        self.no_joints = np.zeros((schema.NUM_JOINTS, 3), dtype=np.float32)  # crops need no labels

    def __len__(self) -> int:
        return len(self.people)

    def sample(self, i: int) -> dict:
        from posepipe.training.transforms import top_down_crop, to_input

        person = self.people[i]
        image = self.images.get(person.image_key)
        if image is None:  # counted in images.failed; a blank crop keeps the batch shape
            image = np.zeros((max(person.height, 1), max(person.width, 1), 3), dtype=np.uint8)
        crop = top_down_crop(image, self.no_joints, person.bbox, self.input_size)
        return {"image": to_input(crop.image), "center": crop.center, "scale": crop.scale}


def run(model: PoseModel, people: list[Person], images: _Images, options: PredictOptions, model_info: dict,
        input_info: dict, skipped: dict[str, int] | None = None, progress: Progress | None = None) -> Predictions:
    from posepipe.training.evaluate import predict

    crops = _Crops(people, images, model.input_size)
    keypoints, scores = predict(model, crops, options.batch_size, options.flip_test, progress or NoProgress())
    bad = {k for k in images.failed}
    keep = [i for i, p in enumerate(people) if p.image_key not in bad]
    unreadable = [{"file": images.what(k), "reason": r} for k, r in sorted(images.failed.items())]
    return Predictions(model_info, input_info, [people[i] for i in keep], keypoints[keep], scores[keep],
                       unreadable, dict(skipped or {}))


# ----- inputs -------------------------------------------------------------------------------

def people_of_source(store: PoseStore, source: str, options: PredictOptions) -> tuple[list[Person], _Images, dict]:
    """Every non-crowd person of ``source`` with a box of at least ``min_box`` pixels."""
    if source not in store.sources():
        raise PosepipeError(f"source {source!r} is not in the store {store.root} (known: {', '.join(store.sources()) or 'none'})")
    inst = store.instances([source])
    imgs = store.images([source])
    image_rows = {r["image_id"]: r for r in imgs.select(
        ["image_id", "file_name", "width", "height", "shard", "offset", "num_bytes", "source_image_id"]).to_pylist()}
    boxes = schema.bbox_from_arrow(inst.column("bbox"))
    coco_ids: dict[str, int] = {}
    people, skipped = [], {}
    cols = inst.select(["instance_id", "image_id", "iscrowd", "source_annotation_id", "num_keypoints"]).to_pylist()
    for row, box in zip(cols, boxes):
        if row["iscrowd"]:
            skipped["crowd"] = skipped.get("crowd", 0) + 1
            continue
        if options.labelled_only and not row["num_keypoints"]:
            skipped["no_labelled_joint"] = skipped.get("no_labelled_joint", 0) + 1
            continue
        if not np.isfinite(box).all() or box[2] < options.min_box or box[3] < options.min_box:
            skipped["box_too_small"] = skipped.get("box_too_small", 0) + 1
            continue
        img = image_rows[row["image_id"]]
        coco_id = img["source_image_id"] if img["source_image_id"] is not None else coco_ids.setdefault(
            row["image_id"], len(coco_ids) + 1)
        people.append(Person(row["image_id"], box, img["file_name"], img["width"], img["height"], int(coco_id),
                             row["instance_id"], row["source_annotation_id"]))

    def load(key: str) -> bytes:
        r = image_rows[key]
        return store.read_image(r["shard"], r["offset"], r["num_bytes"])

    return people, _Images(load, lambda k: image_rows[k]["file_name"]), skipped


def people_of_coco(coco_json: Path, images_dir: Path, options: PredictOptions, scratch: Path,
                   progress: Progress | None = None) -> tuple[list[Person], _Images, dict, dict]:
    """A COCO file through posepipe's own ingest (into ``scratch``), then its people."""
    from posepipe.datasets.coco import ingest_coco

    store = PoseStore(scratch)
    report = ingest_coco(store, coco_json, images_dir, "input", progress=progress).to_dict()
    if report.get("fatal"):
        raise PosepipeError(f"{coco_json}: {report['fatal']}")
    people, images, skipped = people_of_source(store, "input", options)
    return people, images, skipped, report


def people_of_folder(folder: Path, options: PredictOptions, detector: Callable | None = None,
                     progress: Progress | None = None) -> tuple[list[Person], _Images, dict]:
    """Images of a folder (sorted by name, no recursion) and their boxes."""
    from posepipe.datasets.images import ImageProblem, probe

    if not folder.is_dir():
        raise PosepipeError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise PosepipeError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    images = _Images(lambda k: Path(k).read_bytes(), lambda k: Path(k).name)
    people, skipped = [], {}
    for index, path in enumerate((progress or NoProgress()).track(files, len(files), "finding people"), start=1):
        try:
            info = probe(path.read_bytes())
        except (OSError, ImageProblem) as exc:
            images.failed[str(path)] = str(getattr(exc, "strerror", None) or exc)
            continue
        if options.boxes == "whole-image":
            boxes = [np.array([0.0, 0.0, info.width, info.height])]
        else:
            image = images.get(str(path))
            boxes = [] if image is None else detector(image)
            if not boxes:
                skipped["no_person_found"] = skipped.get("no_person_found", 0) + 1
        for box in boxes:
            people.append(Person(str(path), np.asarray(box, dtype=np.float64), path.name, info.width, info.height, index))
    return people, images, skipped


def multipose_detector(cache, threads: int = 0, progress: Progress | None = None,
                       min_score: float = 0.35) -> Callable[[np.ndarray], list[np.ndarray]]:
    """People in a whole image, by MoveNet MultiPose: the image letterboxed into 256x256, the best
    6 centres whose score reaches ``min_score`` (measured on coco-mini val: people score 0.7-0.9,
    background 0.1-0.3), their boxes back in image pixels (COCO x, y, w, h)."""
    import cv2

    from posepipe.training.transforms import to_input

    from .runtime import load

    detector = load("movenet-multipose", cache, threads=threads, progress=progress)
    side = detector.input_size[0]

    def find(image: np.ndarray) -> list[np.ndarray]:
        h, w = image.shape[:2]
        scale = side / max(h, w)
        resized = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        canvas = np.zeros((side, side, 3), dtype=np.uint8)
        canvas[: resized.shape[0], : resized.shape[1]] = resized
        boxes = detector(to_input(canvas)[None])[0]
        out = []
        for x0, y0, x1, y1, score in boxes:
            # Back to image pixels, clipped to the picture (the letterbox's padding is not in it).
            x0, x1 = np.clip([x0 / scale, x1 / scale], 0, w)
            y0, y1 = np.clip([y0 / scale, y1 / scale], 0, h)
            if score >= min_score and x1 > x0 and y1 > y0:
                out.append(np.array([x0, y0, x1 - x0, y1 - y0], dtype=np.float64))
        return out

    return find


def offered(keypoints: np.ndarray, widths, heights, min_score: float) -> np.ndarray:
    """(N, 17) joints worth offering as labels: scored at least ``min_score``, inside their image."""
    w = np.asarray(widths, dtype=np.float32)[:, None]
    h = np.asarray(heights, dtype=np.float32)[:, None]
    x, y = keypoints[..., 0], keypoints[..., 1]
    return (keypoints[..., 2] >= min_score) & np.isfinite(x) & np.isfinite(y) & (x >= 0) & (y >= 0) & (x < w) & (y < h)


# ----- outputs ------------------------------------------------------------------------------

def write_results(pred: Predictions, path: Path) -> Path | None:
    """COCO keypoint results at ``path``; for a folder (no COCO ids of its own) also the image ids
    they use, beside it as ``<name>.images.json`` ({id, file_name, width, height} per image)."""
    atomic.write_text(path, json.dumps(pred.coco_results()))
    if pred.input.get("kind") != "folder":
        return None
    images = {p.coco_image_id: {"id": p.coco_image_id, "file_name": p.file_name, "width": p.width, "height": p.height}
              for p in pred.people}
    sidecar = path.with_name(path.stem + ".images.json")
    atomic.write_text(sidecar, json.dumps([images[k] for k in sorted(images)], indent=1))
    return sidecar


def write_source(pred: Predictions, store: PoseStore, source: str, min_score: float,
                 image_bytes: Callable[[str], bytes] | None = None) -> dict:
    """The predictions as store source ``source`` (``pred/NAME``): replaces what it held."""
    validate_source_name(source)
    if not source.startswith("pred/"):
        raise PosepipeError(f"--to-store {source}: prediction sources are named pred/NAME")
    from posepipe.datasets.images import probe

    kp = pred.keypoints.copy()
    scores = kp[..., 2].copy()
    labelled = offered(kp, [p.width for p in pred.people], [p.height for p in pred.people], min_score)
    kp[..., 2] = np.where(labelled, schema.VISIBILITY_VISIBLE, schema.VISIBILITY_NOT_LABELLED)
    kp[..., :2] = np.where(labelled[..., None], kp[..., :2], 0.0)
    source_file = f"predict:{pred.input.get('kind')}:{pred.input.get('path')}"
    batch_id = schema.short_hash(source, source_file, json.dumps(pred.model, sort_keys=True), length=12)
    with store.transaction(source) as tx:
        image_rows, image_id_of, rows_of = [], {}, set()
        for person in pred.people:
            if person.image_key in image_id_of:
                continue
            if image_bytes is not None:  # files from a folder: their bytes go into the store
                data = image_bytes(person.image_key)
                sha = hashlib.sha256(data).hexdigest()
                fmt = probe(data).format
                tx.put_image(data, sha, fmt)
                image_id = schema.image_id_from_sha256(sha)
            else:
                sha, fmt, data, image_id = None, None, None, person.image_key
            image_id_of[person.image_key] = image_id
            if image_id in rows_of:
                continue  # the same picture under two file names: one image row
            rows_of.add(image_id)
            image_rows.append({"image_id": image_id, "source": source, "source_image_id": person.coco_image_id,
                               "file_name": person.file_name, "width": person.width, "height": person.height,
                               "sha256": sha, "format": fmt, "num_bytes": None if data is None else len(data),
                               "provenance": records.to_json({"predicted_by": pred.model.get("name")}),
                               "source_file": source_file, "batch_id": batch_id})
        if image_bytes is None:
            _copy_image_columns(store, image_rows)
        n = len(pred.people)
        ids = [p.instance_id or f"{image_id_of[p.image_key]}:{i}" for i, p in enumerate(pred.people)]
        columns = {
            "instance_id": schema.instance_ids(source, ids),
            "image_id": [image_id_of[p.image_key] for p in pred.people],
            "source": [source] * n,
            "area": [float(p.bbox[2] * p.bbox[3]) for p in pred.people],
            "iscrowd": [False] * n,
            "num_keypoints": labelled.sum(axis=1).astype(np.int32).tolist(),
            "skeleton": ["coco17"] * n,
            "source_annotation_id": [p.source_annotation_id for p in pred.people],
            "notes": [["predicted"]] * n,
            "attributes": [records.to_json({"predicts": p.instance_id, "model": pred.model.get("name")}) for p in pred.people],
            "source_file": [source_file] * n,
            "record_index": list(range(n)),
            "batch_id": [batch_id] * n,
            "keypoint_scores": [s.astype(np.float32).tolist() for s in scores],
            "score": pred.scores.astype(np.float64).tolist(),
        }
        bboxes = np.stack([p.bbox for p in pred.people]) if n else np.zeros((0, 4))
        batch = {"batch_id": batch_id, "source": source, "source_file": source_file, "file_sha256": batch_id,
                 "format": "predict", "images_read": len(image_rows), "images_accepted": len(image_rows),
                 "images_rejected": 0, "annotations_read": n, "annotations_accepted": n, "annotations_rejected": 0,
                 "files_rejected": 0, "params": records.to_json({"model": pred.model, "min_score": min_score})}
        import pyarrow as pa

        # One run per pred/ source: whatever it held (another input or model) is replaced.
        tx.replace_files(sorted(set(tx.known_files()) | {source_file}), {
            "images": records.images_table(image_rows),
            "instances": records.instances_table(columns, kp, bboxes),
            "batches": pa.Table.from_pylist([batch], schema=schema.BATCHES_SCHEMA),
        })
    return {"source": source, "people": n, "images": len(image_rows)}


def _copy_image_columns(store: PoseStore, rows: list[dict]) -> None:
    """Store images already in the store: the pred/ rows point at the same bytes."""
    want = {r["image_id"] for r in rows}
    known = {}
    for row in store.images().select(["image_id", "sha256", "format", "num_bytes", "license"]).to_pylist():
        if row["image_id"] in want:
            known.setdefault(row["image_id"], row)
    for r in rows:
        k = known[r["image_id"]]
        r.update(sha256=k["sha256"], format=k["format"], num_bytes=k["num_bytes"], license=k["license"])
