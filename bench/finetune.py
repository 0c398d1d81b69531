"""Fine-tuned vs zero-shot MoveNet Thunder on extreme poses, side by side in one run.

    .venv/bin/python bench/finetune.py [--lspet-train 2000] [--lspet-test 1000] [--steps 400] [--lr 2e-5]

Zero-shot: the pulled movenet-thunder as it is. Fine-tuned: ``posepipe train --init
movenet-thunder`` (torchrun, 2 processes, CenterNet loss, ``--augment light``) on coco-mini train
and the first ``--lspet-train`` LSPET images, real people only (ratio 0:1; ``--synth N`` renders
N synthetic people and mixes them 1:3 instead). Both are scored with ground-truth boxes by
posepipe's evaluation (pycocotools AP, PCK@0.1 of the box) on sets never trained on:

* LSPET's last ``--lspet-test`` images (sports: parkour, gymnastics, athletics);
* the OCHuman sample (heavy occlusion) and the Human-Art sample (acrobatics, art), tiny: noisy;
* coco-mini val (is the everyday accuracy kept?).

LSPET is read from its native ``joints.mat`` on the fly (posepipe has no LSP reader yet): its 12
limb joints map to COCO-17's (no face joints: v=0), flag 1 -> v=2 and flag 0 -> v=0 with the
coordinates dropped; the box is the 14 joints' extent (head top included) padded 10%, and the
area (OKS scale) is the box's. Prints the table, the training wall time and images/s.
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
    p.add_argument("--lspet-train", type=int, default=2000, help="LSPET images 1..N train")
    p.add_argument("--lspet-test", type=int, default=1000, help="the last N of the 6,000 are the held-out test set")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=8, help="per process (2 processes)")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--synth", type=int, default=0, help="render this many synthetic people and mix 1:3")
    p.add_argument("--alphas", default="0.5",
                   help="also score the fine-tuned weights interpolated with the zero-shot ones at these alphas "
                        "(posepipe interpolate, WiSE-FT; comma list, empty for none)")
    p.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    p.add_argument("--skip-train", action="store_true",
                   help="score the checkpoint a previous run left in --keep instead of training again")
    args = p.parse_args()
    if args.lspet_train + args.lspet_test > 6000:
        sys.exit("--lspet-train + --lspet-test must be at most 6000")

    from posepipe.datasets.mix import MixConfig, build_manifest, write_mix
    from posepipe.pretrained.runtime import load
    from posepipe.training import evaluate
    from posepipe.training.launch import LaunchConfig, run

    work_ctx = tempfile.TemporaryDirectory() if args.keep is None else None
    work = Path(work_ctx.name) if work_ctx else args.keep
    work.mkdir(parents=True, exist_ok=True)
    store = benchmark_store(work, args.lspet_train, args.lspet_test)

    sets = ["lspet-test", "ochuman", "humanart", "coco-val"]
    vals = {s: evaluate.validation_set(store, sources=[s]) for s in sets}
    zero = load("movenet-thunder")
    scores = {}
    t = time.perf_counter()
    for s in sets:
        scores[("zero-shot", s)] = evaluate.score(zero, store, vals[s], zero.input_size, work / "eval" / "zero" / s)
    zero_seconds = time.perf_counter() - t

    synth_sources = []
    ratio = "0:1"
    if args.synth:
        from posepipe.synth.run import SynthOptions, synth_run

        synth_run(store, SynthOptions(count=args.synth, seed=0, source="synth/bench", workers=2))
        synth_sources, ratio = ["synth/bench"], "1:3"
    config = MixConfig.from_params({"ratio": ratio, "val_fraction": 0.0, "test_fraction": 0.0}, "bench")
    result = build_manifest(store, ["coco-train", "lspet-train"], synth_sources, config)
    write_mix(result, work / "mix")
    out = work / "train"
    if args.skip_train and not (out / "train_result.json").is_file():
        sys.exit(f"--skip-train: no finished training in {out}")
    cfg = LaunchConfig(manifest=work / "mix", out=out, nproc=2, max_steps=args.steps, init="movenet-thunder",
                       train_args=["--batch-size", str(args.batch_size), "--ratio", ratio, "--lr", str(args.lr),
                                   "--augment", "light", "--workers", "1", "--val-sources", "coco-val",
                                   "--pck-instances", "16", "--no-eval"])
    started = time.perf_counter()
    if not args.skip_train and run(cfg) != 0:
        sys.exit("training failed")
    trained = json.loads((out / "train_result.json").read_text())
    if args.skip_train:  # the earlier run's wall time, or (runs before it was recorded) its batch-loop time
        wall = trained.get("wall_s") or trained["train_seconds"]
    else:
        wall = trained["wall_s"] = time.perf_counter() - started
        (out / "train_result.json").write_text(json.dumps(trained, indent=2))

    import torch

    from posepipe.training.export import load_model

    model, config_ = load_model(out / "checkpoint.pt")
    torch.set_num_threads(2)
    tuned = evaluate.torch_predictor(model)
    for s in sets:
        scores[("fine-tuned", s)] = evaluate.score(tuned, store, vals[s], config_.input_size, work / "eval" / "tuned" / s)
    from posepipe.training.interpolate import write

    alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
    for alpha in alphas:
        mixed, _ = load_model(write("movenet-thunder", out / "checkpoint.pt", alpha, work / f"wise-{alpha:g}.pt"))
        for s in sets:
            scores[(f"wise {alpha:g}", s)] = evaluate.score(evaluate.torch_predictor(mixed), store, vals[s],
                                                           config_.input_size, work / "eval" / f"wise-{alpha:g}" / s)

    print(f"\nMoveNet Thunder zero-shot vs fine-tuned ({args.steps} steps x {args.batch_size} x 2 processes, "
          f"lr {args.lr}, ratio {ratio}) on coco-mini train + LSPET 1..{args.lspet_train}; ground-truth boxes, flip test\n")
    print("| held-out set | people | zero-shot AP | fine-tuned AP | AP gain | zero-shot AP50 | fine-tuned AP50 | "
          "zero-shot PCK | fine-tuned PCK |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in sets:
        a, b = scores[("zero-shot", s)], scores[("fine-tuned", s)]
        print(f"| {s} | {a['num_instances']} | {a['AP']:.3f} | {b['AP']:.3f} | {b['AP'] - a['AP']:+.3f} | "
              f"{a['AP50']:.3f} | {b['AP50']:.3f} | {a['PCK']:.3f} | {b['PCK']:.3f} |")
    if alphas:
        print("\nInterpolated (posepipe interpolate: alpha x fine-tuned + (1 - alpha) x zero-shot), AP and gain over zero-shot:\n")
        print("| held-out set | " + " | ".join(f"alpha {a:g}" for a in alphas) + " |")
        print("| --- |" + " ---: |" * len(alphas))
        for s in sets:
            z = scores[("zero-shot", s)]["AP"]
            print(f"| {s} | " + " | ".join(f"{scores[(f'wise {a:g}', s)]['AP']:.3f} ({scores[(f'wise {a:g}', s)]['AP'] - z:+.3f})"
                                           for a in alphas) + " |")
    print(f"\ntraining: {wall:.0f} s wall for {trained['steps']} steps ({trained['images']} crops), "
          f"{trained['images_per_s']:.1f} images/s in the batch loops (2 processes, CPU); "
          f"zero-shot scoring of the four sets {zero_seconds:.0f} s")
    print(json.dumps({f"{k[0]}/{k[1]}": {m: v[m] for m in ("AP", "AP50", "PCK", "num_instances")}
                      for k, v in scores.items()} | {"train_wall_s": wall, "images_per_s": trained["images_per_s"]}))
    if work_ctx:
        work_ctx.cleanup()


if __name__ == "__main__":
    main()
