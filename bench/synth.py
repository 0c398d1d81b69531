"""Synthetic rendering throughput: images/minute at 256x256 with the default engine settings.

Prints, measured side by side in one run:
* images/minute with 1 worker and with 2 workers, and the speed-up 1 -> 2 (baseline: 1 worker);
* the share of each image's worker time spent outside Blender's render call (target < 10%),
  and the share of the whole run's wall time outside it (adds process start and store writes).

Usage: .venv/bin/python bench/synth.py [--count 12] [--resolution 256x256] [--samples 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from posepipe.datasets.store import PoseStore
from posepipe.synth.core.scene import SceneConfig
from posepipe.synth.run import SynthOptions, parse_resolution, synth_run


def measure(count: int, workers: int, width: int, height: int, samples: int, engine: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        opts = SynthOptions(count=count, seed=2024, width=width, height=height, samples=samples, engine=engine,
                            workers=workers, config=SceneConfig(width=width, height=height))
        t0 = time.perf_counter()
        r = synth_run(PoseStore(Path(tmp) / "store"), opts)
        wall = time.perf_counter() - t0
    return {"workers": workers, "wall": wall, "per_minute": 60 * r.rendered / wall, "render": r.render_seconds,
            "unit": r.unit_seconds, "outside_unit": 1 - r.render_seconds / r.unit_seconds,
            "outside_wall": 1 - r.render_seconds / (wall * workers), "failed": len(r.failed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=12)
    ap.add_argument("--resolution", default="256x256")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--engine", default="cycles")
    a = ap.parse_args()
    w, h = parse_resolution(a.resolution)
    print(f"synth bench: {a.count} images {w}x{h}, {a.engine}, {a.samples} samples")
    rows = [measure(a.count, n, w, h, a.samples, a.engine) for n in (1, 2)]
    for r in rows:
        print(f"  workers={r['workers']}: {r['per_minute']:.1f} images/min (wall {r['wall']:.2f} s, "
              f"render call {r['render']:.2f} s); outside render: {r['outside_unit']:.1%} of worker time per "
              f"image, {r['outside_wall']:.1%} of wall; failed {r['failed']}")
    print(f"  speed-up 1 -> 2 workers: {rows[1]['per_minute'] / rows[0]['per_minute']:.2f}x "
          f"(baseline: 1 worker, same run)")


if __name__ == "__main__":
    main()
