"""The data-value experiment's tables: AP, AP50 and PCK per arm, with bootstrap 95% intervals over
people and seeds, and each arm's difference from real-only with its own (paired) interval.

Resampling: one resample draws the held-out images with replacement (the people of one image go
together, because COCO's matching is per image) and the seeds with replacement; an arm's value
is the mean over the drawn seeds of its AP on the drawn images. A difference uses the same draw
for both arms and pairs seed k with seed k (runs that differ only in their data), so it is
much tighter than the two intervals side by side. The intervals are the 2.5th and 97.5th
percentiles of the resamples; a difference is called significant when its interval excludes 0.

The point values are the mean over seeds of pycocotools' AP on the predictions files, which
``oks`` reproduces exactly; every figure here is recomputed from those files.
"""

from __future__ import annotations

import json
import math
import warnings
import zlib
from pathlib import Path

import numpy as np

from posepipe.datasets import atomic
from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.progress import NoProgress, Progress

from . import oks
from .evaluate import PCK_THRESHOLD
from .experiment import ARMS, BASELINE, START_RUN, SUBSETS, ExperimentSpec, Start, plan

METRICS = ("AP", "AP50", "PCK")


def _subset_ids(people: dict, subset: str) -> set[int]:
    return {int(k) for k, p in people.items() if subset == "all" or p[subset]}


class _Scored:
    """One run on one set and subset: matches, per-image PCK counts, and exact point values."""

    def __init__(self, gt: dict, results: list[dict], result_people: list[int], keep: set[int]):
        gt, results = oks.subset(gt, results, result_people, keep)
        self.matches = oks.match(gt, results)
        self.point = oks.average_precision(self.matches)
        index = {image_id: i for i, image_id in enumerate(self.matches.image_ids)}
        by_id = {a["id"]: a for a in gt["annotations"]}
        kept_people = [p for p in result_people if p in keep]
        self.correct = np.zeros(len(index))
        self.labelled = np.zeros(len(index))
        for res, person in zip(results, kept_people):
            ann = by_id[person]
            g = np.array(ann["keypoints"], dtype=float).reshape(-1, 3)
            d = np.array(res["keypoints"], dtype=float).reshape(-1, 3)
            lab = g[:, 2] > 0
            norm = max(max(ann["bbox"][2], ann["bbox"][3]), 1.0)
            dist = np.linalg.norm(d[:, :2] - g[:, :2], axis=1) / norm
            i = index[ann["image_id"]]
            self.correct[i] += float((dist[lab] < PCK_THRESHOLD).sum())
            self.labelled[i] += float(lab.sum())
        self.point["PCK"] = float(self.correct.sum() / self.labelled.sum()) if self.labelled.sum() else float("nan")

    def resampled(self, weights: np.ndarray) -> np.ndarray:
        """(B, 3): AP, AP50, PCK for each resample of the images."""
        ap = oks.resampled_ap(self.matches, weights)
        labelled = weights @ self.labelled
        with np.errstate(invalid="ignore", divide="ignore"):
            pck = np.where(labelled > 0, (weights @ self.correct) / labelled, np.nan)
        return np.concatenate([ap, pck[:, None]], axis=1)


def _load_run(folder: Path, set_name: str) -> tuple[list[dict], list[int]]:
    eval_dir = folder / "eval" / set_name
    try:
        results = json.loads((eval_dir / "predictions.json").read_text())
        people = json.loads((eval_dir / "predictions.people.json").read_text())
    except (OSError, ValueError) as exc:
        raise PosepipeError(f"{eval_dir}: no readable predictions ({exc}); run the experiment to the end") from None
    if len(results) != len(people):
        raise PosepipeError(f"{eval_dir}: {len(results)} predictions but {len(people)} people in predictions.people.json")
    return results, people


def _interval(values: np.ndarray) -> list[float] | None:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return None
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def _round(value):
    if value is None:
        return None
    if isinstance(value, list):
        return [_round(v) for v in value]
    return None if not math.isfinite(value) else round(float(value), 4)


