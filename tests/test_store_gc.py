"""``posepipe gc``: unreferenced shards go, shared and partly used ones stay, every image still reads."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from posepipe.datasets.coco import ingest_coco
from posepipe.datasets.gc import collect_garbage
from posepipe.datasets.store import PoseStore


@pytest.fixture(scope="module")
def train(shared_data) -> tuple[dict, Path]:
    src = shared_data / "coco-mini"
    return json.loads((src / "annotations/person_keypoints_train2017.json").read_text()), src / "train2017"


def _subset(doc: dict, images: slice) -> dict:
    """The file with only these images and their annotations."""
    out = dict(doc, images=doc["images"][images])
    ids = {im["id"] for im in out["images"]}
    out["annotations"] = [a for a in doc["annotations"] if a["image_id"] in ids]
    return out


def _ingest(store: PoseStore, path: Path, doc: dict, images: Path, source: str) -> None:
    path.write_text(json.dumps(doc))
    report = ingest_coco(store, path, images, source)
    assert report.images_accepted == len(doc["images"])


def _shards(store: PoseStore) -> set[str]:
    return {f"{p.parent.name}/{p.name}" for p in store.shard_dir.glob("*/*.tar")}


def _all_images_read(store: PoseStore) -> int:
    rows = store.images().to_pylist()
    for row in rows:
        data = store.read_image(row["shard"], row["offset"], row["num_bytes"])
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
    return len(rows)


def test_a_replaced_file_leaves_its_old_shard_to_gc(tmp_path, train):
    doc, images = train
    store = PoseStore(tmp_path / "store")
    ann = tmp_path / "ann.json"
    _ingest(store, ann, _subset(doc, slice(0, 4)), images, "src")
    first = _shards(store)
    _ingest(store, ann, _subset(doc, slice(4, 8)), images, "src")  # same file, other images
    assert len(_shards(store)) == 2 and first <= _shards(store)

    dry = collect_garbage(store, dry_run=True)
    assert dry.deleted == sorted(first) and dry.deleted_bytes > 0 and _shards(store) > first
    report = collect_garbage(store)
    assert report.deleted == sorted(first) and report.shards == 2
    assert not (_shards(store) & first) and _all_images_read(store) == 4
    again = collect_garbage(store)
    assert again.deleted == [] and again.partly_dead == 0 and again.shards == 1


def test_a_shard_another_source_still_uses_stays(tmp_path, train):
    doc, images = train
    store = PoseStore(tmp_path / "store")
    _ingest(store, tmp_path / "a.json", _subset(doc, slice(0, 4)), images, "a")
    # Same images in source b: stored once, so b's rows point into a's shard.
    _ingest(store, tmp_path / "b.json", _subset(doc, slice(0, 4)), images, "b")
    shared = _shards(store)
    assert len(shared) == 1
    _ingest(store, tmp_path / "a.json", _subset(doc, slice(4, 6)), images, "a")
    report = collect_garbage(store)
    assert report.deleted == [] and shared <= _shards(store)
    assert _all_images_read(store) == 6


def test_a_partly_used_shard_is_kept_and_its_dead_bytes_reported(tmp_path, train):
    doc, images = train
    store = PoseStore(tmp_path / "store")
    ann = tmp_path / "ann.json"
    _ingest(store, ann, _subset(doc, slice(0, 4)), images, "src")
    _ingest(store, ann, _subset(doc, slice(2, 4)), images, "src")  # two of the four images stay
    gone = sum((images / im["file_name"]).stat().st_size for im in doc["images"][0:2])
    report = collect_garbage(store)
    assert report.deleted == [] and report.partly_dead == 1 and report.dead_bytes_kept == gone
    assert _all_images_read(store) == 2


def test_crashed_writers_temporary_files_go(tmp_path, train):
    doc, images = train
    store = PoseStore(tmp_path / "store")
    _ingest(store, tmp_path / "ann.json", _subset(doc, slice(0, 2)), images, "src")
    (folder,) = [p for p in store.shard_dir.iterdir() if p.is_dir()]
    (folder / ".tmp-deadbeef.tar").write_bytes(b"half a shard")
    report = collect_garbage(store)
    assert report.temporary == [f"{folder.name}/.tmp-deadbeef.tar"] and not (folder / ".tmp-deadbeef.tar").exists()
    assert _all_images_read(store) == 2


def test_gc_cli_json(tmp_path, train):
    doc, images = train
    store = PoseStore(tmp_path / "store")
    ann = tmp_path / "ann.json"
    _ingest(store, ann, _subset(doc, slice(0, 2)), images, "src")
    _ingest(store, ann, _subset(doc, slice(2, 4)), images, "src")
    cmd = [sys.executable, "-m", "posepipe.flows", "gc", "--store", str(tmp_path / "store"), "--json"]
    dry = subprocess.run(cmd + ["--dry-run"], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["dry_run"] is True and len(json.loads(dry.stdout)["deleted"]) == 1
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0 and len(json.loads(done.stdout)["deleted"]) == 1
    assert _all_images_read(store) == 2
