"""Store summaries: counts per source, visibility histograms, and the rejects listing."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pyarrow.compute as pc

from . import schema
from .store import PoseStore

_COUNTS = (
    "images_read", "images_accepted", "images_rejected",
    "annotations_read", "annotations_accepted", "annotations_rejected", "files_rejected",
)


def stats(store: PoseStore, sources: Iterable[str] | None = None) -> dict:
    """Per source: what was read, accepted and rejected, and what the store holds now."""
    out = {"store": str(store.root), "sources": {}}
    for source in list(store.sources() if sources is None else sources):
        batches = store.batches([source])
        inst = store.instances([source])
        kp = schema.keypoints_from_arrow(inst.column("keypoints"))
        read = {key: int(pc.sum(batches.column(key)).as_py() or 0) for key in _COUNTS}
        labelled = kp[..., 2] > 0
        out["sources"][source] = {
            "files": batches.num_rows,
            **read,
            "images": store.images([source]).num_rows,
            "instances": inst.num_rows,
            "crowd_instances": int(pc.sum(inst.column("iscrowd").cast("int64")).as_py() or 0),
            "rejects": store.rejects([source]).num_rows,
            "visibility": schema.visibility_histogram(kp),
            "per_joint_labelled": {
                name: int(labelled[:, j].sum()) for j, name in enumerate(schema.COCO17_JOINTS)
            },
            "mean_labelled_joints": float(labelled.sum(axis=1).mean()) if len(kp) else 0.0,
            "skeletons": dict(sorted(_value_counts(inst.column("skeleton").to_pylist()).items())),
        }
    totals = {key: sum(s[key] for s in out["sources"].values()) for key in (*_COUNTS, "images", "instances", "rejects")}
    totals["visibility"] = {
        k: sum(s["visibility"][k] for s in out["sources"].values()) for k in ("v0", "v1", "v2")
    }
    out["totals"] = totals
    return out


def _value_counts(values: list) -> dict:
    uniq, counts = np.unique(np.array([str(v) for v in values], dtype=object), return_counts=True)
    return {str(u): int(c) for u, c in zip(uniq, counts)}


def rejects(store: PoseStore, sources: Iterable[str] | None = None) -> list[dict]:
    """Every rejected record, oldest source first: kind, record_id, file, reason, message, raw."""
    table = store.rejects(sources)
    return table.to_pylist()
