"""Label checking: every annotation against a pose model's prediction on the same box.

The model is a second opinion that is usually right (MoveNet Thunder agrees with COCO's own
labels within the annotators' spread on about two joints in three): where it is confident, the
rest of the body agrees, and one label still disagrees, the label is probably wrong. Per person:
OKS between label and prediction over the labelled joints, and each joint's distance in units
of the annotators' spread (k_j * sqrt(area), COCO's per-joint constant). Findings, by kind:

* ``left_right_swapped``: the labels with left and right exchanged (the whole body, or the arms,
  legs or face alone) fit the prediction much better than as labelled;
* ``joint_off``: a labelled joint far from a confident prediction (over ``far`` spreads, where
  the per-joint OKS is about 0) while the person's other joints agree;
* ``visible_unlabelled``: a joint left unlabelled that the model sees with high confidence
  inside the person's box, while the labelled joints agree;
* ``box_mismatch``: labelled joints outside the box, or a box far larger than the body the
  joints and the model's confident joints span.

Every finding has a severity in 0..1 to rank by, and a one-line message naming the source,
file, person and joint. Plain numpy: the prediction is made by the caller (``posepipe qa``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from posepipe.datasets import schema

KINDS = ("left_right_swapped", "joint_off", "visible_unlabelled", "box_mismatch")
K = 2 * schema.OKS_SIGMAS  # COCO's per-joint constants
FLIP = np.array(schema.FLIP_INDEX)
# Groups whose left and right can be swapped alone (an annotator mixing up one limb pair).
SWAP_GROUPS = {
    "whole body": tuple(range(17)),
    "arms": (5, 6, 7, 8, 9, 10),
    "legs": (11, 12, 13, 14, 15, 16),
    "face": (1, 2, 3, 4),
}


@dataclass
class QAOptions:
    confident: float = 0.5  # a joint's model score to trust it
    # An unlabelled joint is "seen" when the model scores it like the person's visible joints:
    # at least this share of their median score (MoveNet's scores run low on small people), and
    # at least ``see_floor``.
    see_relative: float = 1.0
    see_floor: float = 0.4
    agree: float = 0.5  # the person's OKS (other joints) for the body to count as agreeing
    far: float = 3.0  # spreads (k_j * sqrt(area)) beyond which a joint is off
    swap_gain: float = 0.25  # OKS gained by swapping for a swap finding
    min_joints: int = 4  # labelled joints a person needs for any finding
    box_margin: float = 0.1  # of the box size a labelled joint may lie outside it
    box_iou: float = 0.35  # below this IoU of box and body, the box does not fit


@dataclass
class Finding:
    kind: str
    severity: float
    index: int  # row in the arrays given
    joint: str | None
    message: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def joint_oks(labels: np.ndarray, pred: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 17) per-joint OKS and distance in spreads between labels and predictions."""
    d = np.linalg.norm(labels[..., :2] - pred[..., :2], axis=-1)
    spreads = d / (K[None, :] * scale[:, None])
    return np.exp(-(spreads ** 2) / 2), spreads


def _mean_over(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask.any(axis=1), (values * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1), 0.0)


def _iou(a, b) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def check(labels: np.ndarray, boxes: np.ndarray, areas: np.ndarray, pred: np.ndarray, names: list[str],
          options: QAOptions | None = None) -> tuple[list[Finding], np.ndarray]:
    """Findings (ranked, most severe first) and each person's OKS against the model (NaN when it
    has too few labelled joints to judge).

    ``labels`` (N, 17, 3) x, y, v; ``boxes`` (N, 4) COCO boxes; ``areas`` (N,); ``pred`` (N, 17, 3)
    x, y, score on the same boxes; ``names[i]`` says who person i is, for messages.
    """
    o = options or QAOptions()
    areas = np.where(np.asarray(areas, dtype=np.float64) > 0, areas, boxes[:, 2] * boxes[:, 3])
    scale = np.sqrt(np.maximum(areas, 1.0))
    labelled = labels[..., 2] > 0
    score = pred[..., 2]
    oks_j, spreads = joint_oks(labels, pred, scale)
    person_oks = _mean_over(oks_j, labelled)
    judged = labelled.sum(axis=1) >= o.min_joints
    findings: list[Finding] = []
    for i in np.flatnonzero(judged):
        found = _swaps(i, labels, pred, scale, labelled, person_oks, names, o)
        swapped = {f.details["group"] for f in found}
        findings += found
        if not swapped:
            findings += _joints_off(i, labelled, score, oks_j, spreads, names, o)
        findings += _unlabelled(i, labels, boxes, pred, labelled, score, oks_j, names, o)
        findings += _box(i, labels, boxes, pred, labelled & ~((score >= o.confident) & (spreads > o.far)), score, names, o)
    findings.sort(key=lambda f: (-f.severity, f.index, f.kind))
    return findings, np.where(judged, person_oks, np.nan)