def compare(spec: ExperimentSpec, progress: Progress | None = None) -> dict:
    """results.json's content, from the runs' files under ``spec.out``."""
    progress = progress or NoProgress()
    out = spec.folder
    info = json.loads((out / "experiment.json").read_text())
    runs = plan(spec)
    missing = [r for r in runs if not (r.folder(out) / "run.json").is_file()]
    if missing:
        r = missing[0]
        raise PosepipeError(f"{len(missing)} of {len(runs)} runs have not finished (first: {r.folder(out)}); "
                            "run the experiment again to finish them")
    arms = [BASELINE] + [a for a in spec.arms if a != BASELINE]
    seeds = list(spec.seeds)
    rows, headline = [], []
    jobs = [(s, n, sub) for s in spec.starts for n in info["sets"] for sub in SUBSETS]
    for start_text, set_name, subset in progress.track(jobs, len(jobs), "intervals"):
        start = Start.parse(start_text)
        set_dir = out / "sets" / set_name
        gt = json.loads((set_dir / "val_gt.json").read_text())
        keep = _subset_ids(json.loads((set_dir / "people.json").read_text()), subset)
        base = {"start": start.label, "set": set_name, "subset": subset, "people": len(keep)}
        if not keep:
            rows += [{**base, "arm": a, "seeds": len(seeds)} for a in arms]
            continue
        scored = {a: [_Scored(gt, *_load_run(out / "runs" / start.label / a / f"seed{s}", set_name), keep)
                      for s in seeds] for a in arms}
        start_scored = None
        if start.init and (out / "runs" / start.label / START_RUN / "run.json").is_file():
            start_scored = _Scored(gt, *_load_run(out / "runs" / start.label / START_RUN, set_name), keep)
        images = len(scored[BASELINE][0].matches.image_ids)
        rng = np.random.default_rng(np.random.SeedSequence(
            [spec.bootstrap_seed, zlib.crc32(f"{start.label}/{set_name}/{subset}".encode())]))
        weights = rng.multinomial(images, np.full(images, 1.0 / images), size=spec.bootstrap).astype(float)
        seed_draw = rng.integers(0, len(seeds), size=(spec.bootstrap, len(seeds)))
        reps = {a: np.stack([s.resampled(weights) for s in scored[a]]) for a in arms} if spec.bootstrap else {}

        def over_seeds(values: np.ndarray, seed_draw=seed_draw) -> np.ndarray:  # (S, B, 3) -> (B, 3): mean over drawn seeds
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a resample with nobody counted stays NaN
                return np.nanmean(values[seed_draw, np.arange(values.shape[1])[:, None]], axis=1)

        if start_scored is not None:
            row = {**base, "arm": START_RUN, "seeds": 0}
            rep = start_scored.resampled(weights) if spec.bootstrap else None
            for k, metric in enumerate(METRICS):
                row[metric] = _round(start_scored.point[metric])
                row[f"{metric}_ci"] = _round(_interval(rep[:, k])) if rep is not None else None
            rows.append(row)
        for a in arms:
            row = {**base, "arm": a, "seeds": len(seeds)}
            arm_rep = over_seeds(reps[a]) if spec.bootstrap else None
            diff_rep = over_seeds(reps[a] - reps[BASELINE]) if spec.bootstrap and a != BASELINE else None
            for k, metric in enumerate(METRICS):
                values = np.array([s.point[metric] for s in scored[a]])
                row[metric] = _round(float(np.mean(values)))
                row[f"{metric}_seed_sd"] = _round(float(np.std(values, ddof=1))) if len(values) > 1 else None
                row[f"{metric}_ci"] = _round(_interval(arm_rep[:, k])) if arm_rep is not None else None
                if a != BASELINE:
                    base_values = np.array([s.point[metric] for s in scored[BASELINE]])
                    row[f"d{metric}"] = _round(float(np.mean(values - base_values)))
                    row[f"d{metric}_ci"] = _round(_interval(diff_rep[:, k])) if diff_rep is not None else None
            if a != BASELINE:
                ci = row.get("dAP_ci")
                row["verdict"] = ("better" if ci and ci[0] > 0 else "worse" if ci and ci[1] < 0 else
                                  "no clear difference" if ci else "no interval")
                if subset == "extreme" and a == "mix-visibility":
                    headline.append({k: row[k] for k in ("start", "set", "people", "AP", "dAP", "dAP_ci", "verdict")})
            rows.append(row)
    curves = {}
    for start_text in spec.starts:
        label = Start.parse(start_text).label
        for a in arms:
            per_seed = [json.loads((out / "runs" / label / a / f"seed{s}" / "curve.json").read_text()) for s in seeds]
            steps = sorted({p["step"] for c in per_seed for p in c})
            by_step = {st: [p["loss"] for c in per_seed for p in c if p["step"] == st] for st in steps}
            curves[f"{label}/{a}"] = [{"step": st, "loss": float(np.mean(v))} for st, v in by_step.items()]
    runs_out = [json.loads((r.folder(out) / "run.json").read_text()) for r in runs]
    return {
        "format": "posepipe-experiment-results/1",
        "spec": spec.to_dict(),
        "baseline": BASELINE,
        "arms": {a: ARMS[a].description for a in arms},
        "sets": info["sets"],
        "bootstrap": spec.bootstrap,
        "rows": rows,
        "headline": headline,
        "curves": curves,
        "runs": [{k: r.get(k) for k in ("start", "arm", "seed", "steps", "images", "train_seconds", "wall_s")}
                 for r in runs_out],
        "train_seconds": round(sum(r.get("train_seconds", 0) for r in runs_out), 1),
    }


