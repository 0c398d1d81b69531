"""Model pre-annotations: LabelMe files annotators correct, and what they save."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np

from posepipe.annotation.preannotate import edit_savings
from posepipe.datasets import schema


def posepipe(*args):
    return subprocess.run([sys.executable, "-m", "posepipe.flows", *args], capture_output=True, text=True,
                          env=dict(os.environ))


def test_edit_savings_counts_each_kind_of_edit():
    labels = np.zeros((1, 17, 3), dtype=np.float32)
    labels[0, :4] = [[100, 100, 2], [110, 100, 2], [120, 100, 1], [130, 100, 2]]
    pred = np.zeros((1, 17, 3), dtype=np.float32)
    area = np.array([10000.0])  # scale 100 px: joint 0 (nose, k=0.052) tolerates 5.2 px
    pred[0, 0] = [104, 100, 0.9]  # within the spread: no move
    pred[0, 1] = [140, 100, 0.9]  # 30 px off: moved
    pred[0, 2] = [120, 100, 0.1]  # under min_score: not offered, so added
    pred[0, 5] = [50, 50, 0.8]  # offered where nothing is labelled: deleted
    r = edit_savings(labels, pred, area, min_score=0.3)
    assert (r["no_move"], r["moved"], r["added"], r["deleted"], r["labelled_joints"]) == (1, 1, 2, 1, 4)
    assert r["share_no_move"] == 0.25 and r["edit_ratio"] == 1.0


def test_prelabel_writes_files_labelme_intake_accepts(thunder, shared_data, tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    for name in ("000000217285.jpg", "000000397133.jpg", "000000349860.jpg"):
        shutil.copy(shared_data / "coco-mini/val2017" / name, folder / name)
    (folder / "000000349860.json").write_text('{"an annotator": "was here"}')  # their work is kept
    done = posepipe("annotate", "prelabel", str(folder), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["files_written"] == 2 and result["kept_existing"] == ["000000349860.json"]
    assert (folder / "000000349860.json").read_text() == '{"an annotator": "was here"}'
    docs = [json.loads((folder / name).read_text()) for name in ("000000217285.json", "000000397133.json")]
    assert [d["imagePath"] for d in docs] == ["000000217285.jpg", "000000397133.jpg"]
    assert all(d["imageData"] is None for d in docs)
    assert sum(len({s["group_id"] for s in d["shapes"]}) for d in docs) == result["people"] >= 4
    points = [s for d in docs for s in d["shapes"] if s["shape_type"] == "point"]
    assert points and all(s["description"].startswith("model score ") for s in points)
    assert all(s["flags"]["check"] == (float(s["description"].split()[-1]) < 0.5) for s in points)
    (folder / "000000349860.json").unlink()
    # What the annotator receives ingests as it is: people, boxes, joints, nothing rejected.
    store = tmp_path / "store"
    done = posepipe("ingest", "labelme", str(folder), "--source", "labelme/pre", "--store", str(store), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["files_accepted"] == 2 and report["files_rejected"] == 0
    assert report["instances_accepted"] == result["people"]
    from posepipe.datasets.store import PoseStore

    kp = schema.keypoints_from_arrow(PoseStore(store).instances(["labelme/pre"]).column("keypoints"))
    assert int((kp[..., 2] == 2).sum()) == len(points)
