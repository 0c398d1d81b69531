"""``make demo``: the main job (``posepipe run``) on the bundled defaults of params.yaml's pipeline: section.

It ingests coco-mini train and the LabelMe samples from ../shared/data, renders a small
synthetic batch, mixes 1:3, makes DVC release "demo" of that data, trains a few steps with 2 DDP
processes, exports INT8, and prints the summary and the report path. Outputs go to out/demo (its own store inside).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSEPIPE_SHARED_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "out" / "demo"


def main() -> int:
    if not (SHARED / "coco-mini").is_dir():
        sys.stderr.write(f"posepipe demo: error: bundled data not found at {SHARED}; "
                         "set POSEPIPE_SHARED_DATA to the folder holding coco-mini/ (or edit pipeline.ingest "
                         "in params.yaml to point at a full COCO download)\n")
        return 2
    if OUT.exists():
        shutil.rmtree(OUT)
    params = REPO / "params.yaml"
    expected = REPO.parent / "shared" / "data"
    if SHARED.resolve() != expected.resolve():
        # params.yaml names ../shared/data; a different POSEPIPE_SHARED_DATA gets a patched copy.
        text = params.read_text().replace("../shared/data", str(SHARED))
        OUT.mkdir(parents=True)
        params = OUT / "params.yaml"
        params.write_text(text)
    # The run folder becomes a git+DVC data repository holding release "demo" (tag dataset/demo).
    cmd = [sys.executable, "-m", "posepipe.flows", "run", "--config", str(params), "--out", str(OUT),
           "--release", "demo"]
    print(f"$ posepipe run --config {params.relative_to(REPO)} --out {OUT.relative_to(REPO)} --release demo",
          flush=True)
    started = time.perf_counter()
    code = subprocess.run(cmd, cwd=REPO).returncode
    if code:
        sys.stderr.write(f"posepipe demo: posepipe run failed with exit code {code}\n")
        return code
    print(f"demo finished in {time.perf_counter() - started:.0f}s; open {OUT / 'report.html'}; "
          f"the data is release 'demo': posepipe pull demo --repo {OUT.relative_to(REPO)} --to DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