def _swaps(i, labels, pred, scale, labelled, person_oks, names, o) -> list[Finding]:
    """The swap (of the whole body, or one group) that fits the prediction best, if it gains enough."""
    mirrored = labels[i][FLIP]  # joint j labelled with its mirror's label
    oks_mirror, _ = joint_oks(mirrored[None], pred[i][None], scale[i:i + 1])
    oks_plain, _ = joint_oks(labels[i][None], pred[i][None], scale[i:i + 1])
    best = None
    for group, joints in SWAP_GROUPS.items():
        g = np.array([j for j in joints if FLIP[j] != j or group == "whole body"])
        before_mask, after_mask = labelled[i, g], mirrored[g, 2] > 0
        if before_mask.sum() < (o.min_joints if group == "whole body" else 2) or after_mask.sum() < before_mask.sum():
            continue
        before = float(oks_plain[0, g][before_mask].mean())
        after = float(oks_mirror[0, g][after_mask].mean())
        if group != "whole body":  # one limb pair swapped: the rest of the body must agree as labelled
            rest = np.setdiff1d(np.arange(17), g)
            rest = rest[labelled[i, rest]]
            if len(rest) < 2 or float(oks_plain[0, rest].mean()) < o.agree:
                continue
        gain = after - before
        if gain >= o.swap_gain and after >= o.agree and (best is None or gain > best[1] + 1e-9):
            best = (group, gain, before, after)
    if best is None:
        return []
    group, gain, before, after = best
    return [Finding("left_right_swapped", min(1.0, gain), int(i), None,
                    f"{names[i]}: left and right look swapped ({group}): OKS {before:.2f} as labelled, "
                    f"{after:.2f} swapped", {"group": group, "oks": before, "oks_swapped": after})]


def _joints_off(i, labelled, score, oks_j, spreads, names, o) -> list[Finding]:
    out = []
    for j in np.flatnonzero(labelled[i] & (score[i] >= o.confident) & (spreads[i] > o.far)):
        others = labelled[i].copy()
        others[j] = False
        agreement = float(oks_j[i][others].mean()) if others.any() else 0.0
        if agreement < o.agree:
            continue
        severity = float(np.clip(agreement * (1 - oks_j[i, j]) * min(1.0, spreads[i, j] / (2 * o.far)), 0, 1))
        out.append(Finding("joint_off", severity, int(i), schema.COCO17_JOINTS[j],
                           f"{names[i]}: {schema.COCO17_JOINTS[j]} is {spreads[i, j]:.1f} spreads from where the model "
                           f"(score {score[i, j]:.2f}) and the rest of the body (OKS {agreement:.2f}) put it",
                           {"spreads": float(spreads[i, j]), "score": float(score[i, j]), "agreement": agreement}))
    return out


def _unlabelled(i, labels, boxes, pred, labelled, score, oks_j, names, o) -> list[Finding]:
    agreement = float(oks_j[i][labelled[i]].mean())
    visible = labels[i, :, 2] == schema.VISIBILITY_VISIBLE
    if agreement < o.agree or visible.sum() < 2:
        return []
    bar = max(o.see_floor, o.see_relative * float(np.median(score[i][visible])))
    x, y, w, h = boxes[i]
    mx, my = w * o.box_margin, h * o.box_margin
    out = []
    for j in np.flatnonzero(~labelled[i] & (score[i] >= bar)):
        px, py = pred[i, j, :2]
        if not (x - mx <= px <= x + w + mx and y - my <= py <= y + h + my):
            continue
        out.append(Finding("visible_unlabelled", float(min(1.0, score[i, j] / bar * 0.5) * agreement), int(i),
                           schema.COCO17_JOINTS[j],
                           f"{names[i]}: {schema.COCO17_JOINTS[j]} is unlabelled, but the model sees it "
                           f"(score {score[i, j]:.2f}) at ({px:.0f}, {py:.0f}) and agrees with the rest "
                           f"(OKS {agreement:.2f})", {"score": float(score[i, j]), "agreement": agreement,
                                                      "x": float(px), "y": float(py)}))
    return out


