"""Helpers for the training tests: a few synthetic people in the store and a manifest folder.

The synthetic people are stick figures drawn with cv2 from a COCO-17 template pose (seeded), so
tests exercise the real/synthetic mix without waiting for Blender renders.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from posepipe.datasets import records, schema
from posepipe.datasets.store import PoseStore

# A standing person, x and y in a 1x2 box (COCO-17 order).
_TEMPLATE = np.array([
    (0.50, 0.10), (0.55, 0.07), (0.45, 0.07), (0.60, 0.09), (0.40, 0.09), (0.70, 0.25), (0.30, 0.25),
    (0.80, 0.45), (0.20, 0.45), (0.85, 0.62), (0.15, 0.62), (0.62, 0.60), (0.38, 0.60), (0.63, 0.80),
    (0.37, 0.80), (0.64, 0.98), (0.36, 0.98),
], dtype=np.float32)


def add_synthetic_people(store: PoseStore, count: int = 8, seed: int = 0, source: str = "synth-test") -> list[str]:
    """Draw ``count`` seeded stick figures into ``source``; return their instance ids."""
    rng = np.random.default_rng(seed)
    image_rows, cols, kps, boxes = [], {k: [] for k in ("instance_id", "image_id", "source", "area", "iscrowd",
                                                        "num_keypoints", "skeleton", "source_file",
                                                        "record_index")}, [], []
    with store.transaction(source) as tx:
        for i in range(count):
            image = rng.integers(0, 60, (160, 120, 3), dtype=np.uint8)
            h = float(rng.uniform(90, 140))
            x0, y0 = float(rng.uniform(5, 110 - h / 2)), float(rng.uniform(5, 155 - h))
            joints = np.zeros((17, 3), dtype=np.float32)
            joints[:, 0] = x0 + _TEMPLATE[:, 0] * h / 2
            joints[:, 1] = y0 + _TEMPLATE[:, 1] * h
            joints[:, 2] = 2
            for a, b in schema.COCO17_SKELETON:
                pa_, pb = joints[a - 1, :2].astype(int), joints[b - 1, :2].astype(int)
                cv2.line(image, tuple(int(v) for v in pa_), tuple(int(v) for v in pb), (200, 180, 60), 2)
            for j, (x, y, _) in enumerate(joints):
                cv2.circle(image, (int(x), int(y)), 2, (255, 40 + 12 * j, 255 - 12 * j), -1)
            ok, buf = cv2.imencode(".png", image)
            assert ok
            data = buf.tobytes()
            sha = hashlib.sha256(data).hexdigest()
            tx.put_image(data, sha, "png")
            image_id = schema.image_id_from_sha256(sha)
            image_rows.append({"image_id": image_id, "source": source, "source_image_id": i,
                               "file_name": f"synth_{i:04d}.png", "width": 120, "height": 160, "sha256": sha,
                               "format": "png", "num_bytes": len(data), "source_file": "synth.json",
                               "record_index": i, "split": "train", "batch_id": "synth"})
            box = records.bbox_from_keypoints(joints, 120, 160)
            cols["instance_id"].append(schema.instance_id(source, str(i)))
            cols["image_id"].append(image_id)
            cols["source"].append(source)
            cols["area"].append(box[2] * box[3])
            cols["iscrowd"].append(False)
            cols["num_keypoints"].append(17)
            cols["skeleton"].append("coco17")
            cols["source_file"].append("synth.json")
            cols["record_index"].append(i)
            kps.append(joints)
            boxes.append(box)
        batch = {"batch_id": "synth", "source": source, "source_file": "synth.json", "file_sha256": str(seed),
                 "format": "synth", "images_read": count, "images_accepted": count, "images_rejected": 0,
                 "annotations_read": count, "annotations_accepted": count, "annotations_rejected": 0,
                 "files_rejected": 0, "params": "{}"}
        import pyarrow as pa

        tx.replace_file("synth.json", {
            "images": records.images_table(image_rows),
            "instances": records.instances_table(cols, np.stack(kps), np.array(boxes)),
            "rejects": schema.empty_table("rejects"),
            "batches": pa.Table.from_pylist([batch], schema=schema.BATCHES_SCHEMA),
        })
    return cols["instance_id"]


def write_manifest(store: PoseStore, folder: Path, synth_source: str | None = "synth-test") -> Path:
    """coco-train people (real) and the synthetic ones as train, coco-val people as val."""
    inst = store.instances().to_pandas()
    inst = inst[(inst["num_keypoints"] > 0) & ~inst["iscrowd"]]
    parts = []
    for source, kind, split in (("coco-train", "real", "train"), (synth_source, "synthetic", "train"),
                                ("coco-val", "real", "val")):
        rows = inst[inst["source"] == source]
        parts.append(pd.DataFrame({"instance_id": rows["instance_id"], "image_id": rows["image_id"],
                                   "source": source, "source_kind": kind, "weight": 1.0, "split": split}))
    folder.mkdir(parents=True, exist_ok=True)
    pd.concat(parts, ignore_index=True).to_parquet(folder / "manifest.parquet")
    (folder / "report.json").write_text(json.dumps({"store": str(store.root)}))
    return folder


# ----- a shared two-process training run ----------------------------------------------------
import shutil  # noqa: E402

import pytest  # noqa: E402

# Four epochs of the tiny model on coco-mini train plus 8 stick figures, 2 ranks x 8 per batch.
RUN_ARGS = ["--batch-size", "8", "--workers", "0", "--lr", "3e-3", "--seed", "0", "--dist-timeout", "300",
            "--pck-instances", "32"]
RUN_EPOCHS = 4
# Each test module that imports the fixtures below gets its own copy of them; this keeps one
# workspace and one training run per pytest session all the same.
_SESSION: dict[str, object] = {}


def launch_config(manifest: Path, out: Path, *extra: str, resume: bool = False):
    from posepipe.training.launch import LaunchConfig

    return LaunchConfig(manifest=manifest, out=out, model="tiny", nproc=2, epochs=RUN_EPOCHS, resume=resume,
                        threads=1, train_args=RUN_ARGS + list(extra))


@pytest.fixture(scope="session")
def train_workspace(coco_store_template, tmp_path_factory) -> tuple[PoseStore, Path]:
    """A store with coco-mini and synthetic people, and a manifest over it."""
    if "workspace" in _SESSION:
        return _SESSION["workspace"]
    base = tmp_path_factory.mktemp("train")
    root = base / "store"
    shutil.copytree(coco_store_template, root)
    store = PoseStore(root)
    add_synthetic_people(store, 8)
    _SESSION["workspace"] = store, write_manifest(store, base / "mix")
    return _SESSION["workspace"]


@pytest.fixture(scope="session")
def trained_run(train_workspace, tmp_path_factory) -> Path:
    """The output folder of one real ``torchrun`` run with 2 gloo processes (with COCO evaluation)."""
    from posepipe.training.launch import run

    if "run" in _SESSION:
        return _SESSION["run"]
    _, manifest = train_workspace
    out = tmp_path_factory.mktemp("run") / "out"
    code = run(launch_config(manifest, out))
    assert code == 0, f"torchrun exited {code}"
    _SESSION["run"] = out
    return out
