"""Benchmark: LabelMe folder intake vs only ``json.load``-ing the same files, same run.

Builds N LabelMe files (default 10,000), half with the image embedded as base64 ``imageData``,
half pointing at an image file beside them; each image is tiny and distinct, each file holds
one or two people with a person rectangle and up to 17 joints (some occluded). Then times:
  * baseline: ``json.load`` of every file (open, read, parse; nothing else)
  * posepipe: ``ingest_labelme`` (read, hash, validate every shape, decode/read and probe the
    image, store it in a shard, Parquet write with an atomic commit), as it runs by default (a
    pool of forked workers, one per core, for this many files) and in one process (workers=1)
and prints files/s for both and the ratios. Target: ratio <= 3. The pool needs idle cores: on
a machine busy with other work it gains little, so the one-process figure is printed too.

    .venv/bin/python bench/ingest_labelme.py [--files 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
from PIL import Image

from posepipe.annotation.intake import ingest_labelme
from posepipe.datasets.images import probe
from posepipe.datasets.schema import COCO17_JOINTS
from posepipe.datasets.store import PoseStore

WIDTH, HEIGHT = 48, 64


def build(root: Path, n_files: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n_files):
        pixels = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=70)
        img = buf.getvalue()
        shapes = []
        for g in range(1 + i % 2):
            x0, y0 = rng.uniform(0, WIDTH / 2), rng.uniform(0, HEIGHT / 2)
            w, h = rng.uniform(8, WIDTH / 2), rng.uniform(16, HEIGHT / 2)
            shapes.append({"label": "person", "points": [[x0, y0], [x0 + w, y0 + h]], "group_id": g,
                           "description": "", "shape_type": "rectangle", "flags": {"crowd": False}, "mask": None})
            v = rng.choice([0, 1, 2], size=17, p=[0.2, 0.2, 0.6])
            for j, name in enumerate(COCO17_JOINTS):
                if v[j]:
                    shapes.append({"label": name, "points": [[round(rng.uniform(x0, x0 + w), 1),
                                                              round(rng.uniform(y0, y0 + h), 1)]],
                                   "group_id": g, "description": "", "shape_type": "point",
                                   "flags": {"occluded": bool(v[j] == 1)}, "mask": None})
        embedded = i % 2 == 0
        name = f"{i:06d}.jpg"
        if not embedded:
            (root / name).write_bytes(img)
        doc = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": name,
               "imageData": base64.b64encode(img).decode() if embedded else None,
               "imageHeight": HEIGHT, "imageWidth": WIDTH}
        (root / f"{i:06d}.json").write_text(json.dumps(doc, indent=2))
    # As files in a real drop folder are, long written: the intake's settle check (a stat per
    # file) is timed, its waiting for fresh files is not.
    old = time.time() - 3600
    for path in root.iterdir():
        os.utime(path, (old, old))


def bare_parse(root: Path) -> int:
    n = 0
    for path in sorted(root.glob("*.json")):
        with open(path) as fh:
            json.load(fh)
        n += 1
    return n


def shared_floor(root: Path, store_root: Path) -> float:
    """Only the shared steps intake must take per file: read + parse, get the image bytes,
    ``images.probe`` and ``Transaction.put_image``. Shows how much of the time is not intake's own."""
    t = time.perf_counter()
    with PoseStore(store_root).transaction("floor") as tx:
        for path in sorted(root.glob("*.json")):
            doc = orjson.loads(path.read_bytes())
            img = base64.b64decode(doc["imageData"]) if doc["imageData"] else (root / doc["imagePath"]).read_bytes()
            info = probe(img)
            tx.put_image(img, info.sha256, info.format)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs of each")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "intake"
        t = time.perf_counter()
        build(root, args.files)
        print(f"built {args.files} LabelMe files ({sum(f.stat().st_size for f in root.iterdir()) / 1e6:.1f} MB "
              f"with images) in {time.perf_counter() - t:.1f} s")
        bare_parse(root)  # warm the page cache for both contenders
        os.chdir(tmp)
        base_times, ingest_times, serial_times = [], [], []
        for r in range(args.repeat):
            t = time.perf_counter()
            assert bare_parse(root) == args.files
            base_times.append(time.perf_counter() - t)
            store_root = Path(tmp) / f"store{r}"
            t = time.perf_counter()
            report = ingest_labelme(PoseStore(store_root), root, "bench")
            ingest_times.append(time.perf_counter() - t)
            assert report.files_accepted == args.files, report.summary()
            shutil.rmtree(store_root)
            t = time.perf_counter()
            report = ingest_labelme(PoseStore(store_root), root, "bench", workers=1)
            serial_times.append(time.perf_counter() - t)
            assert report.files_accepted == args.files, report.summary()
            shutil.rmtree(store_root)
        floor = min(shared_floor(root, Path(tmp) / f"floor{r}") for r in range(args.repeat))
        store = PoseStore(Path(tmp) / "store-rerun")
        ingest_labelme(store, root, "bench")
        t = time.perf_counter()
        rerun = ingest_labelme(store, root, "bench")
        rerun_time = time.perf_counter() - t
        assert rerun.files_unchanged == args.files
    base, ingest, serial = min(base_times), min(ingest_times), min(serial_times)
    print(f"json.load only : {base:7.2f} s  {args.files / base:9.0f} files/s")
    print(f"ingest_labelme : {ingest:7.2f} s  {args.files / ingest:9.0f} files/s  "
          f"({os.cpu_count()} cores; all runs {', '.join(f'{t:.2f}' for t in ingest_times)} s)")
    print(f"  one process  : {serial:7.2f} s  {args.files / serial:9.0f} files/s  = {serial / base:.2f}x json.load")
    print(f"shared steps only (parse, image bytes, images.probe, put_image): {floor:5.2f} s "
          f"= {floor / base:.2f}x json.load")
    print(f"re-run (all unchanged): {rerun_time:5.2f} s  {args.files / rerun_time:9.0f} files/s")
    print(f"ratio ingest / json.load = {ingest / base:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
