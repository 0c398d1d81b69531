"""Pre-annotations for annotators: LabelMe json (and the images) out of any store source.

Each image becomes ``<file_name>.json`` beside a copy of the image, in the convention of
``convention.py``: one ``group_id`` per person (1, 2, ... in store order), a ``person``
rectangle from the stored box (flag ``crowd`` for iscrowd regions), one ``point`` per labelled
joint with the flag ``occluded`` (v=1) or not (v=2); unlabelled joints (v=0) are left out.
Files are written as labelme writes them with ``--nodata`` (imageData null), so labelme opens
them directly, and ingesting the folder gives back the same keypoints, visibility, boxes and
iscrowd. Same store, same bytes: nothing random, keys in a fixed order.

Model predictions (a ``pred/`` source from ``posepipe predict``, or ``prelabel_folder`` straight
from a folder of new images) become pre-annotations the same way: joints under the prediction's
``min_score`` are left out (v=0), and joints scoring under ``review_score`` carry the flag
``check`` and their score in ``description``, so the annotator looks at those first.
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


REVIEW_SCORE = 0.5  # joints of a prediction scoring under this are flagged `check`


def export_labelme(store: PoseStore, source: str, out: str | os.PathLike,
                   progress: Progress | None = None, review_score: float = REVIEW_SCORE) -> PreannotationReport:
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
    scores = inst.column("keypoint_scores").to_pylist()  # None for human labels
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
            shapes.extend(_person_shapes(kp[row], boxes[row], bool(crowd[row]), group_id, scores[row], review_score))
        doc = labelme_format.file_dict(
            shapes, PurePosixPath(rel).name, im["height"], im["width"], {convention.CROWD_FLAG: False},
            {"posepipe": {"source": source, "image_id": im["image_id"]}},
        )
        atomic.write_bytes(out_dir / PurePosixPath(rel).with_suffix(".json"), orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        report.files += 1
        report.people += len(rows)
    return report


def _person_shapes(kp: np.ndarray, box: np.ndarray, crowd: bool, group_id: int,
                   scores: list[float] | None = None, review_score: float = REVIEW_SCORE) -> list[dict]:
    x, y, w, h = (float(v) for v in box)
    shapes = [labelme_format.shape_dict(convention.PERSON_LABEL, [[x, y], [x + w, y + h]], "rectangle",
                                        group_id, {convention.CROWD_FLAG: crowd})]
    for j, (jx, jy, v) in enumerate(kp):
        if v <= 0:
            continue
        flags = {convention.OCCLUDED_FLAG: bool(v == schema.VISIBILITY_OCCLUDED)}
        shape = labelme_format.shape_dict(convention.JOINTS[j], [[_f32(jx), _f32(jy)]], "point", group_id, flags)
        if scores is not None:  # a model's guess: say how sure it was, flag the unsure ones
            flags[convention.CHECK_FLAG] = bool(scores[j] < review_score)
            shape["description"] = f"model score {scores[j]:.2f}"
        shapes.append(shape)
    return shapes


def prelabel_folder(folder: str | os.PathLike, keypoints: np.ndarray, boxes: np.ndarray, files: list[str],
                    sizes: list[tuple[int, int]], min_score: float, review_score: float = REVIEW_SCORE, overwrite: bool = False, model: str = "") -> dict:
    """LabelMe files beside the images of ``folder`` from predictions (one row per person:
    ``files[i]`` its image's name, ``sizes[i]`` (height, width), ``keypoints[i]`` (17, 3) x, y, score).

    An image that already has its json (an annotator's work) is left alone unless ``overwrite``.
    """
    from posepipe.pretrained.predict import offered

    folder = Path(folder)
    keep = offered(keypoints, [s[1] for s in sizes], [s[0] for s in sizes], min_score)
    people: dict[str, list[int]] = {}
    for i, name in enumerate(files):
        people.setdefault(name, []).append(i)
    written, kept, written_people = [], [], 0
    for name in sorted(people):
        target = (folder / name).with_suffix(".json")
        if target.exists() and not overwrite:
            kept.append(target.name)
            continue
        shapes = []
        for group_id, i in enumerate(people[name], start=1):
            kp = keypoints[i].copy()
            joint_scores = kp[:, 2].tolist()
            kp[:, 2] = np.where(keep[i], schema.VISIBILITY_VISIBLE, schema.VISIBILITY_NOT_LABELLED)
            shapes.extend(_person_shapes(kp, boxes[i], False, group_id, joint_scores, review_score))
        h, w = sizes[people[name][0]]
        doc = labelme_format.file_dict(shapes, name, h, w, {convention.CROWD_FLAG: False},
                                       {"posepipe": {"prelabelled_by": model, "min_score": min_score}})
        atomic.write_bytes(target, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        written.append(target.name)
        written_people += len(people[name])
    return {"folder": str(folder), "files_written": len(written), "people": written_people,
            "kept_existing": kept, "written": written}


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


def edit_savings(labels: np.ndarray, predictions: np.ndarray, areas: np.ndarray, min_score: float) -> dict:
    """What pre-annotations save an annotator, joint by joint, against the final labels.

    ``labels`` (N, 17, 3) x, y, v; ``predictions`` (N, 17, 3) x, y, score for the same people;
    ``areas`` their COCO areas. A pre-labelled joint (score >= ``min_score``) on a labelled one
    needs no move when it lies within the annotators' own spread: distance <= k_j * sqrt(area),
    k_j = 2 sigma_j, COCO's per-joint constant measured from re-annotations (per-joint OKS >= 0.61).
    Otherwise it is moved; labelled joints without a pre-label are added, pre-labels on
    unlabelled joints deleted. From zero, every labelled joint is one placement.
    """
    labelled = labels[..., 2] > 0
    offered = predictions[..., 2] >= min_score
    scale = np.sqrt(np.maximum(areas, 1.0))[:, None]
    k = 2 * schema.OKS_SIGMAS[None, :]
    distance = np.linalg.norm(predictions[..., :2] - labels[..., :2], axis=-1)
    within = distance <= k * scale
    no_move = int((labelled & offered & within).sum())
    moved = int((labelled & offered & ~within).sum())
    added = int((labelled & ~offered).sum())
    deleted = int((~labelled & offered).sum())
    total = int(labelled.sum())
    strict = int((labelled & offered & (distance <= k / 2 * scale)).sum())
    return {
        "people": int(len(labels)), "labelled_joints": total, "no_move": no_move, "moved": moved, "added": added,
        "deleted": deleted, "share_no_move": no_move / max(total, 1),
        "share_no_move_within_one_sigma": strict / max(total, 1),
        "edits_with_preannotations": moved + added + deleted, "placements_from_zero": total,
        "edit_ratio": (moved + added + deleted) / max(total, 1), "min_score": min_score,
    }
