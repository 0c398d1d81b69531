"""The main job's HTML report: one self-contained page (inline PNG and SVG, no network).

Sections: a gallery of real and synthetic people side by side with skeletons drawn (visible
joints filled, occluded joints hollow and orange, limbs to an occluded joint dashed),
visibility histograms per source, extreme-pose shares of real vs synthetic, the mix ratio and
weights, training curves, and the AP and FP32/INT8 table. Every section says when its input is
missing instead of failing, so a partial run still gets a report.

Extreme-pose shares use ``posepipe.synth.core.extreme`` (2D keypoint measures that apply to real
and synthetic people alike), so the report and the synthetic generator agree on what "extreme" is.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from posepipe.datasets import atomic, schema
from posepipe.datasets.store import PoseStore

VISIBLE_COLOUR = (60, 200, 60)  # BGR
OCCLUDED_COLOUR = (0, 140, 255)  # BGR orange
LIMB_COLOUR = (255, 200, 40)
KIND_COLOURS = {"real": "#3b7dd8", "synthetic": "#e07b22"}
V_COLOURS = ("#bbbbbb", "#f0a030", "#3aa655")  # v=0, v=1, v=2


@dataclass
class ReportInputs:
    store: Path
    real_sources: list[str]
    synth_sources: list[str]
    mix_dir: Path | None = None
    train_dir: Path | None = None
    export_dir: Path | None = None
    qa_dirs: list[Path] = field(default_factory=list)  # posepipe qa outputs (qa.json) to show
    experiment_dir: Path | None = None  # a posepipe experiment output (results.json): "does synthetic help"
    title: str = "posepipe pipeline report"
    summary: Mapping[str, Any] | None = None  # stage timings and counts from the flow
    gallery_per_kind: int = 6


# ----- drawing ----------------------------------------------------------------------------
def draw_person(image: np.ndarray, keypoints: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Skeleton on a copy of a BGR image: visible joints filled green, occluded ones hollow orange."""
    import cv2

    out = image.copy()
    thick = max(1, int(round(2 * scale)))
    radius = max(2, int(round(3 * scale)))
    pts = keypoints[:, :2]
    v = keypoints[:, 2]
    for a, b in schema.COCO17_SKELETON:
        a, b = a - 1, b - 1
        if v[a] > 0 and v[b] > 0:
            p, q = tuple(int(round(c)) for c in pts[a]), tuple(int(round(c)) for c in pts[b])
            if v[a] == 2 and v[b] == 2:
                cv2.line(out, p, q, LIMB_COLOUR, thick, cv2.LINE_AA)
            else:
                _dashed(out, np.array(p, float), np.array(q, float), OCCLUDED_COLOUR, thick)
    for (x, y), vis in zip(pts, v):
        centre = (int(round(x)), int(round(y)))
        if vis == 2:
            cv2.circle(out, centre, radius, VISIBLE_COLOUR, -1, cv2.LINE_AA)
            cv2.circle(out, centre, radius, (0, 0, 0), 1, cv2.LINE_AA)
        elif vis == 1:
            cv2.circle(out, centre, radius + 1, OCCLUDED_COLOUR, thick, cv2.LINE_AA)
    return out


