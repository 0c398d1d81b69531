"""Would a model trained on real photos call these people human? A real-trained pose model's score
on a synthetic source, next to its score on the store's real sources.

:func:`realism` crops every scored person by its ground-truth box (the same crops and code as
``training.evaluate.score``), predicts once with a pretrained model (default MoveNet Thunder, see
``docs/pretrained.md``; pulled into the model cache on first use) and computes COCO keypoint AP:

* on the whole synthetic source, and per pose family (``attributes.pose_family``) and per
  visibility bucket (how many of the person's 17 joints are v=2: :data:`VISIBILITY_BUCKETS`), each
  subset scored against its own people only;
* on each real source (every non-``synth/`` source of the store unless named), whole.

``ratio`` is the synthetic AP over each real source's. It returns a plain dict (json-ready).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import orjson

from posepipe.datasets import atomic
from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.store import PoseStore

DEFAULT_MODEL = "movenet-thunder"
# (name, least v=2 joints, most v=2 joints) of a person
VISIBILITY_BUCKETS = (("12-17 visible", 12, 17), ("6-11 visible", 6, 11), ("0-5 visible", 0, 5))
MIN_SUBSET = 3  # a family or bucket with fewer scored people is listed with its count, not scored


def _subset_ap(val, keep: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, work: Path, name: str) -> dict:
    """COCO AP of the people ``keep`` (a boolean mask over ``val``'s scored people), their own
    ground truth only (their images, their annotations)."""
    from posepipe.training import evaluate

    n = int(keep.sum())
    if n < MIN_SUBSET:
        return {"AP": None, "instances": n}
    ids = [val.gt_ids[i] for i in np.flatnonzero(keep)]
    ann_ids, img_ids = {a for _, a in ids}, {img for img, _ in ids}
    gt = dict(val.ground_truth)
    gt["images"] = [im for im in gt["images"] if im["id"] in img_ids]
    gt["annotations"] = [a for a in gt["annotations"] if a["id"] in ann_ids]
    atomic.write_text(work / f"{name}_gt.json", json.dumps(gt))
    atomic.write_text(work / f"{name}_pred.json",
                      json.dumps(evaluate.coco_results(keypoints[keep], scores[keep], ids)))
    metrics = evaluate.coco_eval(work / f"{name}_gt.json", work / f"{name}_pred.json")
    return {"AP": round(metrics["AP"], 4), "instances": n}


def _score_source(model, store: PoseStore, source: str, work: Path, breakdown: bool) -> dict:
    from posepipe.training import evaluate
    from posepipe.training.data import PoseDataset

    val = evaluate.validation_set(store, sources=[source])
    dataset = PoseDataset(store, val.instances, model.input_size, train=False)
    keypoints, scores = evaluate.predict(model, dataset, 32, False)
    everyone = np.ones(len(val.instances), dtype=bool)
    out = _subset_ap(val, everyone, keypoints, scores, work, "all")
    out["PCK"] = round(evaluate.pck(keypoints, val.instances.keypoints, val.instances.bbox), 4)
    if not breakdown:
        return out
    table = store.instances([source]).select(["instance_id", "attributes"]).to_pydict()
    family_of = {iid: (orjson.loads(a) if a else {}).get("pose_family", "unknown")
                 for iid, a in zip(table["instance_id"], table["attributes"])}
    families = np.array([family_of.get(str(iid), "unknown") for iid in val.instances.instance_id])
    out["by_family"] = {f: _subset_ap(val, families == f, keypoints, scores, work, f"family_{f}")
                        for f in sorted(set(families.tolist()))}
    visible = (val.instances.keypoints[..., 2] == 2).sum(axis=1)
    out["by_visibility"] = {name: _subset_ap(val, (visible >= lo) & (visible <= hi), keypoints, scores, work,
                                             f"vis_{lo}")
                            for name, lo, hi in VISIBILITY_BUCKETS}
    return out


def realism(store: PoseStore, source: str, real_sources: list[str] | None = None, model: str = DEFAULT_MODEL,
            work_dir: str | Path | None = None, cache=None) -> dict:
    """Score ``source`` (a ``synth/`` source) and the real sources with a pretrained pose model.

    Returns ``{"model", "synthetic": {"source", "AP", "PCK", "instances", "by_family": {family:
    {"AP", "instances"}}, "by_visibility": {bucket: {"AP", "instances"}}}, "real": {source: {"AP",
    "PCK", "instances"}}, "ratio": {real source: synthetic AP / its AP}}``; an AP is None where
    fewer than :data:`MIN_SUBSET` people were scored. ``cache``: the model cache (default the user's)."""
    from posepipe.pretrained import runtime

    known = store.sources()
    if source not in known:
        raise PosepipeError(f"realism: no source {source!r} in the store {store.root}")
    reals = [s for s in known if not s.startswith("synth/")] if real_sources is None else list(real_sources)
    for s in reals:
        if s not in known:
            raise PosepipeError(f"realism: no real source {s!r} in the store {store.root}")
    pose_model = runtime.load(model, cache=cache)
    with tempfile.TemporaryDirectory(prefix="posepipe-realism-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        synth = {"source": source, **_score_source(pose_model, store, source, work / "synthetic", True)}
        real = {}
        for s in reals:
            try:
                real[s] = _score_source(pose_model, store, s, work / "real" / s.replace("/", "_"), False)
            except PosepipeError as exc:  # a real source without labelled people
                real[s] = {"AP": None, "instances": 0, "note": str(exc)}
    ratio = {s: (round(synth["AP"] / r["AP"], 4) if synth["AP"] is not None and r.get("AP") else None)
             for s, r in real.items()}
    return {"model": pose_model.name, "synthetic": synth, "real": real, "ratio": ratio}


def markdown(result: dict) -> list[str]:
    """Lines of the synth report's realism section."""
    s = result["synthetic"]

    def ap(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = ["## Realism: a real-trained model on these people", "",
             f"{result['model']} keypoint AP on ground-truth boxes (no flip test).", "",
             "| source | people | AP | AP / synthetic |", "| --- | ---: | ---: | ---: |",
             f"| {s['source']} (synthetic) | {s['instances']} | {ap(s['AP'])} | 1 |"]
    for name, r in result["real"].items():
        ratio = result["ratio"].get(name)
        lines.append(f"| {name} | {r['instances']} | {ap(r.get('AP'))} | "
                     f"{'n/a' if ratio is None else f'synthetic is {ratio:.2f}x'} |")
    for title, key in (("pose family", "by_family"), ("visible joints", "by_visibility")):
        lines += ["", f"| {title} | people | AP |", "| --- | ---: | ---: |"]
        lines += [f"| {k} | {v['instances']} | {ap(v['AP'])} |" for k, v in s.get(key, {}).items()]
    return lines

