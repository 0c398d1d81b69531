"""Does the synthetic data help? ``posepipe experiment`` at a scale that fits 2 CPU cores in 40 min.

    .venv/bin/python bench/data_value.py [--steps 120] [--seeds 0,1,2] [--synth 400] [--lspet-train 1500]
                                         [--lspet-test 500] [--start movenet-lightning] [--keep DIR]

Real data: coco-mini train and LSPET images 1..``--lspet-train`` (sports: extreme poses);
synthetic: ``--synth`` images of the default synthetic source (``posepipe synth`` defaults,
256x256 Cycles). Every arm (real-only, the 1:3 mix with visibility-aware weights, the 1:3 mix
with uniform weights, synthetic pre-training then real fine-tuning) trains ``--steps`` steps
(8 x 2 processes a step) from ``--start`` with each seed, and is scored with ground-truth boxes
on sets never trained on: coco-mini val, LSPET's last ``--lspet-test`` images, the OCHuman and
Human-Art samples (tiny: noisy), each with its extreme-pose and heavily occluded subsets.

Prints the experiment's table (mean AP over seeds, bootstrap 95% intervals over people and
seeds, each arm's paired difference from real-only), the headline (the 1:3 mix on extreme
poses) and the wall time of each phase. With ``--keep DIR`` a second call reuses the store and
every finished run (the experiment resumes), so ``--bootstrap`` or the tables can be redone
without training again.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lspet import benchmark_store  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=120, help="optimizer steps per arm")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--arms", default="real-only,mix-visibility,mix-uniform,synth-then-real")
    p.add_argument("--start", default="movenet-lightning", help="starting weights (or scratch:tiny-up)")
    p.add_argument("--synth", type=int, default=400, help="synthetic images to render")
    p.add_argument("--lspet-train", type=int, default=1500, help="LSPET images 1..N are real train data")
    p.add_argument("--lspet-test", type=int, default=500, help="the last N of the 6,000 are held out")
    p.add_argument("--ratio", default="1:3")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--keep", type=Path, default=None, help="work folder to keep (and resume from)")
    args = p.parse_args()
    if args.lspet_train + args.lspet_test > 6000:
        sys.exit("--lspet-train + --lspet-test must be at most 6000")

    from posepipe.datasets.mix import MixConfig, build_manifest, write_mix
    from posepipe.synth.run import SynthOptions, synth_run
    from posepipe.training import experiment
    from posepipe.training.experiment_stats import markdown

    work_ctx = tempfile.TemporaryDirectory() if args.keep is None else None
    work = Path(work_ctx.name) if work_ctx else args.keep
    work.mkdir(parents=True, exist_ok=True)
    phases: dict[str, float] = {}
    t = time.perf_counter()
    store = benchmark_store(work, args.lspet_train, args.lspet_test)
    phases["ingest"] = time.perf_counter() - t

    t = time.perf_counter()
    synth = synth_run(store, SynthOptions(count=args.synth, seed=0, source="synth/bench", workers=2))
    phases["synth"] = time.perf_counter() - t
    print(f"synth/bench: {synth.rendered} rendered, {synth.unchanged} kept, {synth.instances} people", flush=True)

    config = MixConfig.from_params({"ratio": args.ratio, "val_fraction": 0.0, "test_fraction": 0.0}, "bench")
    write_mix(build_manifest(store, ["coco-train", "lspet-train"], ["synth/bench"], config), work / "mix")
    spec = experiment.ExperimentSpec.from_mapping({
        "manifest": str(work / "mix"), "out": str(work / "experiment"),
        "held_out": ["coco-val", "lspet-test", "ochuman", "humanart"], "arms": args.arms, "seeds": args.seeds,
        "steps": args.steps, "starts": [args.start], "ratio": args.ratio, "lr": args.lr, "batch_size": 8,
        "nproc": 2, "bootstrap": args.bootstrap,
    }, where="bench")
    t = time.perf_counter()
    done = []

    def on_run(run, result) -> None:
        done.append(result)
        scores = ", ".join(f"{k} {v['AP']:.3f}" for k, v in result["sets"].items())
        print(f"[{len(done)}/{len(experiment.plan(spec))}] {run.arm} seed {run.seed}: {result['wall_s']:.0f} s; AP {scores}",
              flush=True)

    results = experiment.run_direct(spec, on_run=on_run)
    phases["experiment"] = time.perf_counter() - t
    print()
    print(markdown(results))
    print("headline (the 1:3 mix with visibility-aware weights against real-only, extreme-pose subsets):")
    for h in results["headline"]:
        print(f"  {h['set']}: {h['people']} people, AP {h['AP']}, difference {h['dAP']:+.3f} {h['dAP_ci']} "
              f"-> {h['verdict']}")
    total = sum(phases.values())
    print(f"\nwall: {total / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()) +
          f"); training {results['train_seconds']:.0f} s in the batch loops over {len(results['runs'])} runs")
    print(json.dumps({"phases_s": phases, "headline": results["headline"]}))
    if work_ctx:
        work_ctx.cleanup()


if __name__ == "__main__":
    main()
