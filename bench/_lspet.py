"""LSPET as COCO keypoints json, for the benchmarks (posepipe has no LSP reader yet).

Its 12 limb joints map to COCO-17's (no face joints: v=0), flag 1 -> v=2 and flag 0 -> v=0 with
the coordinates dropped; the box is the 14 joints' extent (head top included) padded 10%, and
the area (OKS scale) is the box's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from _train_setup import SHARED

# LSP-14 order -> COCO-17 index (neck and head top have none).
LSP_TO_COCO = {0: 16, 1: 14, 2: 12, 3: 11, 4: 13, 5: 15, 6: 10, 7: 8, 8: 6, 9: 5, 10: 7, 11: 9}


def lspet_coco(first: int, last: int, out: Path) -> Path:
    """LSPET images first..last (1-based, inclusive) as a COCO keypoints file."""
    from PIL import Image
    from scipy.io import loadmat

    from posepipe.datasets import schema

    root = SHARED / "lspet"
    joints = loadmat(root / "joints.mat")["joints"]  # (14, 3, N): x, y, flag
    images, annotations = [], []
    for k in range(first, last + 1):
        name = f"im{k:05d}.jpg"
        with Image.open(root / "images" / name) as im:
            w, h = im.size
        j = joints[:, :, k - 1]
        vis = j[:, 2] > 0
        kp = np.zeros((17, 3))
        for lsp, coco in LSP_TO_COCO.items():
            if vis[lsp]:
                kp[coco] = [j[lsp, 0], j[lsp, 1], 2]
        pts = j[vis, :2]
        if len(pts) < 2 or (kp[:, 2] > 0).sum() < 1:
            continue
        x0, y0 = np.maximum(pts.min(axis=0), 0)
        x1, y1 = np.minimum(pts.max(axis=0), [w, h])
        px, py = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
        x0, y0, x1, y1 = max(0, x0 - px), max(0, y0 - py), min(w, x1 + px), min(h, y1 + py)
        # Labelled joints at or over the border would be refused by ingest; LSPET has a few.
        kp[:, 0] = np.clip(kp[:, 0], 0, w - 1)
        kp[:, 1] = np.clip(kp[:, 1], 0, h - 1)
        images.append({"id": k, "file_name": name, "width": w, "height": h})
        annotations.append({"id": k, "image_id": k, "category_id": 1, "iscrowd": 0,
                            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                            "area": float((x1 - x0) * (y1 - y0)), "keypoints": kp.reshape(-1).tolist(),
                            "num_keypoints": int((kp[:, 2] > 0).sum())})
    doc = {"images": images, "annotations": annotations, "categories": [schema.PERSON_CATEGORY]}
    out.write_text(json.dumps(doc))
    return out


def benchmark_store(work: Path, lspet_train: int, lspet_test: int):
    """A store under ``work`` with coco-mini train and val, the OCHuman and Human-Art samples, and
    LSPET 1..lspet_train (lspet-train) and its last lspet_test images (lspet-test). Re-running
    ingests nothing new (each file's content is checked first)."""
    from posepipe.datasets.coco import ingest_coco
    from posepipe.datasets.store import PoseStore

    store = PoseStore(work / "store")
    mini, samples = SHARED / "coco-mini", SHARED / "pose-samples"
    sources = [("coco-train", mini / "annotations/person_keypoints_train2017.json", mini / "train2017"),
               ("coco-val", mini / "annotations/person_keypoints_val2017.json", mini / "val2017"),
               ("ochuman", samples / "ochuman/test_ochuman.json", samples / "ochuman"),
               ("humanart", samples / "humanart/test_humanart.json", samples / "humanart"),
               ("lspet-train", lspet_coco(1, lspet_train, work / "lspet_train.json"), SHARED / "lspet/images"),
               ("lspet-test", lspet_coco(6001 - lspet_test, 6000, work / "lspet_test.json"), SHARED / "lspet/images")]
    for name, labels, images in sources:
        report = ingest_coco(store, labels, images, name)
        print(f"{name}: {report.annotations_accepted}/{report.annotations_read} people accepted "
              f"{dict(report.reasons) or ''}", flush=True)
    return store
