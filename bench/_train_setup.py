"""Shared by the training benchmarks: coco-mini ingested into a temporary store, and a manifest over it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSEPIPE_SHARED_DATA", REPO.parent / "shared" / "data"))


def coco_mini_manifest(work: Path, score_on_train: bool = False) -> Path:
    """coco-mini train people (real, split train) and val people (real, split val); ratio 0:1 trains on them.

    ``score_on_train``: the val rows are the train people instead, for a quantization-fidelity
    check on people the model has fitted (not a measure of generalisation).
    """
    from posepipe.datasets.coco import ingest_coco
    from posepipe.datasets.store import PoseStore

    store = PoseStore(work / "store")
    mini = SHARED / "coco-mini"
    for split in ("train", "val"):
        ingest_coco(store, mini / f"annotations/person_keypoints_{split}2017.json", mini / f"{split}2017",
                    f"coco-{split}")
    inst = store.instances().to_pandas()
    inst = inst[(inst["num_keypoints"] > 0) & ~inst["iscrowd"]]
    rows = pd.DataFrame({"instance_id": inst["instance_id"], "image_id": inst["image_id"], "source": inst["source"],
                         "source_kind": "real", "weight": 1.0,
                         "split": inst["source"].map({"coco-train": "train", "coco-val": "val"})})
    if score_on_train:
        train = rows[rows["split"] == "train"]
        rows = pd.concat([train, train.assign(split="val")], ignore_index=True)
    folder = work / ("mix-train-scored" if score_on_train else "mix")
    folder.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(folder / "manifest.parquet")
    (folder / "report.json").write_text(json.dumps({"store": str(store.root)}))
    return folder