def _dashed(image: np.ndarray, p: np.ndarray, q: np.ndarray, colour, thick: int, dash: float = 5.0) -> None:
    import cv2

    length = float(np.linalg.norm(q - p))
    steps = max(1, int(length // dash))
    for i in range(0, steps, 2):
        a = p + (q - p) * (i / steps)
        b = p + (q - p) * (min(i + 1, steps) / steps)
        cv2.line(image, tuple(int(round(c)) for c in a), tuple(int(round(c)) for c in b), colour, thick, cv2.LINE_AA)


def crop_person(image: np.ndarray, keypoints: np.ndarray, bbox: Sequence[float], height: int = 200,
                mark: int | None = None, draw_box: bool = False) -> np.ndarray:
    """The person's box with 20% margin, drawn, scaled to ``height`` pixels; ``mark`` rings one joint
    red, ``draw_box`` outlines the box itself (yellow)."""
    import cv2

    h, w = image.shape[:2]
    x, y, bw, bh = bbox
    mx, my = 0.2 * bw + 4, 0.2 * bh + 4
    x0, y0 = int(max(0, x - mx)), int(max(0, y - my))
    x1, y1 = int(min(w, x + bw + mx)), int(min(h, y + bh + my))
    if x1 - x0 < 2 or y1 - y0 < 2:
        x0, y0, x1, y1 = 0, 0, w, h
    scale = height / (y1 - y0)
    crop = cv2.resize(image[y0:y1, x0:x1], (max(1, int(round((x1 - x0) * scale))), height),
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    kp = keypoints.copy()
    kp[:, 0] = (kp[:, 0] - x0) * scale
    kp[:, 1] = (kp[:, 1] - y0) * scale
    drawn = draw_person(crop, kp, scale=max(1.0, height / 200))
    if draw_box:
        p0 = (int(round((x - x0) * scale)), int(round((y - y0) * scale)))
        p1 = (int(round((x + bw - x0) * scale)), int(round((y + bh - y0) * scale)))
        cv2.rectangle(drawn, p0, p1, (0, 215, 255), 1, cv2.LINE_AA)
    if mark is not None:
        centre = (int(round(kp[mark, 0])), int(round(kp[mark, 1])))
        cv2.circle(drawn, centre, max(7, height // 25), (40, 40, 230), 2, cv2.LINE_AA)
    return drawn


def png_data_uri(image: np.ndarray) -> str:
    import cv2

    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def pick_gallery(keypoints: np.ndarray, count: int) -> list[int]:
    """Deterministic choice: people with the most labelled joints, occluded ones first."""
    if not len(keypoints):
        return []
    v = keypoints[..., 2]
    labelled = (v > 0).sum(axis=1)
    occluded = (v == 1).sum(axis=1)
    order = np.lexsort((np.arange(len(v)), -labelled, -(occluded > 0).astype(np.int64)))
    order = [int(i) for i in order if labelled[i] >= 8] or [int(i) for i in order]
    return order[:count]


def gallery_cells(store: PoseStore, sources: list[str], count: int) -> list[dict]:
    import cv2

    if not sources or count <= 0:
        return []
    inst = store.instances(sources)
    if not inst.num_rows:
        return []
    kps = schema.keypoints_from_arrow(inst.column("keypoints"))
    boxes = schema.bbox_from_arrow(inst.column("bbox"))
    images = store.images(sources).to_pandas().drop_duplicates("image_id").set_index("image_id")
    cells = []
    image_ids = inst.column("image_id").to_pylist()
    inst_sources = inst.column("source").to_pylist()
    for i in pick_gallery(kps, count):
        row = images.loc[image_ids[i]]
        data = store.read_image(row["shard"], int(row["offset"]), int(row["num_bytes"]))
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            continue
        v = kps[i, :, 2]
        cells.append({"uri": png_data_uri(crop_person(image, kps[i], boxes[i])), "source": inst_sources[i],
                      "caption": f"{inst_sources[i]} · {int((v == 2).sum())} visible, {int((v == 1).sum())} occluded"})
    return cells


# ----- SVG charts -------------------------------------------------------------------------
def svg_bars(groups: list[tuple[str, list[float]]], series: Sequence[str], colours: Sequence[str],
             percent: bool = True, width: int = 640, bar_h: int = 18) -> str:
    """Horizontal stacked bars, one per group; values are shares (0..1) when ``percent``."""
    label_w, gap = 190, 8
    height = len(groups) * (bar_h + gap) + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart">']
    for gi, (name, values) in enumerate(groups):
        y = gi * (bar_h + gap)
        out.append(f'<text x="{label_w - 6}" y="{y + bar_h - 5}" text-anchor="end">{html.escape(name)}</text>')
        x = float(label_w)
        total = sum(values) or 1.0
        for value, colour, sname in zip(values, colours, series):
            w = (width - label_w - 10) * value / total
            if w > 0:
                tip = f"{sname}: {value:.1%}" if percent else f"{sname}: {value:g}"
                out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}">'
                           f'<title>{html.escape(tip)}</title></rect>')
                if w > 34:
                    out.append(f'<text x="{x + w / 2:.1f}" y="{y + bar_h - 5}" text-anchor="middle" '
                               f'class="in">{value / total:.0%}</text>')
            x += w
    ly = len(groups) * (bar_h + gap) + 14
    lx = label_w
    for sname, colour in zip(series, colours):
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{colour}"/>'
                   f'<text x="{lx + 16}" y="{ly}">{html.escape(sname)}</text>')
        lx += 24 + 8 * len(sname)
    out.append("</svg>")
    return "".join(out)


def svg_grouped(categories: list[str], series: dict[str, list[float]], colours: Mapping[str, str],
                width: int = 640, height: int = 220) -> str:
    """Vertical grouped bars of shares (0..1): one group per category, one bar per series."""
    left, bottom, top = 40, 40, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max([max(v) for v in series.values() if v] + [0.05])
    peak = min(1.0, peak * 1.15)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart">']
    for t in (0, 0.5, 1.0):
        y = top + plot_h * (1 - t)
        out.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{peak * t:.0%}</text>')
    group_w = plot_w / max(1, len(categories))
    bar_w = group_w * 0.8 / max(1, len(series))
    for ci, cat in enumerate(categories):
        gx = left + ci * group_w + group_w * 0.1
        for si, (name, values) in enumerate(series.items()):
            value = values[ci]
            h = plot_h * value / peak
            out.append(f'<rect x="{gx + si * bar_w:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 2:.1f}" '
                       f'height="{h:.1f}" fill="{colours[name]}"><title>{html.escape(name)} {html.escape(cat)}: '
                       f'{value:.1%}</title></rect>')
        out.append(f'<text x="{gx + group_w * 0.4:.1f}" y="{height - bottom + 16}" text-anchor="middle">'
                   f'{html.escape(cat)}</text>')
    lx = left
    for name in series:
        out.append(f'<rect x="{lx}" y="{height - 14}" width="12" height="12" fill="{colours[name]}"/>'
                   f'<text x="{lx + 16}" y="{height - 4}">{html.escape(name)}</text>')
        lx += 110
    out.append("</svg>")
    return "".join(out)


def svg_line(points: list[tuple[float, float]], xlabel: str, ylabel: str, colour: str = "#3b7dd8",
             width: int = 640, height: int = 240) -> str:
    """A line chart with axis ranges from the data."""
    left, bottom, top, right = 56, 36, 10, 12
    if not points:
        return "<p class='missing'>no points</p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(0.0, min(ys)), max(ys) if max(ys) > 0 else 1.0
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + pw * (x - x0) / (x1 - x0)

    def sy(y: float) -> float:
        return top + ph * (1 - (y - y0) / (y1 - y0 or 1))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart">']
    for t in (0, 0.5, 1):
        yv = y0 + (y1 - y0) * t
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(yv):.1f}" y2="{sy(yv):.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
    if len(points) <= 40:
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in points]
    out.append(f'<text x="{left}" y="{height - 6}">{html.escape(xlabel)} {x0:g}</text>'
               f'<text x="{width - right}" y="{height - 6}" text-anchor="end">{x1:g}</text>'
               f'<text x="{left + 4}" y="{top + 12}" class="axis">{html.escape(ylabel)}</text>')
    out.append("</svg>")
    return "".join(out)


# ----- sections ---------------------------------------------------------------------------
def _table(rows: list[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p class='missing'>nothing to show</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _missing(what: str) -> str:
    return f"<p class='missing'>{html.escape(what)}</p>"


def _read_json(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())


def gallery_section(store: PoseStore, inp: ReportInputs) -> str:
    real = gallery_cells(store, inp.real_sources, inp.gallery_per_kind)
    synth = gallery_cells(store, inp.synth_sources, inp.gallery_per_kind)
    if not real and not synth:
        return _missing("no people in the store to show")

    def column(title: str, cells: list[dict], kind: str) -> str:
        items = "".join(f'<figure><img src="{c["uri"]}" alt="{html.escape(c["caption"])}"/>'
                        f'<figcaption>{html.escape(c["caption"])}</figcaption></figure>' for c in cells)
        return (f'<div class="col {kind}"><h3>{title} ({len(cells)})</h3>'
                f'{items or _missing("no " + kind + " data in this run")}</div>')

    legend = ("<p class='legend'><span class='dot vis'></span> visible joint (v=2) &nbsp; "
              "<span class='dot occ'></span> occluded joint (v=1), limbs to it dashed &nbsp; unlabelled joints "
              "(v=0) are not drawn</p>")
    return legend + f'<div class="side">{column("Real", real, "real")}{column("Synthetic", synth, "synthetic")}</div>'


def visibility_section(store: PoseStore, sources: list[str]) -> tuple[str, dict]:
    groups, data = [], {}
    for source in sources:
        kp = schema.keypoints_from_arrow(store.instances([source]).column("keypoints"))
        hist = schema.visibility_histogram(kp)
        total = sum(hist.values()) or 1
        data[source] = {**hist, "people": len(kp)}
        groups.append((f"{source} ({len(kp)} people)", [hist["v0"] / total, hist["v1"] / total, hist["v2"] / total]))
    if not groups:
        return _missing("no sources"), data
    chart = svg_bars(groups, ["v=0 not labelled", "v=1 occluded", "v=2 visible"], V_COLOURS)
    return chart, data


def extremes_section(store: PoseStore, inp: ReportInputs) -> tuple[str, dict]:
    from posepipe.synth.core import extreme

    shares: dict[str, dict] = {}
    for kind, sources in (("real", inp.real_sources), ("synthetic", inp.synth_sources)):
        if sources:
            kp = schema.keypoints_from_arrow(store.instances(sources).column("keypoints"))
            shares[kind] = {**extreme.shares(kp), "people": len(kp)}
    if not shares:
        return _missing("no people"), shares
    categories = list(extreme.CATEGORIES)
    chart = svg_grouped(categories, {k: [v[c]["share"] for c in categories] for k, v in shares.items()},
                        KIND_COLOURS)
    rows = [{"measure": c, **{f"{k} flagged / decidable": f"{v[c]['flagged']} / {v[c]['decidable']}"
                              for k, v in shares.items()},
             **{f"{k} share": v[c]["share"] for k, v in shares.items()}} for c in categories]
    note = ("<p class='note'>Measured on 2D keypoints with <code>posepipe.synth.core.extreme</code>, the same way "
            "for both kinds; a share is over the people whose needed joints are labelled.</p>")
    return chart + _table(rows) + note, shares


def mix_section(mix_dir: Path | None) -> str:
    report = _read_json(mix_dir / "report.json" if mix_dir else None)
    if report is None:
        return _missing("no mix in this run")
    epoch = report.get("epoch", {})
    eff = epoch.get("effective_ratio", {})
    parts = [f"<p>Ratio <b>{html.escape(str(report.get('ratio')))}</b> (synthetic:real); epoch 0 drew "
             f"<b>{html.escape(str(eff.get('text', '?')))}</b> (synthetic share {eff.get('synthetic_share', 0):.3f}) "
             f"in {epoch.get('blocks', '?')} blocks of {epoch.get('block_size', '?')}. Instances read "
             f"{report.get('instances_read')}, included {report.get('instances_included')}.</p>"]
    weight_report = report.get("weights", {})
    weights = {"scheme": weight_report.get("scheme"), **(weight_report.get("params") or {})}
    parts.append("<h3>Weights</h3>" + _table([{k: v for k, v in weights.items() if v is not None}]))
    ess = report.get("ess", {})
    if ess:
        parts.append(f"<p>Effective sample size: real {ess.get('real', 0):.1f}, "
                     f"synthetic {ess.get('synthetic', 0):.1f}.</p>")
    manifest = mix_dir / "manifest.parquet"
    if manifest.is_file():
        import pyarrow.parquet as pq

        t = pq.read_table(manifest, columns=["source_kind", "split", "weight"]).to_pandas()
        t = t[t["split"] == "train"]
        rows = []
        for kind, g in t.groupby("source_kind"):
            w = g["weight"].to_numpy()
            rows.append({"kind": kind, "train instances": len(w), "mean weight": float(w.mean()),
                         "max weight": float(w.max()), "weight share": float(w.sum() / max(t["weight"].sum(), 1e-12)),
                         "weight > 1": int((w > 1).sum())})
        parts.append(_table(rows))
    for warning in report.get("warnings", []):
        parts.append(f"<p class='warn'>{html.escape(warning)}</p>")
    return "".join(parts)


def training_section(train_dir: Path | None) -> str:
    log = train_dir / "train_log.jsonl" if train_dir else None
    if log is None or not log.is_file():
        return _missing("no training in this run")
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    steps = [(e["step"], e["loss"]) for e in events if e.get("event") == "step" and "loss" in e]
    out = ["<h3>Loss per step (mean over ranks)</h3>", svg_line(steps, "step", "loss")]
    pck = [(e["epoch"], e["pck"]) for e in events if e.get("event") == "epoch" and e.get("pck") is not None]
    if pck:
        out += ["<h3>PCK per epoch</h3>", svg_line(pck, "epoch", "PCK", colour="#3aa655")]
    start = next((e for e in events if e.get("event") == "start"), {})
    if start:
        init = start.get("init") or {}
        began = (f" Started from the pretrained <b>{html.escape(str(init['model']))}</b> ({html.escape(str(init.get('licence')))}, "
                 f"{html.escape(str(init.get('origin')))}), weights sha256 {html.escape(str(init.get('weights_sha256', ''))[:12])}..."
                 if init.get("model") else " Trained from scratch." if not init else
                 f" Started from checkpoint {html.escape(str(init.get('checkpoint')))}.")
        out.append(f"<p>{start.get('world_size', '?')} processes ({html.escape(str(start.get('backend', '?')))}), "
                   f"{len(steps)} steps logged.{began}</p>")
    return "".join(out)


def results_section(train_dir: Path | None, export_dir: Path | None) -> str:
    out = []
    metrics = _read_json(train_dir / "metrics.json" if train_dir else None)
    if metrics:
        keys = [k for k in ("AP", "AP50", "AP75", "AR", "PCK", "num_instances") if k in metrics]
        out.append("<h3>Validation (PyTorch, COCOeval)</h3>" + _table([{k: metrics[k] for k in keys}]))
    export = _read_json(export_dir / "export_report.json" if export_dir else None)
    if export:
        rows = [
            {"": "file size (bytes)", "FP32": export["size_fp32"], "INT8": export["size_int8"],
             "INT8 / FP32": f"{export['size_ratio']:.3f}"},
            {"": "CPU latency (ms)", "FP32": export["latency_fp32_ms"], "INT8": export["latency_int8_ms"],
             "INT8 / FP32": f"{export['latency_ratio']:.3f}"},
            {"": "COCO keypoint AP", "FP32": export["ap_fp32"], "INT8": export["ap_int8"],
             "INT8 / FP32": f"drop {export['ap_drop_points']:.2f} points"},
        ]
        out.append("<h3>FP32 vs INT8 (ONNX Runtime)</h3>" + _table(rows))
    return "".join(out) or _missing("no training or export in this run")


def summary_section(summary: Mapping[str, Any] | None) -> str:
    if not summary:
        return ""
    rows = [{"stage": s["stage"], "status": s["status"], "seconds": s.get("seconds"), "detail": s.get("detail", "")}
            for s in summary.get("stages", [])]
    return "<h2>Stages</h2>" + _table(rows)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{margin-bottom:4px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f4f4f4}td:first-child{text-align:left}
.side{display:flex;gap:16px}.col{flex:1;border:1px solid #eee;border-radius:6px;padding:8px}
.col.real h3{color:#3b7dd8}.col.synthetic h3{color:#e07b22}
figure{display:inline-block;margin:4px;text-align:center}figure img{height:200px;border-radius:4px}
.qa figure{width:340px;vertical-align:top;text-align:left}
.qa figure img{height:160px;max-width:166px;object-fit:contain;margin-right:2px;background:#eee}
figcaption{font-size:11px;color:#555;max-width:220px}
.chart text{font-size:12px;fill:#333}.chart text.in{fill:#fff;font-size:11px}.chart .grid{stroke:#eee}
.missing{color:#999;font-style:italic}.warn{color:#b35c00}.note{font-size:13px;color:#555}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%}.dot.vis{background:#3cc83c}
.dot.occ{border:2px solid #ff8c00;width:7px;height:7px}
"""


QA_KIND_TEXT = {"left_right_swapped": "left/right swapped", "joint_off": "joint off",
                "visible_unlabelled": "visible but unlabelled", "box_mismatch": "box does not fit"}


def qa_section(store: PoseStore, qa: Mapping[str, Any] | None, top: int = 12) -> str:
    """Label check (posepipe qa): counts by kind, then the most severe findings, each as two crops:
    the labels as they are, and the model's answer on the same box (unsure joints hollow)."""
    import cv2

    if not qa:
        return _missing("no label check in this run (posepipe qa --source S)")
    summ = qa["summary"]
    rows = [{"kind": QA_KIND_TEXT.get(k, k), "findings": n} for k, n in summ["by_kind"].items()]
    out = [f"<p>{html.escape(qa['source'])}: {summ['people_judged']} people checked against "
           f"{html.escape(qa['model']['name'])} on their own boxes; median OKS label vs model "
           f"{_fmt(summ['median_oks'])}; {summ['people_flagged']} people flagged.</p>", _table(rows)]
    images = store.images([qa["source"]]).to_pandas().drop_duplicates("image_id").set_index("image_id")
    cells = []
    for f in qa["findings"][:top]:
        if f["image_id"] not in images.index:
            continue
        row = images.loc[f["image_id"]]
        image = cv2.imdecode(np.frombuffer(store.read_image(row["shard"], int(row["offset"]), int(row["num_bytes"])),
                                           np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            continue
        labels = np.array(f["labels"], dtype=np.float32)
        pred = np.array(f["prediction"], dtype=np.float32)
        # The model's joints drawn filled where it would offer them as labels (score >= 0.3), hollow below.
        pred[:, 2] = np.where(pred[:, 2] >= 0.3, 2, 1)
        mark = schema.JOINT_INDEX.get(f["joint"]) if f.get("joint") else None
        pair = (f'<img src="{png_data_uri(crop_person(image, labels, f["bbox"], 160, mark, draw_box=True))}" alt="labels">'
                f'<img src="{png_data_uri(crop_person(image, pred, f["bbox"], 160, mark))}" alt="model">')
        cells.append(f'<figure>{pair}<figcaption><b>{html.escape(QA_KIND_TEXT.get(f["kind"], f["kind"]))}</b> '
                     f'(severity {f["severity"]:.2f}): {html.escape(f["message"])}</figcaption></figure>')
    if cells:
        out.append("<p>Left: as labelled, with its box (yellow); right: the model on the same box (joints it is unsure "
                   "of hollow). A red ring marks the joint in question.</p>")
        out.append('<div class="gallery qa">' + "".join(cells) + "</div>")
    return "".join(out)


ARM_COLOURS = {"real-only": "#3b7dd8", "mix-visibility": "#e07b22", "mix-uniform": "#3aa655",
               "synth-then-real": "#9b59b6", "start": "#888888"}


def svg_lines(series: Mapping[str, list[tuple[float, float]]], xlabel: str, ylabel: str,
              colours: Mapping[str, str], width: int = 640, height: int = 240) -> str:
    """Several line series on shared axes, with a legend."""
    points = [p for pts in series.values() for p in pts]
    if not points:
        return "<p class='missing'>no points</p>"
    left, bottom, top, right = 56, 50, 10, 12
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(0.0, min(ys)), max(ys) if max(ys) > 0 else 1.0
    pw, ph = width - left - right, height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart">']
    for t in (0, 0.5, 1):
        yv = y0 + (y1 - y0) * t
        y = top + ph * (1 - (yv - y0) / (y1 - y0 or 1))
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
    lx = left
    for name, pts in series.items():
        colour = colours.get(name, "#444")
        path = " ".join(f"{left + pw * (x - x0) / (x1 - x0):.1f},{top + ph * (1 - (y - y0) / (y1 - y0 or 1)):.1f}"
                        for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        out.append(f'<rect x="{lx}" y="{height - 14}" width="12" height="12" fill="{colour}"/>'
                   f'<text x="{lx + 16}" y="{height - 4}">{html.escape(name)}</text>')
        lx += 30 + 7 * len(name)
    out.append(f'<text x="{left}" y="{height - 22}">{html.escape(xlabel)} {x0:g}</text>'
               f'<text x="{width - right}" y="{height - 22}" text-anchor="end">{x1:g}</text>'
               f'<text x="{left + 4}" y="{top + 12}">{html.escape(ylabel)}</text></svg>')
    return "".join(out)


def _with_ci(value, ci, signed: bool = False) -> str:
    if value is None:
        return ""
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    if ci:
        text += f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if signed else f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def headline_text(results: Mapping[str, Any]) -> list[str]:
    """One sentence per start and held-out set: the 1:3 mix against real-only on extreme poses."""
    spec = results["spec"]
    lines = []
    for h in results.get("headline", []):
        if h.get("dAP") is None:
            continue
        lines.append(f"{h['set']} (from {h['start']}), {h['people']} people in extreme poses: the {spec['ratio']} mix "
                     f"scores AP {h['AP']:.3f}, {_with_ci(h['dAP'], h.get('dAP_ci'), signed=True)} against real "
                     f"only: {h['verdict']}.")
    return lines


def experiment_section(results: Mapping[str, Any] | None, short: bool = False) -> str:
    """The data-value experiment: headline, one table per start and held-out set, and the loss curves."""
    if not results:
        return _missing("no experiment in this run (posepipe experiment)")
    spec = results["spec"]
    out = []
    if short:
        out.append(f"<p class='warn'>Short version: {len(spec['arms'])} arms, {len(spec['seeds'])} seed, "
                   f"{spec['steps']} steps each. It shows the direction, not evidence; the full experiment is "
                   "<code>posepipe experiment</code> (docs/experiment.md).</p>")
    out.append("<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in headline_text(results)) + "</ul>")
    out.append(f"<p class='note'>{len(spec['seeds'])} seed(s) per arm, {spec['steps']} steps each, ratio "
               f"{html.escape(spec['ratio'])}; intervals: 95% over {results['bootstrap']} bootstrap resamples of the "
               "held-out images and the seeds, differences paired by seed. <i>start</i>: the starting model, untrained."
               "</p>")
    groups: dict[tuple[str, str], list] = {}
    for row in results["rows"]:
        groups.setdefault((row["start"], row["set"]), []).append(row)
    for (start, set_name), rows in groups.items():
        table = [{"subset": r["subset"], "arm": r["arm"], "people": r["people"],
                  "AP [95% CI]": _with_ci(r.get("AP"), r.get("AP_ci")) or "no people",
                  "AP vs real-only": _with_ci(r.get("dAP"), r.get("dAP_ci"), signed=True),
                  "verdict": r.get("verdict", ""), "AP50": r.get("AP50"), "PCK@0.1": r.get("PCK")} for r in rows]
        out.append(f"<h3>{html.escape(set_name)}, from {html.escape(start)}</h3>" + _table(table))
    curves = {k.split("/", 1)[1]: [(p["step"], p["loss"]) for p in pts] for k, pts in results.get("curves", {}).items()}
    if curves:
        out.append("<h3>Training loss (mean over seeds)</h3>" + svg_lines(curves, "step", "loss", ARM_COLOURS))
    return "".join(out)


def write_experiment_page(results: Mapping[str, Any], out: str | Path) -> Path:
    """``posepipe experiment``'s page: the experiment section alone."""
    body = "<h1>Does synthetic data help?</h1>" + experiment_section(results)
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>posepipe experiment</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")
    out = Path(out)
    atomic.write_text(out, page)
    return out


def write_qa_page(store_root: Path, qa: Mapping[str, Any], out: str | Path, top: int = 40) -> Path:
    """``posepipe qa``'s page: the label-check section alone, with more findings."""
    body = f"<h1>Label check: {html.escape(qa['source'])}</h1>" + qa_section(PoseStore(store_root), qa, top)
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>posepipe qa</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")
    out = Path(out)
    atomic.write_text(out, page)
    return out


def render_html(inp: ReportInputs) -> tuple[str, dict]:
    """The page and the numbers it shows (for JSON output and tests)."""
    store = PoseStore(inp.store)
    sources = [s for s in inp.real_sources + inp.synth_sources if s in store.sources()]
    inp = ReportInputs(**{**inp.__dict__, "real_sources": [s for s in inp.real_sources if s in sources],
                          "synth_sources": [s for s in inp.synth_sources if s in sources]})
    vis_html, vis = visibility_section(store, sources)
    ext_html, ext = extremes_section(store, inp)
    body = [
        f"<h1>{html.escape(inp.title)}</h1>",
        f"<p>Store <code>{html.escape(str(inp.store))}</code>; real: {html.escape(', '.join(inp.real_sources) or 'none')}; "
        f"synthetic: {html.escape(', '.join(inp.synth_sources) or 'none')}.</p>",
        summary_section(inp.summary),
        "<h2>Gallery: real and synthetic side by side</h2>", gallery_section(store, inp),
        "<h2>Visibility per source</h2>", vis_html,
        "<h2>Extreme poses: real vs synthetic</h2>", ext_html,
        "<h2>Mix: ratio and weights</h2>", mix_section(inp.mix_dir),
        "<h2>Training curves</h2>", training_section(inp.train_dir),
        "<h2>Accuracy: AP, FP32 and INT8</h2>", results_section(inp.train_dir, inp.export_dir),
    ]
    if inp.experiment_dir is not None:
        results = _read_json(Path(inp.experiment_dir) / "results.json")
        short = bool(results) and len(results["spec"]["seeds"]) == 1
        body += ["<h2>Does synthetic help?</h2>", experiment_section(results, short=short)]
    for qa_dir in inp.qa_dirs:
        qa = _read_json(Path(qa_dir) / "qa.json")
        body += ["<h2>Label check: labels vs a pretrained model</h2>", qa_section(store, qa)]
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(inp.title)}</title><style>{CSS}</style></head><body>"
            + "".join(body) + "</body></html>\n")
    return page, {"visibility": vis, "extreme_shares": ext}


def write_report(inp: ReportInputs, out: str | Path) -> Path:
    """Write the page atomically; returns its path."""
    page, _ = render_html(inp)
    out = Path(out)
    atomic.write_text(out, page)
    return out


def sources_of_kind(store: PoseStore, prefixes: Iterable[str] = ("synth/",)) -> list[str]:
    """Synthetic sources are named synth/<run> by convention."""
    return [s for s in store.sources() if s.startswith(tuple(prefixes))]
