"""Round trip, idempotency, content de-duplication, atomic commits, and plain-tool readability."""

from __future__ import annotations

import hashlib
import json
import tarfile

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from posepipe.datasets import schema
from posepipe.datasets.coco import ingest_coco
from posepipe.datasets.coco_export import export_coco
from posepipe.datasets.store import PoseStore


def _by_id(items):
    return {x["id"]: x for x in items}


def test_coco_round_trip_is_exact(tmp_path, coco_store, shared_data):
    original = json.loads((shared_data / "coco-mini/annotations/person_keypoints_train2017.json").read_text())
    out = tmp_path / "export.json"
    report = export_coco(coco_store, ["coco-train"], out, images_dir=tmp_path / "images")
    assert not report.renumbered
    exported = json.loads(out.read_text())
    orig_images, exp_images = _by_id(original["images"]), _by_id(exported["images"])
    assert orig_images.keys() == exp_images.keys()
    for i, im in orig_images.items():
        assert {k: exp_images[i][k] for k in im} == im  # every original image field, unchanged
    orig_anns, exp_anns = _by_id(original["annotations"]), _by_id(exported["annotations"])
    assert orig_anns.keys() == exp_anns.keys()
    for i, a in orig_anns.items():
        e = exp_anns[i]
        for key in ("image_id", "keypoints", "bbox", "area", "iscrowd", "num_keypoints", "segmentation", "category_id"):
            assert e[key] == a[key], (i, key)
    assert exported["categories"][0]["keypoints"] == original["categories"][0]["keypoints"]
    # Images come back byte-identical under their file_name.
    for im in original["images"][:5]:
        assert (tmp_path / "images" / im["file_name"]).read_bytes() == (
            shared_data / "coco-mini/train2017" / im["file_name"]).read_bytes()
    # pycocotools loads it and COCOeval runs: the ground truth scored against itself is perfect.
    gt = COCO(str(out))
    results = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in exported["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]
    ]
    ev = COCOeval(gt, gt.loadRes(results), iouType="keypoints")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_fractional_keypoints_round_trip_at_float32(tmp_path, store, shared_data):
    pose = shared_data / "pose-samples"
    ingest_coco(store, pose / "humanart/test_humanart.json", pose / "humanart", "ha")
    export_coco(store, ["ha"], tmp_path / "out.json")
    original = _by_id(json.loads((pose / "humanart/test_humanart.json").read_text())["annotations"])
    for a in json.loads((tmp_path / "out.json").read_text())["annotations"]:
        expected = np.asarray(original[a["id"]]["keypoints"], dtype=np.float32)
        assert np.array_equal(np.asarray(a["keypoints"], dtype=np.float32), expected)


def test_reingest_same_file_adds_nothing(coco_store, shared_data):
    mini = shared_data / "coco-mini"
    tables = sorted((coco_store.root / "tables").rglob("*.parquet"))
    before = {p: p.read_bytes() for p in tables}
    shards_before = sorted(str(p) for p in coco_store.shard_dir.rglob("*"))
    report = ingest_coco(coco_store, mini / "annotations/person_keypoints_train2017.json", mini / "train2017", "coco-train")
    assert report.unchanged and report.annotations_accepted == 172
    assert {p: p.read_bytes() for p in tables} == before
    assert sorted(str(p) for p in coco_store.shard_dir.rglob("*")) == shards_before


def test_changed_record_replaces_its_earlier_version(tmp_path, store, shared_data):
    mini = shared_data / "coco-mini"
    doc = json.loads((mini / "annotations/person_keypoints_train2017.json").read_text())
    path = tmp_path / "train.json"
    path.write_text(json.dumps(doc))
    ingest_coco(store, path, mini / "train2017", "c")
    shards_before = set(store.shard_dir.rglob("*"))
    target = next(a for a in doc["annotations"] if a["num_keypoints"] > 0)
    target["bbox"] = [target["bbox"][0] + 1] + target["bbox"][1:]
    removed = doc["annotations"].pop(-1)
    path.write_text(json.dumps(doc))
    report = ingest_coco(store, path, mini / "train2017", "c")
    assert not report.unchanged
    inst = {r["source_annotation_id"]: r for r in store.instances().to_pylist()}
    assert len(inst) == 171 and removed["id"] not in inst
    assert inst[target["id"]]["bbox"][0] == pytest.approx(target["bbox"][0])
    assert store.batches().num_rows == 1  # the file's batch was replaced, not appended
    assert set(store.shard_dir.rglob("*")) == shards_before  # images already stored: no new shard


