"""Wall time of each stage of the demo pipeline, called directly vs through the Prefect flow.

Both runs use the same settings (params.yaml's pipeline: section, shrunk by the flags below) in
fresh output folders, side by side in one process; the baseline is ``pipeline.run_direct``
(the same stage functions, no Prefect). Orchestration overhead = flow total - direct total,
target under 10% of the pipeline's time.

    .venv/bin/python bench/pipeline.py [--synth-images N] [--train-steps N] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--synth-images", type=int, default=None, help="default: the demo's (params.yaml)")
    ap.add_argument("--train-steps", type=int, default=None, help="default: the demo's (params.yaml)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each; the fastest total counts")
    args = ap.parse_args()

    os.chdir(REPO)  # params.yaml's paths are relative to the repository
    from posepipe.flows import pipeline

    import yaml

    work = Path(tempfile.mkdtemp(prefix="posepipe-bench-pipeline-"))
    # One slice at a time in both runs: the direct baseline has no fan-out, so parallel slices in
    # the flow would hide its overhead behind the speed-up (measure fan-out with --dask instead).
    doc = yaml.safe_load(args.params.read_text())
    doc["pipeline"]["synth"]["workers"] = 1
    args.params = work / "params.yaml"
    args.params.write_text(yaml.safe_dump(doc))
    runs: dict[str, list[dict]] = {"direct": [], "flow": []}
    try:
        for i in range(args.repeat):
            for kind in ("direct", "flow"):  # alternate, so drift hits both alike
                out = work / f"{kind}{i}"
                kwargs = dict(out=out, synth_images=args.synth_images, train_steps=args.train_steps)
                started = time.perf_counter()
                if kind == "direct":
                    summary = pipeline.run_direct(pipeline.PipelineConfig.load(args.params, **kwargs))
                else:
                    summary = pipeline.pipeline(params=str(args.params), out=str(out), synth_images=args.synth_images,
                                                train_steps=args.train_steps)
                summary["wall"] = time.perf_counter() - started
                runs[kind].append(summary)
                print(f"{kind} run {i + 1}: {summary['wall']:.1f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    best = {k: min(v, key=lambda s: s["wall"]) for k, v in runs.items()}
    stages = [s["stage"] for s in best["direct"]["stages"]]
    seconds = {k: {s["stage"]: s["seconds"] for s in v["stages"]} for k, v in best.items()}
    print(f"posepipe pipeline benchmark: synthetic images {args.synth_images or 'as params.yaml'}, "
          f"training steps {args.train_steps or 'as params.yaml'}, best of {args.repeat}")
    print(f"{'stage':<10}{'direct s':>10}{'flow s':>10}{'flow/direct':>13}")
    for stage in stages:
        d, f = seconds["direct"][stage], seconds["flow"].get(stage, 0.0)
        ratio = f"{f / d:.2f}" if d > 0.05 else "-"
        print(f"{stage:<10}{d:>10.2f}{f:>10.2f}{ratio:>13}")
    d, f = best["direct"]["wall"], best["flow"]["wall"]
    overhead = f - d
    print(f"{'total':<10}{d:>10.2f}{f:>10.2f}{f / d:>13.2f}")
    print(f"Prefect overhead: {overhead:.2f} s = {100 * overhead / d:.1f}% of the direct pipeline "
          f"(target < 10%: {'met' if overhead < 0.1 * d else 'NOT met'}); the flow's total includes starting "
          "the ephemeral API, its stage rows do not")
    return 0


if __name__ == "__main__":
    sys.exit(main())
