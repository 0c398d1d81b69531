"""COCO keypoint AP computed the way pycocotools computes it, with matching done once so AP can
be recomputed for any resampling of the images (bootstrap intervals) in milliseconds.

pycocotools' ``COCOeval(iouType="keypoints")`` for the "all" area range and 20 detections per
image is reproduced operation for operation: ground truth ignored when it is a crowd or has no
labelled joint, detections ranked by score with stable sorts, OKS with COCO's per-joint sigmas
(the outside-the-box distance for people without joints), greedy matching per image and
threshold preferring unmatched non-ignored people, and precision interpolated at 101 recall
points. ``tests/test_experiment_oks.py`` checks the result equals ``COCOeval``'s to the last bit
on real and adversarial files.

What one match keeps per detection (in the global ranking order) is whether it is a true or a
false positive at each OKS threshold, and per image how many people count. AP of a resample is
then a weighted cumulative sum: an image drawn k times weighs k (an image not drawn, 0), which
is the same as concatenating k copies of it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# COCO's per-joint OKS sigmas (pycocotools Params.setKpParams).
SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0
OKS_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
RECALL_POINTS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
MAX_DETECTIONS = 20
AREA_RANGE = (0 ** 2, 1e5 ** 2)  # "all"


@dataclass
class Matches:
    """The per-image matching of one predictions file against its ground truth."""

    image_ids: list  # the ground truth's images, sorted (pycocotools' imgIds)
    det_image: np.ndarray  # (D,) index into image_ids of each ranked detection
    det_score: np.ndarray  # (D,) scores, ranked (descending, stable)
    tp: np.ndarray  # (T, D) bool: matched a counted person at threshold t
    fp: np.ndarray  # (T, D) bool: matched nobody and not ignored
    people: np.ndarray  # (I,) counted (non-ignored) people per image

    @property
    def num_people(self) -> int:
        return int(self.people.sum())


def oks_matrix(dts: list[dict], gts: list[dict]) -> np.ndarray:
    """pycocotools ``computeOks`` for one image (``dts`` already ranked and cut to 20)."""
    ious = np.zeros((len(dts), len(gts)))
    variances = (SIGMAS * 2) ** 2
    k = len(SIGMAS)
    for j, gt in enumerate(gts):
        g = np.array(gt["keypoints"])
        xg, yg, vg = g[0::3], g[1::3], g[2::3]
        k1 = np.count_nonzero(vg > 0)
        bb = gt["bbox"]
        x0, x1 = bb[0] - bb[2], bb[0] + bb[2] * 2
        y0, y1 = bb[1] - bb[3], bb[1] + bb[3] * 2
        for i, dt in enumerate(dts):
            d = np.array(dt["keypoints"])
            xd, yd = d[0::3], d[1::3]
            if k1 > 0:
                dx, dy = xd - xg, yd - yg
            else:  # no labelled joint: distance to the box enlarged twice
                z = np.zeros(k)
                dx = np.max((z, x0 - xd), axis=0) + np.max((z, xd - x1), axis=0)
                dy = np.max((z, y0 - yd), axis=0) + np.max((z, yd - y1), axis=0)
            e = (dx ** 2 + dy ** 2) / variances / (gt["area"] + np.spacing(1)) / 2
            if k1 > 0:
                e = e[vg > 0]
            ious[i, j] = np.sum(np.exp(-e)) / e.shape[0]
    return ious


def _result_area(keypoints: list[float]) -> float:
    """pycocotools ``loadRes``: a keypoint result's area is its joints' extent."""
    x, y = keypoints[0::3], keypoints[1::3]
    return float((np.max(x) - np.min(x)) * (np.max(y) - np.min(y)))


def match(ground_truth: dict, results: list[dict]) -> Matches:
    """Match COCO keypoint ``results`` against ``ground_truth`` (a COCO json dict), category 1."""
    gts_of, dts_of = defaultdict(list), defaultdict(list)
    for ann in ground_truth["annotations"]:
        if ann["category_id"] == 1:
            ignore = bool(ann.get("iscrowd", 0)) or ann["num_keypoints"] == 0
            gts_of[ann["image_id"]].append({**ann, "ignore": ignore})
    for index, res in enumerate(results):
        if res["category_id"] == 1:
            dts_of[res["image_id"]].append({**res, "id": index + 1, "area": _result_area(res["keypoints"])})
    image_ids = sorted({img["id"] for img in ground_truth["images"]})
    known = set(image_ids)
    stray = [r["image_id"] for r in results if r["image_id"] not in known]
    if stray:
        raise ValueError(f"results for image {stray[0]} which is not in the ground truth")

    thresholds = len(OKS_THRESHOLDS)
    scores, det_image, tps, fps = [], [], [], []
    people = np.zeros(len(image_ids), dtype=np.int64)
    for i, image_id in enumerate(image_ids):
        gt, dt = gts_of.get(image_id, []), dts_of.get(image_id, [])
        if not gt and not dt:
            continue
        for g in gt:
            g["_ignore"] = int(g["ignore"] or g["area"] < AREA_RANGE[0] or g["area"] > AREA_RANGE[1])
        oks = oks_matrix(_ranked(dt)[:MAX_DETECTIONS], gt) if gt and dt else np.zeros((0, 0))
        gt_order = np.argsort([g["_ignore"] for g in gt], kind="mergesort")
        gt = [gt[j] for j in gt_order]
        dt = _ranked(dt)[:MAX_DETECTIONS]
        if oks.size:
            oks = oks[:, gt_order]
        crowd = [int(g.get("iscrowd", 0)) for g in gt]
        gt_ignore = np.array([g["_ignore"] for g in gt])
        gt_match = np.zeros((thresholds, len(gt)))
        dt_match = np.zeros((thresholds, len(dt)))
        dt_ignore = np.zeros((thresholds, len(dt)))
        if oks.size:
            for t, threshold in enumerate(OKS_THRESHOLDS):
                for d_index, d in enumerate(dt):
                    best = min([threshold, 1 - 1e-10])
                    m = -1
                    for g_index, g in enumerate(gt):
                        if gt_match[t, g_index] > 0 and not crowd[g_index]:
                            continue  # taken (crowds can be matched again)
                        if m > -1 and gt_ignore[m] == 0 and gt_ignore[g_index] == 1:
                            break  # a counted person beats every ignored one after it
                        if oks[d_index, g_index] < best:
                            continue
                        best, m = oks[d_index, g_index], g_index
                    if m == -1:
                        continue
                    dt_ignore[t, d_index] = gt_ignore[m]
                    dt_match[t, d_index] = gt[m]["id"]
                    gt_match[t, m] = d["id"]
        outside = np.array([d["area"] < AREA_RANGE[0] or d["area"] > AREA_RANGE[1] for d in dt]).reshape((1, len(dt)))
        dt_ignore = np.logical_or(dt_ignore, np.logical_and(dt_match == 0, np.repeat(outside, thresholds, 0)))
        scores += [d["score"] for d in dt]
        det_image += [i] * len(dt)
        tps.append(np.logical_and(dt_match, np.logical_not(dt_ignore)))
        fps.append(np.logical_and(np.logical_not(dt_match), np.logical_not(dt_ignore)))
        people[i] = int(np.count_nonzero(gt_ignore == 0))
    score_arr = np.array(scores, dtype=np.float64)
    order = np.argsort(-score_arr, kind="mergesort")
    empty = np.zeros((thresholds, 0), dtype=bool)
    tp = np.concatenate(tps, axis=1)[:, order] if tps else empty
    fp = np.concatenate(fps, axis=1)[:, order] if fps else empty
    return Matches(image_ids, np.array(det_image, dtype=np.int64)[order], score_arr[order], tp, fp, people)


def _ranked(dts: list[dict]) -> list[dict]:
    order = np.argsort([-d["score"] for d in dts], kind="mergesort")
    return [dts[i] for i in order]


def precision_table(m: Matches, image_weight: np.ndarray | None = None) -> np.ndarray | None:
    """(T, 101) interpolated precision, pycocotools' ``accumulate``; None when nobody counts.

    ``image_weight`` (I,) counts each image that many times (a bootstrap resample)."""
    if image_weight is None:
        tp_sum = np.cumsum(m.tp, axis=1).astype(dtype=float)
        fp_sum = np.cumsum(m.fp, axis=1).astype(dtype=float)
        counted = int(m.people.sum())
    else:
        w = np.asarray(image_weight, dtype=float)
        det_w = w[m.det_image]
        tp_sum = np.cumsum(m.tp * det_w, axis=1)
        fp_sum = np.cumsum(m.fp * det_w, axis=1)
        counted = float((m.people * w).sum())
    if not counted:
        return None
    out = np.zeros((len(OKS_THRESHOLDS), len(RECALL_POINTS)))
    nd = tp_sum.shape[1]
    if nd == 0:
        return out
    for t in range(len(OKS_THRESHOLDS)):
        tp, fp = tp_sum[t], fp_sum[t]
        rc = tp / counted
        pr = tp / (fp + tp + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope: the best at any higher recall
        at = np.searchsorted(rc, RECALL_POINTS, side="left")
        inside = at < nd
        out[t, inside] = pr[at[inside]]
    return out


def summarize(precision: np.ndarray | None) -> dict[str, float]:
    """AP, AP50 and AP75 from a precision table, as ``COCOeval.summarize`` does (-1 when undefined)."""
    if precision is None:
        return {"AP": -1.0, "AP50": -1.0, "AP75": -1.0}

    def mean(s: np.ndarray) -> float:
        s = s[s > -1]
        return float(np.mean(s)) if len(s) else -1.0

    t50 = int(np.where(OKS_THRESHOLDS == .5)[0][0])
    t75 = int(np.where(OKS_THRESHOLDS == .75)[0][0])
    return {"AP": mean(precision), "AP50": mean(precision[t50]), "AP75": mean(precision[t75])}


def average_precision(m: Matches, image_weight: np.ndarray | None = None) -> dict[str, float]:
    return summarize(precision_table(m, image_weight))


def load(gt_path: str | Path, results_path: str | Path) -> tuple[dict, list[dict]]:
    return json.loads(Path(gt_path).read_text()), json.loads(Path(results_path).read_text())


def subset(ground_truth: dict, results: list[dict], result_people: list[int], keep: set[int]) -> tuple[dict, list[dict]]:
    """Ground truth and results restricted to the people whose annotation id is in ``keep``.

    ``result_people`` gives the ground-truth annotation id each result was predicted for (top-down
    with ground-truth boxes: one result per person). Other counted people of the same images are
    dropped with their results, so they are neither missed nor matched; ignored annotations
    (crowds, people without joints) stay, as they only ever absorb detections. Images left
    without a kept person are dropped."""
    images = {a["image_id"] for a in ground_truth["annotations"] if a["id"] in keep}
    annotations = [a for a in ground_truth["annotations"] if a["image_id"] in images and
                   (a["id"] in keep or a.get("iscrowd", 0) or a["num_keypoints"] == 0)]
    gt = {**ground_truth, "images": [im for im in ground_truth["images"] if im["id"] in images],
          "annotations": annotations}
    return gt, [r for r, person in zip(results, result_people) if person in keep]


def resampled_ap(m: Matches, image_weights: np.ndarray, chunk: int = 128) -> np.ndarray:
    """(B, 2) AP and AP50 for B resamples, ``image_weights`` (B, I) counting each image's copies.

    The same computation as :func:`precision_table` with weights, vectorised over resamples; a
    resample that draws nobody counted gets NaN."""
    weights = np.asarray(image_weights, dtype=float)
    out = np.full((len(weights), 2), np.nan)
    thresholds, nd = len(OKS_THRESHOLDS), m.tp.shape[1]
    t50 = int(np.where(OKS_THRESHOLDS == .5)[0][0])
    for lo in range(0, len(weights), chunk):
        w = weights[lo:lo + chunk]
        counted = w @ m.people
        valid = counted > 0
        if nd == 0:
            out[lo:lo + chunk][valid] = 0.0
            continue
        det_w = w[:, m.det_image][:, None, :]
        tp = np.cumsum(m.tp[None] * det_w, axis=2)
        fp = np.cumsum(m.fp[None] * det_w, axis=2)
        rc = tp / np.where(valid, counted, 1.0)[:, None, None]
        pr = tp / (fp + tp + np.spacing(1))
        pr = np.maximum.accumulate(pr[..., ::-1], axis=2)[..., ::-1]
        precision = np.zeros((len(w), thresholds, len(RECALL_POINTS)))
        for b in np.flatnonzero(valid):
            for t in range(thresholds):
                at = np.searchsorted(rc[b, t], RECALL_POINTS, side="left")
                inside = at < nd
                precision[b, t, inside] = pr[b, t, at[inside]]
        block = np.stack([precision.mean(axis=(1, 2)), precision[:, t50].mean(axis=1)], axis=1)
        block[~valid] = np.nan
        out[lo:lo + chunk] = block
    return out
