"""Benchmark: versioning 100,000 small images as posepipe shards vs a plain ``dvc add`` folder.

Both layouts go through the same real DVC steps, side by side in one run, each in its own git
repository with its own local remote:

    baseline (plain folder): dvc add data/images (100k loose files) -> dvc push -> git clone -> dvc pull
    posepipe (shards):       pack into the store (tar shards + Parquet) -> dvc add data/store -> push -> clone -> pull

Prints each step's time, the end-to-end totals and their ratio (target: shards <= 0.1 x plain).

    .venv/bin/python bench/version.py [--images 100000]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from posepipe.datasets import records
from posepipe.datasets.store import PoseStore


def make_images(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def run(args: list[str], cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True)


def dvc(cwd: Path, *args: str) -> None:
    run([sys.executable, "-m", "dvc", *args], cwd)


def new_repo(path: Path, remote: Path) -> None:
    path.mkdir(parents=True)
    run(["git", "init", "-q", "-b", "main"], path)
    run(["git", "config", "user.email", "bench@example.com"], path)
    run(["git", "config", "user.name", "bench"], path)
    dvc(path, "init", "-q")
    dvc(path, "config", "core.analytics", "false")
    remote.mkdir(parents=True)
    dvc(path, "remote", "add", "-d", "local", str(remote))


def timed(label: str, times: dict, fn) -> None:
    t = time.perf_counter()
    fn()
    times[label] = time.perf_counter() - t
    print(f"    {label:28s} {times[label]:8.1f}s", flush=True)


def version_and_pull(root: Path, name: str, target: str, prepare) -> dict:
    repo, remote, clone = root / f"{name}-repo", root / f"{name}-remote", root / f"{name}-clone"
    new_repo(repo, remote)
    times: dict[str, float] = {}
    print(f"  {name}:")
    timed("write data", times, lambda: prepare(repo))
    timed(f"dvc add {target}", times, lambda: dvc(repo, "add", target))

    def commit_and_push():
        run(["git", "add", "-A"], repo)
        run(["git", "commit", "-qm", "data"], repo)
        dvc(repo, "push")

    timed("git commit + dvc push", times, commit_and_push)
    timed("git clone + dvc pull", times, lambda: (run(["git", "clone", "-q", str(repo), str(clone)], root),
                                                  dvc(clone, "pull")))
    times["versioning total"] = sum(v for k, v in times.items() if k != "write data")
    times["end to end"] = sum(v for k, v in times.items() if k != "versioning total")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    args = ap.parse_args()
    images = make_images(args.images)
    print(f"{len(images)} images, {sum(map(len, images)) / 1e6:.1f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def loose(repo: Path) -> None:
            folder = repo / "data/images"
            folder.mkdir(parents=True)
            for i, data in enumerate(images):
                (folder / f"{i:07d}.png").write_bytes(data)

        def shards(repo: Path) -> None:
            store = PoseStore(repo / "data/store")
            rows = []
            with store.transaction("bench") as tx:
                for i, data in enumerate(images):
                    sha = hashlib.sha256(data).hexdigest()
                    tx.put_image(data, sha, "png")
                    rows.append({"image_id": sha[:16], "source": "bench", "file_name": f"{i:07d}.png",
                                 "width": 8, "height": 8, "sha256": sha, "format": "png", "num_bytes": len(data),
                                 "source_file": "bench", "record_index": i})
                tx.replace_file("bench", {"images": records.images_table(rows)})
            (repo / "data/store/.lock").unlink(missing_ok=True)

        plain = version_and_pull(root, "plain folder", "data/images", loose)
        shutil.rmtree(root / "plain folder-repo")
        ours = version_and_pull(root, "posepipe shards", "data/store", shards)
        pulled = PoseStore(root / "posepipe shards-clone/data/store")
        first = pulled.images().slice(0, 1).to_pylist()[0]
        assert pulled.read_image(first["shard"], first["offset"], first["num_bytes"]) == images[0]
    print()
    for key in ("versioning total", "end to end"):
        ratio = ours[key] / plain[key]
        print(f"{key:18s} plain folder {plain[key]:8.1f}s   shards {ours[key]:8.1f}s   ratio {ratio:.3f}")
    ratio = ours["end to end"] / plain["end to end"]
    print(f"target: shards end to end <= 0.1 x plain folder: {'met' if ratio <= 0.1 else 'NOT met'} ({ratio:.3f})")


if __name__ == "__main__":
    main()
