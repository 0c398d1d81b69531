"""What model pre-annotations save annotators, on coco-mini val (real COCO labels as the truth).

    .venv/bin/python bench/preannotate.py [--model movenet-thunder] [--min-score 0.3]

Two ways the pre-annotations are made, side by side:

* ``ground-truth boxes``: the people's own boxes (pre-annotating a set that has boxes, e.g. a
  detector's or COCO's person boxes);
* ``posepipe annotate prelabel``: nothing given, MultiPose finds the people (a detected person
  is matched to the labelled one whose box it overlaps most, IoU >= 0.5; labelled people no
  detection matches are labelled from zero).

Per labelled joint: no move (pre-label within the annotators' own spread, k_j * sqrt(area)),
moved, added (no pre-label); pre-labels on unlabelled joints are deleted. The baseline is
labelling from zero: one placement per labelled joint. Also prints model time per image.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_setup import SHARED  # noqa: E402


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax0, ay0, ax1, ay1 = a[:, 0], a[:, 1], a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1[:, None], bx1[None]) - np.maximum(ax0[:, None], bx0[None]), 0, None)
    ih = np.clip(np.minimum(ay1[:, None], by1[None]) - np.maximum(ay0[:, None], by0[None]), 0, None)
    inter = iw * ih
    return inter / (a[:, 2:].prod(1)[:, None] + b[:, 2:].prod(1)[None] - inter + 1e-9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="movenet-thunder")
    p.add_argument("--min-score", type=float, default=0.3)
    args = p.parse_args()

    from posepipe.annotation.preannotate import edit_savings
    from posepipe.datasets import schema
    from posepipe.datasets.coco import ingest_coco
    from posepipe.datasets.store import PoseStore
    from posepipe.pretrained import predict as P
    from posepipe.pretrained.cache import ModelCache
    from posepipe.pretrained.runtime import load

    mini = SHARED / "coco-mini"
    model = load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        store = PoseStore(Path(tmp) / "store")
        ingest_coco(store, mini / "annotations/person_keypoints_val2017.json", mini / "val2017", "coco-val")
        inst = store.instances(["coco-val"])
        labels_all = schema.keypoints_from_arrow(inst.column("keypoints"))
        boxes_all = schema.bbox_from_arrow(inst.column("bbox"))
        areas_all = np.array(inst.column("area").to_pylist(), dtype=np.float64)
        ids = inst.column("instance_id").to_pylist()

        # 1. Ground-truth boxes.
        opts = P.PredictOptions(min_score=args.min_score, labelled_only=True)
        people, images, skipped = P.people_of_source(store, "coco-val", opts)
        t = time.perf_counter()
        pred = P.run(model, people, images, opts, model.describe(), {"kind": "source"}, skipped)
        seconds = time.perf_counter() - t
        row = {iid: i for i, iid in enumerate(ids)}
        rows = [row[p.instance_id] for p in pred.people]
        offered = P.offered(pred.keypoints, [p.width for p in pred.people], [p.height for p in pred.people], args.min_score)
        shown = pred.keypoints.copy()
        shown[..., 2] = np.where(offered, shown[..., 2], 0.0)
        gt_boxes = edit_savings(labels_all[rows], shown, areas_all[rows], args.min_score)
        gt_boxes["model_ms_per_person"] = 1000 * seconds / max(len(pred.people), 1)

        # 2. Straight from the images: MultiPose finds the people, then the pose model.
        images_table = store.images(["coco-val"]).to_pylist()
        folder = Path(tmp) / "images"
        folder.mkdir()
        file_of = {}
        for im in images_table:
            (folder / im["file_name"]).write_bytes(store.read_image(im["shard"], im["offset"], im["num_bytes"]))
            file_of[im["image_id"]] = im["file_name"]
        detector = P.multipose_detector(ModelCache())
        fopts = P.PredictOptions(min_score=args.min_score, boxes="multipose")
        t = time.perf_counter()
        fpeople, fimages, fskipped = P.people_of_folder(folder, fopts, detector)
        fpred = P.run(model, fpeople, fimages, fopts, model.describe(), {"kind": "folder"}, fskipped)
        fseconds = time.perf_counter() - t
        labelled = [i for i in range(len(ids)) if labels_all[i, :, 2].any() and not inst.column("iscrowd")[i].as_py()]
        matched = np.zeros((len(labelled), 17, 3), dtype=np.float32)  # unmatched people: nothing offered
        image_ids = inst.column("image_id").to_pylist()
        extra_offered = 0
        for image_id, name in file_of.items():
            gi = [k for k, i in enumerate(labelled) if image_ids[i] == image_id]
            di = [k for k, p in enumerate(fpred.people) if p.file_name == name]
            if not di:
                continue
            fo = P.offered(fpred.keypoints[di], [fpred.people[k].width for k in di], [fpred.people[k].height for k in di],
                           args.min_score)
            used = set()
            if gi:
                iou = box_iou(boxes_all[[labelled[k] for k in gi]], np.stack([fpred.people[k].bbox for k in di]))
                for a in np.argsort(-iou.max(axis=1)):
                    b = int(np.argmax(np.where([j in used for j in range(len(di))], -1, iou[a])))
                    if iou[a, b] >= 0.5 and b not in used:
                        used.add(b)
                        kp = fpred.keypoints[di[b]].copy()
                        kp[:, 2] = np.where(fo[b], kp[:, 2], 0.0)
                        matched[gi[a]] = kp
            extra_offered += int(sum(fo[j].sum() for j in range(len(di)) if j not in used))
        folder_savings = edit_savings(labels_all[labelled], matched, areas_all[labelled], args.min_score)
        folder_savings["deleted"] += extra_offered  # joints of detections that match nobody labelled
        folder_savings["edits_with_preannotations"] += extra_offered
        folder_savings["edit_ratio"] = folder_savings["edits_with_preannotations"] / folder_savings["labelled_joints"]
        folder_savings["people_detected"] = len(fpred.people)
        folder_savings["model_ms_per_image"] = 1000 * fseconds / max(len(file_of), 1)

    print(f"pre-annotations by {args.model} on coco-mini val (joints offered at score >= {args.min_score}); "
          f"baseline: labelling from zero, one placement per labelled joint\n")
    print("| boxes | people | labelled joints | no move | moved | added | deleted | share needing no move "
          "| edits / placements from zero |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in (("ground-truth boxes", gt_boxes), ("prelabel (MultiPose finds people)", folder_savings)):
        print(f"| {name} | {r['people']} | {r['labelled_joints']} | {r['no_move']} | {r['moved']} | {r['added']} | "
              f"{r['deleted']} | {r['share_no_move']:.3f} | {r['edit_ratio']:.3f} |")
    print(f"\nwithin one sigma (half the spread above): {gt_boxes['share_no_move_within_one_sigma']:.3f} (ground-truth boxes)")
    print(f"model time: {gt_boxes['model_ms_per_person']:.1f} ms per person (GT boxes); "
          f"{folder_savings['model_ms_per_image']:.1f} ms per image (detect + pose), {folder_savings['people_detected']} people detected")
    print(json.dumps({"ground_truth_boxes": gt_boxes, "prelabel": folder_savings}))


if __name__ == "__main__":
    main()
