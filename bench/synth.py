"""Synthetic rendering throughput: images/minute at 256x256 with the default engine settings.

Prints, measured side by side in one run:
* images/minute with 1 worker and with 2 workers, and the speed-up 1 -> 2 (baseline: 1 worker);
* the same 1-worker run with the worker's numpy work done serially between render calls
  (``SynthOptions.pipeline=False``): the baseline for running it beside the render call;
* the share of each image's worker time spent outside Blender's render call (target < 10%),
  and the share of the whole run's wall time outside it (adds process start, Blender's import
  and the store's commit);
* where each image's time goes: on the worker's main thread (scene build, render call, index
  pass, visibility rays) and on its helper thread (scene sampling and posing; compositing,
  encoding, masks), which overlaps the render call unless serial.

And, for each body (``--body``: Anny people and the capsule mannequin; the default body first):
* images/minute of the 1-worker pipelined run next to the other body's, and each worker's start-up
  (Blender's import + building the stage, which loads Anny's model) and peak memory;
* the share of visible (v=2) keypoints on their own person's mask (target >= 99%);
* realism: MoveNet Thunder's keypoint AP on the rendered people (ground-truth boxes) next to its AP
  on coco-mini val, per pose family and visibility bucket (synth/realism.py; targets: >= 0.35 and
  >= 0.75x coco-mini val's).

Usage: .venv/bin/python bench/synth.py [--count 64] [--resolution 256x256] [--samples 16]
       [--body anny --body mannequin] [--no-realism]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from posepipe.datasets.store import PoseStore
from posepipe.synth.core.scene import SceneConfig
from posepipe.synth.run import SynthOptions, parse_resolution, render_threads, synth_run

SHARED = Path(os.environ.get("POSEPIPE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def measure(count: int, workers: int, width: int, height: int, samples: int, engine: str,
            pipeline: bool = True, body: str = "anny", store: PoseStore | None = None) -> dict:
    """One run into a fresh store, or into ``store`` (kept) as source synth/bench-<body>."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = SynthOptions(count=count, seed=2024, width=width, height=height, samples=samples, engine=engine,
                            workers=workers, pipeline=pipeline, source=f"synth/bench-{body}",
                            config=SceneConfig(width=width, height=height, body=body))
        t0 = time.perf_counter()
        r = synth_run(store or PoseStore(Path(tmp) / "store"), opts)
        wall = time.perf_counter() - t0
    return {"workers": workers, "pipeline": pipeline, "wall": wall, "per_minute": 60 * r.rendered / wall,
            "render": r.render_seconds, "unit": r.unit_seconds, "outside_unit": 1 - r.render_seconds / r.unit_seconds,
            "outside_wall": 1 - r.render_seconds / (wall * workers), "failed": len(r.failed),
            "threads": render_threads(opts), "phases": r.phase_seconds, "n": r.rendered, "body": body,
            "report": r.report}


def _ms(seconds: float, n: int) -> str:
    return f"{seconds / max(1, n) * 1000:.1f} ms"


def _ap(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--resolution", default="256x256")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--engine", default="cycles")
    ap.add_argument("--body", action="append", choices=("anny", "mannequin"),
                    help="bodies to measure (repeatable; default both, the default body first)")
    ap.add_argument("--no-realism", action="store_true", help="skip the pretrained-model realism score")
    a = ap.parse_args()
    w, h = parse_resolution(a.resolution)
    default = SceneConfig().body
    bodies = a.body or [default, *(b for b in ("anny", "mannequin") if b != default)]
    print(f"synth bench: {a.count} images {w}x{h}, {a.engine}, {a.samples} samples; bodies {', '.join(bodies)}")
    with tempfile.TemporaryDirectory() as keep:
        store = PoseStore(Path(keep) / "store")
        if not a.no_realism:
            from posepipe.datasets.coco import ingest_coco

            mini = SHARED / "coco-mini"
            ingest_coco(store, mini / "annotations/person_keypoints_val2017.json", mini / "val2017", "coco-val")
        bench(a, w, h, bodies, store)


