"""Evaluation with ground-truth boxes: the official COCO keypoint metric, plus PCK as a quick check.

Writes, in the output folder: ``val_gt.json`` (the COCO ground truth used: every annotation of
the validation images, so crowds and people without joints are ignored the way COCOeval
ignores them), ``predictions.json`` (COCO keypoint results for each person with labelled joints)
and ``metrics.json`` (pycocotools ``COCOeval(iouType="keypoints")`` stats, and PCK).

The model is any ``predict_fn``: a float32 (B, 3, H, W) batch in, (B, 17, h, w) heatmaps out, so
PyTorch and both ONNX Runtime exports are scored by the same code.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.compute as pc

from posepipe.datasets import atomic, schema
from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.progress import NoProgress, Progress
from posepipe.datasets.store import PoseStore

from posepipe.datasets.instance_dataset import Instances, load_instances

from .data import PoseDataset
from .heatmaps import decode, flip_heatmaps
from .model import HEATMAP_STRIDE
from .transforms import apply_affine, crop_matrix, invert

PredictFn = Callable[[np.ndarray], np.ndarray]
STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
# A joint counts towards the person's score when its heatmap peak is above this (HRNet's rescoring).
JOINT_SCORE_THRESHOLD = 0.2
# PCK: a joint is correct when within this share of the box's longer side.
PCK_THRESHOLD = 0.1


@dataclass
class ValidationSet:
    instances: Instances  # the people predicted: labelled joints, not crowds
    ground_truth: dict  # COCO json of every annotation on their images
    gt_ids: list[tuple[int, int]]  # (COCO image id, COCO annotation id) of each predicted person


def validation_set(store: PoseStore, instance_ids=None, sources=None) -> ValidationSet:
    """The people in ``instance_ids`` (default: all of ``sources``) that COCOeval scores, and the GT json."""
    table = store.instances(sources)
    if instance_ids is not None:
        table = table.filter(pc.is_in(table.column("instance_id"), value_set=_string_array(instance_ids)))
    if table.num_rows == 0:
        raise PosepipeError(f"no validation instances in the store {store.root} (sources {sources or 'all'})")
    val_sources = sorted(set(table.column("source").to_pylist()))
    image_ids = sorted(set(table.column("image_id").to_pylist()))
    # Every annotation on those images from the same sources, as COCO ground truth.
    every = store.instances(val_sources)
    every = every.filter(pc.is_in(every.column("image_id"), value_set=_string_array(image_ids)))
    images = store.images(val_sources)
    images = images.filter(pc.is_in(images.column("image_id"), value_set=_string_array(image_ids)))
    coco_image = {}
    gt_images = []
    for row in images.select(["image_id", "file_name", "width", "height"]).to_pylist():
        if row["image_id"] in coco_image:
            continue  # the same picture in two sources is one image
        coco_image[row["image_id"]] = len(coco_image) + 1
        gt_images.append({"id": coco_image[row["image_id"]], "file_name": row["file_name"],
                          "width": row["width"], "height": row["height"]})
    kps = schema.keypoints_from_arrow(every.column("keypoints"))
    boxes = schema.bbox_from_arrow(every.column("bbox"))
    annotations, ann_of = [], {}
    cols = every.select(["instance_id", "image_id", "area", "iscrowd", "num_keypoints"]).to_pylist()
    for i, row in enumerate(cols):
        ann_id = i + 1
        ann_of[row["instance_id"]] = ann_id
        area = row["area"] if row["area"] is not None else float(boxes[i, 2] * boxes[i, 3])
        annotations.append({
            "id": ann_id, "image_id": coco_image[row["image_id"]], "category_id": 1,
            "keypoints": [round(float(v), 2) for v in kps[i].reshape(-1)],
            "num_keypoints": int((kps[i, :, 2] > 0).sum()), "bbox": [float(v) for v in boxes[i]],
            "area": float(area), "iscrowd": int(bool(row["iscrowd"])),
        })
    gt = {"info": {"description": "posepipe validation ground truth"}, "images": gt_images,
          "annotations": annotations, "categories": [schema.PERSON_CATEGORY]}
    scored = table.filter(pc.and_(pc.invert(table.column("iscrowd")), pc.greater(table.column("num_keypoints"), 0)))
    if scored.num_rows == 0:
        raise PosepipeError(f"no validation person with labelled joints in the store {store.root}")
    ids = scored.column("instance_id").to_pylist()
    inst = load_instances(store, ids, val_sources, what="validation set")
    gt_ids = [(coco_image[img], ann_of[iid]) for iid, img in zip(ids, scored.column("image_id").to_pylist())]
    return ValidationSet(inst, gt, gt_ids)


def _string_array(values):
    import pyarrow as pa

    return pa.array([str(v) for v in values], type=pa.string())


def crop_keypoints(predict_fn: PredictFn, batch: np.ndarray, flip_test: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """One batch of crops -> keypoints (B, 17, 2) in crop pixels, joint scores (B, 17), output kind.

    Heatmap models ((B, 17, h, w) out) are decoded here, with HRNet's flip test on the heatmaps;
    keypoint models ((B, 17, 3) out: pulled pretrained ones, fine-tuned MoveNets) decode
    themselves, and the flip test averages the mirrored answer's coordinates and scores.
    """
    out = np.asarray(predict_fn(batch), dtype=np.float32)
    if out.ndim == 4:
        if flip_test:
            flipped = flip_heatmaps(np.asarray(predict_fn(np.ascontiguousarray(batch[..., ::-1]))), schema.FLIP_INDEX)
            flipped = np.ascontiguousarray(flipped)
            # A flipped crop's heatmap, flipped back, sits 0.75 px left of the plain one: shift by 1 (HRNet).
            flipped[..., 1:] = flipped[..., :-1].copy()
            out = (out + flipped) * 0.5
        coords, maxvals = decode(out)
        return coords * HEATMAP_STRIDE, maxvals, "heatmaps"
    if out.ndim != 3 or out.shape[1:] != (schema.NUM_JOINTS, 3):
        raise PosepipeError(f"the model's output has shape {out.shape}: neither (N, 17, h, w) heatmaps nor (N, 17, 3) keypoints")
    if flip_test:
        mirrored = np.asarray(predict_fn(np.ascontiguousarray(batch[..., ::-1])), dtype=np.float32)[:, list(schema.FLIP_INDEX)]
        mirrored[..., 0] = batch.shape[-1] - 1 - mirrored[..., 0]
        out = (out + mirrored) * 0.5
    return out[..., :2], out[..., 2], "keypoints"


def person_scores(joint_scores: np.ndarray, kind: str) -> np.ndarray:
    """One confidence per person for COCOeval's ranking.

    Heatmap models: HRNet's rescoring (mean peak of the joints above 0.2). Keypoint models: the
    mean of all 17 joint scores, MoveNet's own convention (measured on coco-mini val with Thunder:
    AP 0.463 against 0.438 with HRNet's rule).
    """
    if kind == "keypoints":
        return joint_scores.mean(axis=1).astype(np.float32)
    good = joint_scores > JOINT_SCORE_THRESHOLD
    return np.where(good.any(axis=1), (joint_scores * good).sum(axis=1) / np.maximum(good.sum(axis=1), 1),
                    0.0).astype(np.float32)


def predict(
    predict_fn: PredictFn,
    dataset: PoseDataset,
    batch_size: int = 32,
    flip_test: bool = True,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (N, 17, 3) in image pixels with per-joint scores, and one score per person.

    ``dataset`` is anything with ``len``, ``input_size`` and ``sample(i)`` giving a crop's
    ``image``, ``center`` and ``scale`` (``PoseDataset``, or ``pretrained.predict``'s boxes)."""
    from concurrent.futures import ThreadPoolExecutor

    n = len(dataset)
    out = np.zeros((n, schema.NUM_JOINTS, 3), dtype=np.float32)
    starts = range(0, n, batch_size)
    kind = "heatmaps"
    # Decoding and cropping release the GIL (cv2): a few threads keep the model fed.
    with ThreadPoolExecutor(max_workers=4) as pool:
        for start in (progress or NoProgress()).track(starts, len(starts), "predicting"):
            samples = list(pool.map(dataset.sample, range(start, min(n, start + batch_size))))
            batch = np.stack([s["image"] for s in samples]).astype(np.float32)
            coords, scores, kind = crop_keypoints(predict_fn, batch, flip_test)
            for k, s in enumerate(samples):
                m = invert(crop_matrix(s["center"], s["scale"], 0.0, dataset.input_size))
                out[start + k, :, :2] = apply_affine(coords[k], m)
                out[start + k, :, 2] = scores[k]
    return out, person_scores(out[..., 2], kind)