def _box(i, labels, boxes, pred, labelled, score, names, o) -> list[Finding]:
    """``labelled`` leaves out joints the model puts elsewhere: a joint off is not the box's fault."""
    x, y, w, h = (float(v) for v in boxes[i])
    pts = labels[i][labelled[i], :2]
    mx, my = w * o.box_margin, h * o.box_margin
    outside = (pts[:, 0] < x - mx) | (pts[:, 0] > x + w + mx) | (pts[:, 1] < y - my) | (pts[:, 1] > y + h + my)
    # The body: labelled joints and the model's confident ones, padded as COCO boxes are (about 10%).
    body = np.concatenate([pts, pred[i][score[i] >= o.confident, :2]])
    x0, y0 = body.min(axis=0)
    x1, y1 = body.max(axis=0)
    pad_x, pad_y = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
    body_box = (x0 - pad_x, y0 - pad_y, x1 - x0 + 2 * pad_x, y1 - y0 + 2 * pad_y)
    iou = _iou((x, y, w, h), body_box)
    if outside.any():
        severity = float(min(1.0, 0.5 + outside.mean()))
        reason = f"{int(outside.sum())} labelled joint(s) lie outside it"
    elif iou < o.box_iou and labelled[i].sum() >= 8:
        severity = float(min(1.0, 1 - iou))
        reason = f"it overlaps the body its joints span by IoU {iou:.2f}"
    else:
        return []
    return [Finding("box_mismatch", severity, int(i), None,
                    f"{names[i]}: the box [{x:.0f}, {y:.0f}, {w:.0f}, {h:.0f}] does not fit the person: {reason}",
                    {"iou": iou, "outside": int(outside.sum()), "body_box": [float(v) for v in body_box]})]


def summary(findings: list[Finding], person_oks: np.ndarray) -> dict:
    judged = ~np.isnan(person_oks)
    return {"people": int(len(person_oks)), "people_judged": int(judged.sum()),
            "median_oks": float(np.median(person_oks[judged])) if judged.any() else None,
            "findings": len(findings), "by_kind": {k: sum(f.kind == k for f in findings) for k in KINDS},
            "people_flagged": len({f.index for f in findings})}


def check_source(store, source: str, model, options: QAOptions | None = None, progress=None,
                 batch_size: int = 16) -> dict:
    """Predict every labelled person of a store source with ``model`` (a ``models.runtime.PoseModel``)
    on its own box, check the labels, and return the result (``qa.json``'s content)."""
    from posepipe.pretrained import predict as P

    opts = P.PredictOptions(labelled_only=True, batch_size=batch_size)
    people, images, skipped = P.people_of_source(store, source, opts)
    pred = P.run(model, people, images, opts, model.describe(), {"kind": "source", "path": source}, skipped, progress)
    inst = store.instances([source])
    row_of = {iid: i for i, iid in enumerate(inst.column("instance_id").to_pylist())}
    rows = [row_of[p.instance_id] for p in pred.people]
    labels = schema.keypoints_from_arrow(inst.column("keypoints"))[rows]
    boxes = schema.bbox_from_arrow(inst.column("bbox"))[rows]
    areas = np.array([v if v is not None else np.nan for v in inst.column("area").to_pylist()], dtype=np.float64)[rows]
    areas = np.where(np.isfinite(areas), areas, boxes[:, 2] * boxes[:, 3])
    names = [f"{source} {p.file_name} person {p.instance_id}"
             + (f" (annotation {p.source_annotation_id})" if p.source_annotation_id is not None else "")
             for p in pred.people]
    findings, oks = check(labels, boxes, areas, pred.keypoints, names, options)
    people_out = []
    for i, p in enumerate(pred.people):
        people_out.append({"instance_id": p.instance_id, "image_id": p.image_key, "file_name": p.file_name,
                           "source_annotation_id": p.source_annotation_id,
                           "oks": None if np.isnan(oks[i]) else float(oks[i])})

    def located(f: Finding) -> dict:
        p = pred.people[f.index]
        return {**f.to_dict(), "instance_id": p.instance_id, "image_id": p.image_key, "file_name": p.file_name,
                "source_annotation_id": p.source_annotation_id, "bbox": [float(v) for v in boxes[f.index]],
                "labels": labels[f.index].tolist(), "prediction": pred.keypoints[f.index].tolist()}

    return {"source": source, "model": model.describe(), "options": asdict(options or QAOptions()),
            "summary": {**summary(findings, oks), "not_checked": pred.skipped, "unreadable": pred.unreadable},
            "findings": [located(f) for f in findings], "people": people_out}
