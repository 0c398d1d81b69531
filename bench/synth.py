"""Synthetic rendering throughput: images/minute at 256x256 with the default engine settings.

Prints, measured side by side in one run:
* images/minute with 1 worker and with 2 workers, and the speed-up 1 -> 2 (baseline: 1 worker);
* the share of each image's worker time spent outside Blender's render call (target < 10%),
  and the share of the whole run's wall time outside it (adds process start and store writes);
* the per-image phase breakdown, and each worker's one-off setup (Blender import, PIL and
  pycocotools imports, building the scene stage), which the per-image share leaves out and the
  wall share includes; and the per-image share with the stage build and library imports spread
  over the run's images (they used to be timed inside the first image).

Usage: .venv/bin/python bench/synth.py [--count 16] [--resolution 256x256] [--samples 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from posepipe.datasets.store import PoseStore
from posepipe.synth.core.scene import SceneConfig
from posepipe.synth.run import SynthOptions, parse_resolution, render_threads, synth_run


def measure(count: int, workers: int, width: int, height: int, samples: int, engine: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        opts = SynthOptions(count=count, seed=2024, width=width, height=height, samples=samples, engine=engine,
                            workers=workers, config=SceneConfig(width=width, height=height))
        t0 = time.perf_counter()
        r = synth_run(PoseStore(Path(tmp) / "store"), opts)
        wall = time.perf_counter() - t0
    stage = r.phase_seconds.get("stage_seconds", 0.0)
    return {"workers": workers, "wall": wall, "per_minute": 60 * r.rendered / wall, "render": r.render_seconds,
            "unit": r.unit_seconds, "outside_unit": 1 - r.render_seconds / r.unit_seconds,
            "outside_unit_stage": 1 - r.render_seconds / (r.unit_seconds + stage),
            "outside_wall": 1 - r.render_seconds / (wall * workers), "failed": len(r.failed),
            "threads": render_threads(opts), "phases": r.phase_seconds, "n": r.rendered}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--resolution", default="256x256")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--engine", default="cycles")
    a = ap.parse_args()
    w, h = parse_resolution(a.resolution)
    print(f"synth bench: {a.count} images {w}x{h}, {a.engine}, {a.samples} samples")
    rows = [measure(a.count, n, w, h, a.samples, a.engine) for n in (1, 2)]
    for r in rows:
        print(f"  workers={r['workers']} x {r['threads']} threads: {r['per_minute']:.1f} images/min "
              f"(wall {r['wall']:.2f} s, render call {r['render']:.2f} s); outside render: {r['outside_unit']:.1%} "
              f"of worker time per image, {r['outside_wall']:.1%} of wall; failed {r['failed']}")
        # Where each image's worker time goes (the profile of the per-image loop).
        ph, unit = r["phases"], r["unit"]
        parts = [("scene build + posing", ph.get("build", 0)), ("render call", ph.get("render", 0)),
                 ("index pass read", ph.get("index", 0)), ("visibility rays", ph.get("annotate", 0)),
                 ("composite + encode + masks", ph.get("encode_seconds", 0))]
        rest = unit - sum(v for _, v in parts)
        print("    per image: " + ", ".join(f"{k} {v / max(1, r['n']) * 1000:.0f} ms ({v / unit:.1%})"
                                            for k, v in parts + [("other", rest)]))
        print(f"    once per worker: setup {ph.get('worker_setup_seconds', 0) / r['workers'] * 1000:.0f} ms, of which "
              f"stage build + library imports {ph.get('stage_seconds', 0) / r['workers'] * 1000:.0f} ms; with the "
              f"latter spread over this run's images (where it used to be timed), outside render is "
              f"{r['outside_unit_stage']:.1%} per image")
    print(f"  speed-up 1 -> 2 workers: {rows[1]['per_minute'] / rows[0]['per_minute']:.2f}x "
          f"(baseline: 1 worker, same run)")


if __name__ == "__main__":
    main()