def dvc_metrics(results: dict) -> dict:
    """Nested numbers for ``dvc metrics diff``: start / set / subset / arm / metric."""
    out: dict = {}
    for row in results["rows"]:
        if row.get("AP") is None:
            continue
        values = {m: row[m] for m in ("AP", "AP50", "PCK", "dAP") if row.get(m) is not None}
        out.setdefault(row["start"], {}).setdefault(row["set"], {}).setdefault(row["subset"], {})[row["arm"]] = values
    return out


def _ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _signed_ci(ci) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""


def markdown(results: dict) -> str:
    spec = results["spec"]
    lines = ["# Does synthetic data help? (posepipe experiment)", "",
             f"{len(spec['seeds'])} seed(s) per arm, {spec['steps']} steps each (batch {spec['batch_size']} x "
             f"{spec['nproc']} processes), mix ratio {spec['ratio']}; 95% intervals from {results['bootstrap']} "
             "bootstrap resamples of the held-out images and the seeds; a difference is paired by seed. "
             "`start` is the starting model scored untrained.", ""]
    lines += ["| arm | what it trains on |", "| --- | --- |"]
    lines += [f"| {a} | {d} |" for a, d in results["arms"].items()] + [""]
    current = None
    for row in results["rows"]:
        key = (row["start"], row["set"])
        if key != current:
            current = key
            s = results["sets"][row["set"]]
            lines += ["", f"## {row['set']}, from {row['start']}", "",
                      f"{s['people']} people ({s['extreme_people']} in extreme poses, {s['occluded_people']} heavily occluded).", "",
                      "| subset | arm | people | AP [95% CI] | AP vs real-only [95% CI] | verdict | AP50 | PCK@0.1 |",
                      "| --- | --- | ---: | --- | --- | --- | ---: | ---: |"]
        if row.get("AP") is None:
            lines.append(f"| {row['subset']} | {row['arm']} | {row['people']} | no people | | | | |")
            continue
        diff = f"{row['dAP']:+.3f} {_signed_ci(row.get('dAP_ci'))}" if row.get("dAP") is not None else ""
        lines.append(f"| {row['subset']} | {row['arm']} | {row['people']} | {row['AP']:.3f} {_ci(row.get('AP_ci'))} | "
                     f"{diff} | {row.get('verdict', '')} | {row['AP50']:.3f} | {row['PCK']:.3f} |")
    lines += ["", f"Training: {results['train_seconds']:.0f} s in the batch loops over {len(results['runs'])} runs.", ""]
    return "\n".join(lines)


def write_results(spec: ExperimentSpec, progress: Progress | None = None) -> dict:
    """results.json, results.md, metrics.json (dvc metrics) and curves/ (dvc plots) under ``spec.out``."""
    results = compare(spec, progress)
    out = spec.folder
    atomic.write_text(out / "results.json", json.dumps(results, indent=2))
    atomic.write_text(out / "results.md", markdown(results))
    atomic.write_text(out / "metrics.json", json.dumps(dvc_metrics(results), indent=2))
    (out / "curves").mkdir(parents=True, exist_ok=True)
    for key, points in results["curves"].items():
        atomic.write_text(out / "curves" / (key.replace("/", "--") + ".json"), json.dumps(points))
    return results
