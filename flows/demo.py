"""``make demo``: the main job on the bundled defaults, as the CLI commands a person would run.

Until the Prefect ``pipeline`` flow exists this runs the stages that exist, in order, each as a
``posepipe`` command, and stops at the first failure with its reason.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSEPIPE_SHARED_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "out" / "demo"
STORE = OUT / "store"


def stages() -> list[tuple[str, list[str]]]:
    mini = SHARED / "coco-mini"
    pose = SHARED / "pose-samples"
    return [
        ("ingest coco-mini train", ["ingest", "coco", str(mini / "annotations/person_keypoints_train2017.json"),
                                    "--images", str(mini / "train2017"), "--source", "coco-train", "--split", "train"]),
        ("ingest coco-mini val", ["ingest", "coco", str(mini / "annotations/person_keypoints_val2017.json"),
                                  "--images", str(mini / "val2017"), "--source", "coco-val", "--split", "val"]),
        ("ingest CrowdPose sample", ["ingest", "coco", str(pose / "crowdpose/test_crowdpose.json"),
                                     "--images", str(pose / "crowdpose"), "--source", "crowdpose"]),
        ("ingest OCHuman sample", ["ingest", "coco", str(pose / "ochuman/test_ochuman.json"),
                                   "--images", str(pose / "ochuman"), "--source", "ochuman"]),
        ("store statistics", ["stats"]),
        ("export COCO json", ["export", "coco", "--source", "coco-val", "--out", str(OUT / "coco-val.json")]),
    ]


def main() -> int:
    if not (SHARED / "coco-mini").is_dir():
        sys.stderr.write(f"posepipe demo: error: bundled data not found at {SHARED}; "
                         "set POSEPIPE_SHARED_DATA to the folder holding coco-mini/\n")
        return 2
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    started = time.perf_counter()
    for title, args in stages():
        cmd = [sys.executable, "-m", "posepipe.flows", *args, "--store", str(STORE)]
        print(f"\n== {title}\n$ posepipe {' '.join(shlex.quote(a) for a in args)} --store {STORE}", flush=True)
        t = time.perf_counter()
        result = subprocess.run(cmd, cwd=REPO)
        if result.returncode != 0:
            sys.stderr.write(f"posepipe demo: stage '{title}' failed with exit code {result.returncode}\n")
            return result.returncode
        print(f"   ({time.perf_counter() - t:.1f}s)")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f}s; store at {STORE}, outputs in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
