"""Release cards: what a dataset release holds, and what changed between two of them.

Plain Python over a store and a mix folder; the git/DVC side of releasing lives in
``posepipe.flows.versioning``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from . import schema
from .store import PoseStore


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_kind(source: str) -> str:
    return "synthetic" if source.startswith("synth/") else "real"


def build_card(name: str, store: PoseStore, manifest_dir: Path, params: dict, code_commit: str,
               repo_root: Path) -> dict:
    """Everything needed to check a pulled release and to compare releases, as plain json."""
    sources = {}
    for source in store.sources():
        batches = store.batches([source]).to_pylist()
        inst = store.instances([source])
        kp = schema.keypoints_from_arrow(inst.column("keypoints"))
        # A synthetic run records its run seed on every image's batch (each image has its own seed).
        params_of = [orjson.loads(b["params"]) for b in batches if b["params"]]
        seeds = sorted({p.get("run_seed", p.get("seed")) for p in params_of} - {None}, key=str)
        sources[source] = {
            "kind": source_kind(source),
            "images": store.images([source]).num_rows,
            "instances": inst.num_rows,
            "rejects": store.rejects([source]).num_rows,
            "visibility": schema.visibility_histogram(kp),
            "batches": [{"batch_id": b["batch_id"], "file": b["source_file"], "file_sha256": b["file_sha256"]}
                        for b in batches],
            "synthetic_seeds": seeds,
        }
    files = {}
    for path in sorted([*store.root.rglob("*.parquet"), *store.shard_dir.rglob("*.tar"), *manifest_dir.rglob("*")]):
        if path.is_file() and not path.name.startswith("."):
            files[path.relative_to(repo_root).as_posix()] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    report_path = manifest_dir / "report.json"
    mix_report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return {
        "name": name,
        "code_commit": code_commit,
        "paths": {"store": store.root.relative_to(repo_root).as_posix(),
                  "manifest": manifest_dir.relative_to(repo_root).as_posix()},
        "sources": sources,
        "counts": _split_counts(manifest_dir),
        "mix": {k: mix_report.get(k) for k in ("ratio", "ess", "weights", "epoch") if k in mix_report},
        "params": params,
        "files": files,
    }


def _split_counts(manifest_dir: Path) -> dict[str, dict[str, int]]:
    """Instances per source and split, from the manifest."""
    path = manifest_dir / "manifest.parquet"
    if not path.exists():
        return {}
    table = pq.read_table(path, columns=["source", "split"]).to_pylist()
    counts: dict[str, dict[str, int]] = {}
    for row in table:
        per = counts.setdefault(row["source"], {})
        per[row["split"]] = per.get(row["split"], 0) + 1
    return {s: dict(sorted(c.items())) for s, c in sorted(counts.items())}


def card_markdown(card: dict) -> str:
    lines = [f"# Dataset release {card['name']}", "", f"Code commit: `{card['code_commit']}`", "",
             "| source | kind | images | instances | v=0 | v=1 | v=2 | seeds |", "|---|---|---|---|---|---|---|---|"]
    for name, s in card["sources"].items():
        v = s["visibility"]
        seeds = ", ".join(map(str, s["synthetic_seeds"])) or "-"
        lines.append(f"| {name} | {s['kind']} | {s['images']} | {s['instances']} | {v['v0']} | {v['v1']} | {v['v2']} | {seeds} |")
    if card["counts"]:
        lines += ["", "| source | " + " | ".join(("train", "val", "test")) + " |", "|---|---|---|---|"]
        for name, c in card["counts"].items():
            lines.append(f"| {name} | " + " | ".join(str(c.get(k, 0)) for k in ("train", "val", "test")) + " |")
    lines += ["", f"{len(card['files'])} files, {sum(f['bytes'] for f in card['files'].values())} bytes."]
    return "\n".join(lines) + "\n"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def diff_cards(a: dict, b: dict) -> dict:
    """What changed from release a to release b."""
    sa, sb = a["sources"], b["sources"]
    changed = {}
    for s in sorted(set(sa) & set(sb)):
        delta = {k: sb[s][k] - sa[s][k] for k in ("images", "instances") if sb[s][k] != sa[s][k]}
        vis = {k: sb[s]["visibility"][k] - sa[s]["visibility"][k] for k in ("v0", "v1", "v2")
               if sb[s]["visibility"][k] != sa[s]["visibility"][k]}
        if delta or vis:
            changed[s] = {**delta, **({"visibility": vis} if vis else {})}
    counts = {}
    for s in sorted(set(a["counts"]) | set(b["counts"])):
        ca, cb = a["counts"].get(s, {}), b["counts"].get(s, {})
        row = {split: {"a": ca.get(split, 0), "b": cb.get(split, 0)} for split in ("train", "val", "test")
               if ca.get(split, 0) != cb.get(split, 0)}
        if row:
            counts[s] = row
    pa_, pb = _flatten(a["params"]), _flatten(b["params"])
    params = {k: {"a": pa_.get(k), "b": pb.get(k)} for k in sorted(set(pa_) | set(pb)) if pa_.get(k) != pb.get(k)}
    return {
        "a": a["name"], "b": b["name"],
        "sources_added": sorted(set(sb) - set(sa)),
        "sources_removed": sorted(set(sa) - set(sb)),
        "sources_changed": changed,
        "instances_by_source_and_split": counts,
        "visibility": {
            "a": {s: v["visibility"] for s, v in sa.items()},
            "b": {s: v["visibility"] for s, v in sb.items()},
        },
        "params": params,
        "code_commits": {"a": a["code_commit"], "b": b["code_commit"]},
    }