def test_images_are_deduplicated_by_content(store, shared_data):
    pose = shared_data / "pose-samples"
    ingest_coco(store, pose / "coco/test_coco.json", pose / "coco", "a")
    ingest_coco(store, pose / "halpe/test_halpe.json", pose / "coco", "b")  # same four images
    ids_a = set(store.images(["a"]).column("image_id").to_pylist())
    ids_b = set(store.images(["b"]).column("image_id").to_pylist())
    assert ids_a == ids_b and len(ids_a) == 4
    members = []
    for shard in store.shard_dir.rglob("*.tar"):
        with tarfile.open(shard) as tar:
            members += tar.getnames()
    assert len(members) == 4
    for im in store.images().to_pylist():
        data = store.read_image(im["shard"], im["offset"], im["num_bytes"])
        assert hashlib.sha256(data).hexdigest() == im["sha256"]


def test_failed_transaction_leaves_store_unchanged(coco_store):
    before = {p: p.read_bytes() for p in (coco_store.root / "tables").rglob("*.parquet")}
    with pytest.raises(RuntimeError, match="boom"):
        with coco_store.transaction("coco-train") as tx:
            tx.put_image(b"not really an image", "ab" * 32, "png")
            tx.remove_file(tx.known_files()[0])
            raise RuntimeError("boom")
    assert {p: p.read_bytes() for p in (coco_store.root / "tables").rglob("*.parquet")} == before
    assert not list(coco_store.shard_dir.rglob(".tmp-*"))


def test_crash_after_journal_is_rolled_forward(coco_store):
    src = coco_store.source_dir("coco-train")
    inst = pq.read_table(src / "instances.parquet")
    smaller = inst.slice(0, 10)
    # Simulate a writer that died after writing its pending file and journal, before renaming.
    pq.write_table(smaller, src / ".instances.parquet.pending")
    (src / ".commit.json").write_text(json.dumps(["instances"]))
    assert PoseStore(coco_store.root).instances(["coco-train"]).num_rows == 10  # readers see the commit
    with PoseStore(coco_store.root).transaction("other"):
        pass  # the next writer finishes it
    assert not (src / ".commit.json").exists()
    assert pq.read_table(src / "instances.parquet").num_rows == 10


def test_a_new_source_whose_first_commit_crashed_after_its_journal_is_read(coco_store):
    src = coco_store.source_dir("fresh")
    src.mkdir(parents=True)
    for name in ("images", "instances", "rejects", "batches"):
        pq.write_table(pq.read_table(coco_store.source_dir("coco-val") / f"{name}.parquet"),
                       src / f".{name}.parquet.pending")
    (src / ".commit.json").write_text(json.dumps(["images", "instances", "rejects", "batches"]))
    reader = PoseStore(coco_store.root)
    assert "fresh" in reader.sources() and reader.instances(["fresh"]).num_rows == 118


def test_crash_before_journal_is_discarded(coco_store):
    src = coco_store.source_dir("coco-train")
    pq.write_table(pq.read_table(src / "instances.parquet").slice(0, 3), src / ".instances.parquet.pending")
    assert PoseStore(coco_store.root).instances(["coco-train"]).num_rows == 172
    with PoseStore(coco_store.root).transaction("other"):
        pass
    assert not (src / ".instances.parquet.pending").exists()


def test_tables_read_with_plain_duckdb_and_pandas(coco_store):
    root = coco_store.root
    n = duckdb.sql(f"select count(*) from '{root}/tables/*/instances.parquet'").fetchall()[0][0]
    assert n == 172 + 118
    frame = pd.read_parquet(coco_store.source_dir("coco-val") / "instances.parquet")
    assert len(frame) == 118
    schema_kp = pq.read_schema(coco_store.source_dir("coco-val") / "instances.parquet").field("keypoints").type
    assert schema_kp == schema.KEYPOINTS_TYPE
    kp = schema.keypoints_from_arrow(coco_store.instances(["coco-val"]).column("keypoints"))
    assert kp.shape == (118, 17, 3) and kp.dtype == np.float32


def test_ingest_is_deterministic(tmp_path, shared_data):
    mini = shared_data / "coco-mini"
    outputs = []
    for name in ("one", "two"):
        st = PoseStore(tmp_path / name)
        ingest_coco(st, mini / "annotations/person_keypoints_val2017.json", mini / "val2017", "v")
        outputs.append({p.relative_to(st.root): p.read_bytes() for p in st.root.rglob("*") if p.is_file() and p.name != ".lock"})
    assert outputs[0] == outputs[1]