def pck(pred: np.ndarray, gt: np.ndarray, bboxes: np.ndarray, threshold: float = PCK_THRESHOLD) -> float:
    """Share of labelled joints predicted within ``threshold`` x the box's longer side."""
    labelled = gt[..., 2] > 0
    if not labelled.any():
        return 0.0
    norm = np.maximum(bboxes[:, 2:4].max(axis=1), 1.0)[:, None]
    dist = np.linalg.norm(pred[..., :2] - gt[..., :2], axis=-1) / norm
    return float((dist[labelled] < threshold).mean())


def coco_results(keypoints: np.ndarray, scores: np.ndarray, gt_ids: list[tuple[int, int]]) -> list[dict]:
    """COCO keypoint results. A non-finite prediction (a diverged model) is written as joints at 0
    with score 0: json has no NaN, and COCOeval would otherwise count NaN distances as matches."""
    keypoints = np.asarray(keypoints, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    broken = ~np.isfinite(keypoints).all(axis=(1, 2)) | ~np.isfinite(scores)
    if broken.any():
        keypoints = np.where(np.isfinite(keypoints), keypoints, 0.0)
        scores = np.where(broken, 0.0, scores)
    return [
        {"image_id": img, "category_id": 1, "keypoints": [round(float(v), 3) for v in kp.reshape(-1)],
         "score": float(score)}
        for kp, score, (img, _) in zip(keypoints, scores, gt_ids)
    ]


def coco_eval(gt_path: str | Path, predictions_path: str | Path) -> dict[str, float]:
    """pycocotools' COCOeval(iouType="keypoints") on the two files; its printout is swallowed."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        results = json.loads(Path(predictions_path).read_text())
        if not results:
            return {name: 0.0 for name in STAT_NAMES}
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="keypoints")
        ev.params.useSegm = None
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}


def score(predict_fn: PredictFn, store: PoseStore, val: ValidationSet, input_size: tuple[int, int],
          work_dir: Path, batch_size: int = 32, flip_test: bool = True, progress: Progress | None = None) -> dict:
    """AP etc. of ``predict_fn`` on ``val`` (files written under ``work_dir``), without metrics.json."""
    dataset = PoseDataset(store, val.instances, input_size, train=False)
    keypoints, scores = predict(predict_fn, dataset, batch_size, flip_test, progress)
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(work_dir / "val_gt.json", json.dumps(val.ground_truth))
    atomic.write_text(work_dir / "predictions.json", json.dumps(coco_results(keypoints, scores, val.gt_ids)))
    metrics = coco_eval(work_dir / "val_gt.json", work_dir / "predictions.json")
    metrics["PCK"] = pck(keypoints, val.instances.keypoints, val.instances.bbox)
    metrics["num_instances"] = len(val.instances)
    return metrics


def evaluate(predict_fn: PredictFn, store: PoseStore, val: ValidationSet, input_size: tuple[int, int],
             out_dir: str | Path, **kwargs) -> dict:
    """Write val_gt.json, predictions.json and metrics.json into ``out_dir``; return the metrics."""
    out_dir = Path(out_dir)
    metrics = score(predict_fn, store, val, input_size, out_dir, **kwargs)
    atomic.write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def torch_predictor(model) -> PredictFn:
    import torch

    model.eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(batch))).numpy()

    return run
