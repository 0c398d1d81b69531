"""Does ``posepipe qa`` find label errors? Planted ones on coco-mini, precision and recall by kind.

    .venv/bin/python bench/qa.py [--share 0.06] [--seed 0] [--model movenet-thunder]

coco-mini train + val; people with at least 8 labelled joints are candidates. A seeded share of
them gets one planted error each, of one kind:

* ``left_right_swapped``: every left label exchanged with its right one;
* ``joint_off``: one visible joint moved by max(6 spreads, 15% of the box's longer side);
* ``visible_unlabelled``: two visible joints deleted (v=0);
* ``box_mismatch``: the box shifted by 40% of its width, or grown 1.8x about its centre.

The planted file goes through ``posepipe ingest coco`` like any other, then the label check. A
finding is a hit when it is on a planted person and of the planted kind (``joint_off``: the moved
joint; ``visible_unlabelled``: a deleted one). Findings on people nothing was planted on are
compared with the same check on the clean file: those it already had are the data's own
problems (COCO has some), not false alarms. Baseline: the clean file's findings.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_setup import SHARED  # noqa: E402

KINDS = ("left_right_swapped", "joint_off", "visible_unlabelled", "box_mismatch")


def plant(doc: dict, share: float, seed: int) -> tuple[dict, dict[int, dict]]:
    """A copy of the COCO doc with errors planted; annotation id -> what was planted."""
    from posepipe.datasets import schema

    rng = np.random.default_rng(seed)
    doc = copy.deepcopy(doc)
    candidates = [a for a in doc["annotations"] if not a.get("iscrowd") and a.get("num_keypoints", 0) >= 8]
    order = rng.permutation(len(candidates))
    per_kind = max(1, int(round(share * len(candidates))))
    size = {im["id"]: (im["width"], im["height"]) for im in doc["images"]}
    planted = {}
    for k, kind in enumerate(KINDS):
        for idx in order[k * per_kind:(k + 1) * per_kind]:
            ann = candidates[idx]
            kp = np.array(ann["keypoints"], dtype=np.float64).reshape(17, 3)
            x, y, w, h = ann["bbox"]
            iw, ih = size[ann["image_id"]]
            info = {"kind": kind}
            if kind == "left_right_swapped":
                kp = kp[list(schema.FLIP_INDEX)]
            elif kind == "joint_off":
                visible = np.flatnonzero(kp[:, 2] == 2)
                j = int(rng.choice(visible))
                spread = 2 * schema.OKS_SIGMAS[j] * np.sqrt(max(ann.get("area") or w * h, 1.0))
                dist = max(6 * spread, 0.15 * max(w, h))
                angle = rng.uniform(0, 2 * np.pi)
                kp[j, 0] += dist * np.cos(angle)
                kp[j, 1] += dist * np.sin(angle)
                kp[j, 0] = np.clip(kp[j, 0], 0, iw - 1)  # errors stay in the picture: ingest would refuse them
                kp[j, 1] = np.clip(kp[j, 1], 0, ih - 1)
                info["joint"] = schema.COCO17_JOINTS[j]
            elif kind == "visible_unlabelled":
                visible = np.flatnonzero(kp[:, 2] == 2)
                gone = rng.choice(visible, size=2, replace=False)
                kp[gone] = 0
                info["joints"] = [schema.COCO17_JOINTS[j] for j in gone]
            else:
                if rng.random() < 0.5:
                    x0, y0, x1, y1 = x + 0.4 * w, y, x + 1.4 * w, y + h
                    info["box"] = "shifted"
                else:
                    x0, y0, x1, y1 = x - 0.4 * w, y - 0.4 * h, x + 1.4 * w, y + 1.4 * h
                    info["box"] = "grown"
                x0, x1 = np.clip([x0, x1], 0, iw)
                y0, y1 = np.clip([y0, y1], 0, ih)
                ann["bbox"] = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
            ann["keypoints"] = [float(v) for v in kp.reshape(-1)]
            ann["num_keypoints"] = int((kp[:, 2] > 0).sum())
            planted[ann["id"]] = info
    return doc, planted


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="movenet-thunder")
    p.add_argument("--share", type=float, default=0.06, help="share of candidates planted, per kind")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from posepipe.annotation.qa import check_source
    from posepipe.datasets.coco import ingest_coco
    from posepipe.datasets.store import PoseStore
    from posepipe.pretrained.runtime import load

    model = load(args.model)
    mini = SHARED / "coco-mini"
    rows, hits_total, planted_total = [], 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        store = PoseStore(Path(tmp) / "store")
        results = {}
        for split in ("train", "val"):
            doc = json.loads((mini / f"annotations/person_keypoints_{split}2017.json").read_text())
            bad, planted = plant(doc, args.share, args.seed)
            (Path(tmp) / f"planted_{split}.json").write_text(json.dumps(bad))
            for name, path in ((f"clean-{split}", mini / f"annotations/person_keypoints_{split}2017.json"),
                               (f"planted-{split}", Path(tmp) / f"planted_{split}.json")):
                report = ingest_coco(store, path, mini / f"{split}2017", name)
                assert report.rejected == 0, report.to_dict()
            results[split] = (check_source(store, f"clean-{split}", model), check_source(store, f"planted-{split}", model),
                              planted)
        for kind in KINDS:
            planted_n = hits = tp = known = other = 0
            for clean, dirty, planted in results.values():
                clean_keys = {(f["source_annotation_id"], f["kind"], f["joint"]) for f in clean["findings"]}
                kind_planted = {a: info for a, info in planted.items() if info["kind"] == kind}
                planted_n += len(kind_planted)
                hit_people = set()
                for f in dirty["findings"]:
                    if f["kind"] != kind:
                        continue
                    info = kind_planted.get(f["source_annotation_id"])
                    if info is not None and (
                            (kind == "joint_off" and f["joint"] == info["joint"])
                            or (kind == "visible_unlabelled" and f["joint"] in info["joints"])
                            or kind in ("left_right_swapped", "box_mismatch")):
                        tp += 1
                        hit_people.add(f["source_annotation_id"])
                    elif (f["source_annotation_id"], f["kind"], f["joint"]) in clean_keys:
                        known += 1  # the clean data has it too: a real label problem, not a planted one
                    else:
                        other += 1
                hits += len(hit_people)
            hits_total += hits
            planted_total += planted_n
            rows.append({"kind": kind, "planted": planted_n, "found": hits, "recall": hits / max(planted_n, 1),
                         "findings": tp + known + other, "already_in_clean_data": known, "other": other,
                         "precision": tp / max(tp + other, 1)})
        clean_total = sum(len(c["findings"]) for c, _, _ in results.values())
        people = sum(c["summary"]["people_judged"] for c, _, _ in results.values())

    print(f"label check with {args.model} on coco-mini train+val ({people} people checked); planted "
          f"{args.share:.0%} of candidates per kind, seed {args.seed}")
    print(f"baseline: the clean files give {clean_total} findings (COCO's own label problems, or false alarms)\n")
    print("| kind | planted | found | recall | findings | already in clean data | other | precision (excl. clean data's) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['kind']} | {r['planted']} | {r['found']} | {r['recall']:.2f} | {r['findings']} | "
              f"{r['already_in_clean_data']} | {r['other']} | {r['precision']:.2f} |")
    print(f"\nall kinds: recall {hits_total / max(planted_total, 1):.2f} ({hits_total}/{planted_total})")
    print(json.dumps({"rows": rows, "clean_findings": clean_total, "people": people}))


if __name__ == "__main__":
    main()