def bench(a, w: int, h: int, bodies: list[str], store: PoseStore) -> None:
    first = bodies[0]
    rows = [measure(a.count, 1, w, h, a.samples, a.engine, pipeline=False, body=first),
            measure(a.count, 1, w, h, a.samples, a.engine, body=first, store=store),
            measure(a.count, 2, w, h, a.samples, a.engine, body=first)]
    others = [measure(a.count, 1, w, h, a.samples, a.engine, body=b, store=store) for b in bodies[1:]]
    for r in rows + others:
        mode = "helper thread beside the render call" if r["pipeline"] else "serial (numpy work between renders)"
        print(f"  {r['body']}, workers={r['workers']} x {r['threads']} threads, {mode}: {r['per_minute']:.1f} images/min "
              f"(wall {r['wall']:.2f} s, render call {r['render']:.2f} s); outside the render call: "
              f"{r['outside_unit']:.1%} of the worker's time per image, {r['outside_wall']:.1%} of the run's wall; "
              f"failed {r['failed']}")
        ph, n = r["phases"], r["n"]
        main_parts = [("scene build", ph.get("build", 0)), ("render call", ph.get("render", 0)),
                      ("index pass read", ph.get("index", 0)), ("visibility rays", ph.get("annotate", 0))]
        rest = r["unit"] - sum(v for _, v in main_parts)
        print("    main thread per image: " + ", ".join(f"{k} {_ms(v, n)}" for k, v in main_parts)
              + f", other {_ms(rest, n)}")
        print(f"    helper work per image: scene sampling + posing {_ms(ph.get('prepare', 0), n)}, composite + encode"
              f" + masks {_ms(ph.get('encode_seconds', 0), n)}"
              + (" (beside the render call)" if r["pipeline"] else " (inside 'other' above)"))
        print(f"    once per worker: setup {ph.get('worker_setup_seconds', 0) / r['workers'] * 1000:.0f} ms "
              f"(Blender's import, building the stage {ph.get('stage_seconds', 0) / r['workers'] * 1000:.0f} ms), "
              f"peak memory {ph.get('worker_rss_mb', 0) / r['workers']:.0f} MB")
        m = r["report"]["mask_check"]
        if m["v2"]:
            print(f"    v=2 keypoints on their own mask: {m['on_own_mask']}/{m['v2']} ({m['share']:.2%})")
    serial, one, two = rows
    print(f"  helper thread vs serial, 1 worker: {one['per_minute'] / serial['per_minute']:.2f}x images/min "
          f"(baseline: serial, same run)")
    print(f"  speed-up 1 -> 2 workers: {two['per_minute'] / one['per_minute']:.2f}x (baseline: 1 worker, same run)")
    for r in others:
        print(f"  {first} vs {r['body']}, 1 worker pipelined: {one['per_minute'] / r['per_minute']:.2f}x images/min "
              f"(baseline: {r['body']}, same run)")
    if a.no_realism:
        return
    from posepipe.synth.realism import realism

    for body in bodies:
        res = realism(store, f"synth/bench-{body}", ["coco-val"])
        s, real = res["synthetic"], res["real"]["coco-val"]
        print(f"  realism ({res['model']}, ground-truth boxes, no flip test), {body}: AP {_ap(s['AP'])} on "
              f"{s['instances']} people vs coco-mini val AP {_ap(real['AP'])} on {real['instances']} "
              f"({_ap(res['ratio']['coco-val'])}x); PCK {s['PCK']:.3f} vs {real['PCK']:.3f}")
        for title, key in (("per pose family", "by_family"), ("per visible joints", "by_visibility")):
            print(f"    {title}: " + ", ".join(f"{k} {_ap(v['AP'])} ({v['instances']})" for k, v in s[key].items()))


if __name__ == "__main__":
    main()
