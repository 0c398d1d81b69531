"""The report of a synthetic source: what it holds and what it adds next to the real sources."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import orjson
from pycocotools import mask as mask_utils

from posepipe.datasets import atomic, schema
from posepipe.datasets.store import PoseStore

from .core import extreme

AGE_BINS = (0, 2, 12, 18, 30, 45, 65, 90)  # years
HEIGHT_BINS = (0.0, 0.8, 1.2, 1.5, 1.6, 1.7, 1.8, 1.9, 2.5)  # metres, standing (rest) height


def keypoints_on_own_mask(kp: np.ndarray, segmentations: list) -> dict:
    """Of the v=2 keypoints, how many land on their own person's mask (within one pixel)."""
    on = total = 0
    for person, seg in zip(kp, segmentations):
        if not seg:
            continue
        m = mask_utils.decode(orjson.loads(seg) if isinstance(seg, (str, bytes)) else seg)
        h, w = m.shape
        for x, y, v in person:
            if v != 2:
                continue
            total += 1
            xi, yi = int(x), int(y)
            on += bool(m[max(0, yi - 1):min(h, yi + 2), max(0, xi - 1):min(w, xi + 2)].any())
    return {"v2": total, "on_own_mask": on, "share": round(on / total, 4) if total else None}


def phenotypes(attrs: list[dict]) -> dict | None:
    """Histograms of Anny people's age (years) and standing height (m); None for mannequins."""
    ages = [a["body"]["phenotype"]["age_years"] for a in attrs if a.get("body", {}).get("phenotype")]
    heights = [a["body"]["height_m"] for a in attrs if "height_m" in a.get("body", {})]
    if not ages:
        return None

    def hist(values, bins):
        counts, _ = np.histogram(values, bins=bins)
        return {f"{lo:g}-{hi:g}": int(c) for lo, hi, c in zip(bins[:-1], bins[1:], counts)}

    return {"people": len(ages), "age_years": hist(ages, AGE_BINS), "height_m": hist(heights, HEIGHT_BINS)}


def build_report(store: PoseStore, source: str, run=None, realism: dict | None = None) -> dict:
    inst = store.instances([source])
    kp = schema.keypoints_from_arrow(inst.column("keypoints"))
    attrs = [orjson.loads(a) if a else {} for a in inst.column("attributes").to_pylist()]
    families = Counter(a.get("pose_family", "unknown") for a in attrs)
    vis = schema.visibility_histogram(kp)
    kinds = Counter(k for a in attrs for k in a.get("occlusion", []) if k)
    vis.update(v1_self=kinds.get("self", 0), v1_object=kinds.get("object", 0))
    real_sources = [s for s in store.sources() if not s.startswith("synth/")]
    real = store.instances(real_sources) if real_sources else None
    real_kp = schema.keypoints_from_arrow(real.column("keypoints")) if real is not None else kp[:0]
    report = {
        "source": source,
        "images": store.images([source]).num_rows,
        "instances": inst.num_rows,
        "pose_families": dict(sorted(families.items())),
        "visibility": vis,
        "extreme": {"synthetic": extreme.shares(kp), "real": extreme.shares(real_kp),
                    "real_sources": real_sources},
        "mask_check": keypoints_on_own_mask(kp, inst.column("segmentation").to_pylist()),
        "phenotypes": phenotypes(attrs),
    }
    if realism is not None:
        report["realism"] = realism
    if run is not None:
        outside = max(run.unit_seconds - run.render_seconds, 0.0)
        report["run"] = {
            "rendered": run.rendered, "unchanged": run.unchanged, "removed": run.removed,
            "failed": {str(k): v for k, v in run.failed.items()},
            "wall_seconds": round(run.wall_seconds, 3), "render_seconds": round(run.render_seconds, 3),
            # Of the workers' main-thread time. The numpy work of the workers' helper threads
            # (helper_seconds) runs beside the render calls, so on a CPU render it takes cores from them.
            "share_outside_render": round(outside / run.unit_seconds, 4) if run.unit_seconds else None,
            "helper_seconds": round(run.phase_seconds.get("prepare", 0.0) + run.phase_seconds.get("encode_seconds", 0.0), 3),
        }
    return report


def markdown(report: dict) -> str:
    lines = [f"# Synthetic source `{report['source']}`", "",
             f"{report['images']} images, {report['instances']} people.", "", "## Pose families", "",
             "| family | people |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in report["pose_families"].items()]
    v = report["visibility"]
    lines += ["", "## Visibility", "", "| v=0 | v=1 | v=1 self | v=1 object | v=2 |", "| ---: | ---: | ---: | ---: | ---: |",
              f"| {v['v0']} | {v['v1']} | {v['v1_self']} | {v['v1_object']} | {v['v2']} |", "",
              "## Extreme poses (share of people where decidable)", "",
              f"Real sources: {', '.join(report['extreme']['real_sources']) or 'none in the store'}.", "",
              "| category | synthetic | real |", "| --- | ---: | ---: |"]
    for cat in extreme.CATEGORIES:
        s, r = report["extreme"]["synthetic"][cat], report["extreme"]["real"][cat]
        lines.append(f"| {cat} | {s['share']:.1%} ({s['flagged']}/{s['decidable']}) | "
                     f"{r['share']:.1%} ({r['flagged']}/{r['decidable']}) |")
    m = report.get("mask_check")
    if m:
        lines += ["", f"Visible (v=2) keypoints on their own person's mask: {m['on_own_mask']}/{m['v2']}"
                      + (f" ({m['share']:.1%})" if m["share"] is not None else "")]
    ph = report.get("phenotypes")
    if ph:
        lines += ["", f"## Phenotypes ({ph['people']} Anny people)", "", "| age (years) | people |", "| --- | ---: |"]
        lines += [f"| {k} | {v} |" for k, v in ph["age_years"].items()]
        lines += ["", "| height (m) | people |", "| --- | ---: |"]
        lines += [f"| {k} | {v} |" for k, v in ph["height_m"].items()]
    if report.get("realism"):
        from .realism import markdown as realism_markdown

        lines += [""] + realism_markdown(report["realism"])
    if "run" in report:
        r = report["run"]
        lines += ["", "## This run", "", f"rendered {r['rendered']}, unchanged {r['unchanged']}, "
                  f"removed {r.get('removed', 0)} of another run, failed {len(r['failed'])}; wall {r['wall_seconds']} s, "
                  f"in Blender's render call {r['render_seconds']} s"]
        lines += [f"- unit {k}: {msg}" for k, msg in r["failed"].items()]
    return "\n".join(lines) + "\n"


def write_report(report: dict, folder: Path) -> None:
    atomic.write_bytes(folder / "report.json", orjson.dumps(report, option=orjson.OPT_INDENT_2))
    atomic.write_text(folder / "report.md", markdown(report))
