"""The COCO reader's fast paths give exactly what the per-record path gives.

Each case is ingested twice, with ``fast=True`` and ``fast=False`` (the per-record loop, one
process), into two stores; every table must be equal, and every stored file byte-identical.
The fast side runs in one process, and again with the annotations split between this process
and a forked child (``coco_split``, forced on for these small files).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from posepipe.datasets import coco, coco_split
from posepipe.datasets.coco import ingest_coco
from posepipe.datasets.store import PoseStore

TABLES = ("images", "instances", "rejects", "batches")


def _store_bytes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def _both_paths(tmp_path: Path, ann: Path, images: Path, monkeypatch, **kw) -> tuple[object, int]:
    """Ingest with each path; assert they agree; return the fast report and how often the
    fast run fell back to the per-record loop."""
    fallbacks = []
    careful = coco._sound_records

    def counting(*args, **kwargs):
        fallbacks.append(1)
        return careful(*args, **kwargs)

    monkeypatch.setattr(coco, "_sound_records", counting)
    fast_store, slow_store = PoseStore(tmp_path / "fast"), PoseStore(tmp_path / "careful")
    fast = ingest_coco(fast_store, ann, images, "src", fast=True, **kw)
    fell_back = len(fallbacks)
    slow = ingest_coco(slow_store, ann, images, "src", fast=False, **kw)
    assert len(fallbacks) == fell_back + 1, "fast=False must take the per-record loop"
    assert fast.to_dict() == slow.to_dict()
    for name in TABLES:
        a, b = getattr(fast_store, name)(), getattr(slow_store, name)()
        assert a.equals(b), (name, a.to_pylist()[:3], b.to_pylist()[:3])
    assert _store_bytes(tmp_path / "fast") == _store_bytes(tmp_path / "careful")
    assert fast.annotations_read == fast.annotations_accepted + fast.annotations_rejected
    return fast, fell_back


def _split_always(monkeypatch) -> list[str]:
    """Force the two-process reader on any file size; returns what each read did (taken/declined)."""
    monkeypatch.setattr(coco_split, "MIN_BYTES", 0)
    outcomes: list[str] = []
    split_read = coco_split.read

    def recording(*args, **kwargs):
        table = split_read(*args, **kwargs)
        outcomes.append("declined" if table is coco_split.DECLINED else "taken")
        return table

    monkeypatch.setattr(coco_split, "read", recording)
    return outcomes


@pytest.fixture(params=["one_process", "split"])
def reader(request, monkeypatch) -> list[str] | None:
    """Each fast-path test runs with one process and with the split reader."""
    if request.param == "one_process":
        monkeypatch.setattr(coco_split, "MIN_BYTES", 1 << 62)
        return None
    return _split_always(monkeypatch)


REAL = [
    ("coco-mini/annotations/person_keypoints_val2017.json", "coco-mini/val2017", None),
    ("pose-samples/coco/test_coco.json", "pose-samples/coco", None),
    ("pose-samples/humanart/test_humanart.json", "pose-samples/humanart", None),
    ("pose-samples/crowdpose/test_crowdpose.json", "pose-samples/crowdpose", None),
    ("pose-samples/aic/test_aic.json", "pose-samples/aic", None),
    ("pose-samples/halpe/test_halpe.json", "pose-samples/coco", None),
    ("pose-samples/coco/test_coco_wholebody.json", "pose-samples/coco", None),
    ("pose-samples/coco/test_keypoint_partition_metric.json", "pose-samples/coco", None),
    ("pose-samples/mpii/test_mpii_trb.json", "pose-samples/mpii", None),
]


@pytest.mark.parametrize("rel,images,skeleton", REAL, ids=[r[0].split("/")[-1] for r in REAL])
def test_real_samples_agree(tmp_path, shared_data, monkeypatch, reader, rel, images, skeleton):
    _both_paths(tmp_path, shared_data / rel, shared_data / images, monkeypatch, skeleton=skeleton)
    if reader is not None and rel.startswith("coco-mini"):
        assert reader == ["taken"]


def test_clean_real_file_takes_the_fast_path(tmp_path, shared_data, monkeypatch):
    mini = shared_data / "coco-mini"
    report, fell_back = _both_paths(tmp_path, mini / "annotations/person_keypoints_val2017.json",
                                    mini / "val2017", monkeypatch)
    assert fell_back == 0 and report.annotations_accepted == 118


def test_second_keypoint_field_takes_the_fast_path(tmp_path, shared_data, monkeypatch):
    pose = shared_data / "pose-samples"
    report, fell_back = _both_paths(tmp_path, pose / "humanart/test_humanart.json", pose / "humanart", monkeypatch)
    assert fell_back == 0 and report.annotations_accepted == 4


@pytest.fixture(scope="module")
def mini(tmp_path_factory, shared_data):
    """The first 6 coco-mini train images (copied once) and their annotations."""
    src = shared_data / "coco-mini"
    doc = json.loads((src / "annotations/person_keypoints_train2017.json").read_text())
    doc["images"] = doc["images"][:6]
    ids = {im["id"] for im in doc["images"]}
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in ids]
    img_dir = tmp_path_factory.mktemp("mini") / "images"
    img_dir.mkdir()
    for im in doc["images"]:
        shutil.copy(src / "train2017" / im["file_name"], img_dir / im["file_name"])
    return doc, img_dir


_KEEP = object()


def _with_kp(a, j, x=_KEEP, v=_KEEP):
    k = list(a["keypoints"])
    if x is not _KEEP:
        k[3 * j] = x
    if v is not _KEEP:
        k[3 * j + 2] = v
    return k


def _labelled(a):
    return next(j for j in range(17) if a["keypoints"][3 * j + 2] > 0)


# Each case changes one labelled annotation (not the first) of an otherwise clean file:
# (change, whether the column path handles it itself rather than handing the file to the
# per-record loop, annotations rejected).
CASES = {
    "clean": (lambda a, d: None, True, 0),
    "not_a_dict": (lambda a, d: d["annotations"].append([1, 2, 3]), False, 1),
    "id_missing": (lambda a, d: a.pop("id"), False, 1),
    "id_string": (lambda a, d: a.update(id="7"), False, 1),
    "id_bool": (lambda a, d: a.update(id=True), False, 1),
    "id_duplicate": (lambda a, d: a.update(id=d["annotations"][0]["id"]), False, 1),
    "category_other": (lambda a, d: a.update(category_id=7), False, 1),
    "category_float": (lambda a, d: a.update(category_id=1.0), True, 0),
    "category_missing": (lambda a, d: a.pop("category_id"), False, 1),
    "image_unknown": (lambda a, d: a.update(image_id=123456789), False, 1),
    "image_missing": (lambda a, d: a.pop("image_id"), False, 1),
    "image_string": (lambda a, d: a.update(image_id=str(a["image_id"])), False, 1),
    "image_list": (lambda a, d: a.update(image_id=[a["image_id"]]), False, 1),
    "keypoints_missing": (lambda a, d: a.pop("keypoints"), False, 1),
    "keypoints_null": (lambda a, d: a.update(keypoints=None), False, 1),
    "keypoints_short": (lambda a, d: a.update(keypoints=a["keypoints"][:-3]), False, 1),
    "keypoints_string": (lambda a, d: a.update(keypoints=_with_kp(a, 0, x="12")), False, 1),
    "keypoints_bool": (lambda a, d: a.update(keypoints=_with_kp(a, 0, v=True)), False, 1),
    "keypoints_null_value": (lambda a, d: a.update(keypoints=_with_kp(a, 0, x=None)), False, 1),
    "keypoints_nested": (lambda a, d: a.update(keypoints=_with_kp(a, 0, x=[1])), False, 1),
    "keypoints_nan": (lambda a, d: a.update(keypoints=_with_kp(a, _labelled(a), x=float("nan"))), True, 1),
    "keypoints_negative": (lambda a, d: a.update(keypoints=_with_kp(a, _labelled(a), x=-5)), True, 1),
    "keypoints_far_out": (lambda a, d: a.update(keypoints=_with_kp(a, _labelled(a), x=99999)), True, 1),
    "visibility_3": (lambda a, d: a.update(keypoints=_with_kp(a, _labelled(a), v=3)), True, 1),
    "num_keypoints_wrong": (lambda a, d: a.update(num_keypoints=a["num_keypoints"] + 1), True, 1),
    "num_keypoints_string": (lambda a, d: a.update(num_keypoints="3"), True, 1),
    "bbox_missing": (lambda a, d: a.pop("bbox"), False, 1),
    "bbox_three": (lambda a, d: a.update(bbox=a["bbox"][:3]), False, 1),
    "bbox_string": (lambda a, d: a.update(bbox=["1", 2, 3, 4]), False, 1),
    "bbox_bool": (lambda a, d: a.update(bbox=[True, 2, 3, 4]), False, 1),
    "bbox_negative": (lambda a, d: a.update(bbox=[10, 10, -4, 20]), True, 1),
    "bbox_outside": (lambda a, d: a.update(bbox=[99999, 0, 10, 10]), True, 1),
    "area_missing": (lambda a, d: a.pop("area"), True, 0),
    "area_negative": (lambda a, d: a.update(area=-1), True, 1),
    "area_string": (lambda a, d: a.update(area="big"), True, 1),
    "iscrowd_missing": (lambda a, d: a.pop("iscrowd"), True, 0),
    "iscrowd_two": (lambda a, d: a.update(iscrowd=2), True, 1),
    "iscrowd_float": (lambda a, d: a.update(iscrowd=1.0), True, 1),
    "iscrowd_list": (lambda a, d: a.update(iscrowd=[0]), True, 1),
    "unknown_fields": (lambda a, d: a.update(zeta=1, alpha=[2], mid={"k": 3}, annotator=42), True, 0),
    "segmentation_huge_int": (lambda a, d: a.update(segmentation={"counts": 2**70, "size": [1, 1]}), True, 0),
    "segmentation_missing": (lambda a, d: a.pop("segmentation"), True, 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_agrees(tmp_path, mini, monkeypatch, reader, case):
    doc, img_dir = mini
    doc = copy.deepcopy(doc)
    change, handled_fast, rejected = CASES[case]
    target = next(a for a in doc["annotations"][1:] if a["num_keypoints"] > 0)
    change(target, doc)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(doc))  # Python's json writes NaN literally, as real files can
    report, fell_back = _both_paths(tmp_path, ann, img_dir, monkeypatch)
    if reader is None:
        assert fell_back == (0 if handled_fast else 1)
    else:
        # NaN is no JSON: the split reader leaves that file to the one-process reader.
        assert reader == ["declined" if case == "keypoints_nan" else "taken"]
    assert report.annotations_read == len(doc["annotations"])
    assert report.annotations_rejected == rejected


def test_a_rejected_image_sends_its_annotations_through_the_loop(tmp_path, mini, monkeypatch):
    doc, img_dir = mini
    doc = copy.deepcopy(doc)
    image = next(im for im in doc["images"] if im["id"] == doc["annotations"][0]["image_id"])
    image["width"] += 1  # size_mismatch: its annotations become image_rejected
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(doc))
    report, fell_back = _both_paths(tmp_path, ann, img_dir, monkeypatch)
    assert fell_back == 1 and report.reasons["image_rejected"] >= 1


def test_unknown_fields_keep_record_order(tmp_path, mini):
    """Attributes json lists unknown fields in the record's order, not a set's (which changes
    from one process to the next), so the bytes are the same on every run."""
    doc, img_dir = mini
    doc = copy.deepcopy(doc)
    keys = ["zeta", "alpha", "mid", "beta", "omega", "kappa"]
    doc["annotations"][0].update({k: i for i, k in enumerate(keys)})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(doc))
    store = PoseStore(tmp_path / "store")
    ingest_coco(store, ann, img_dir, "src")
    inst = store.instances().to_pylist()
    row = next(r for r in inst if r["source_annotation_id"] == doc["annotations"][0]["id"])
    assert list(json.loads(row["attributes"])) == keys


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinks_cannot_lead_out_of_the_images_folder(tmp_path, mini):
    doc, img_dir = mini
    doc = copy.deepcopy(doc)
    images = tmp_path / "images"
    shutil.copytree(img_dir, images)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(images / doc["images"][0]["file_name"], outside / "secret.jpg")
    (images / "link_out.jpg").symlink_to(outside / "secret.jpg")
    (images / "dir_out").symlink_to(outside, target_is_directory=True)
    (images / "link_in.jpg").symlink_to(images / doc["images"][1]["file_name"])
    first, second = doc["images"][0], doc["images"][1]
    doc["images"] = [dict(first, id=1, file_name="link_out.jpg"), dict(first, id=2, file_name="dir_out/secret.jpg"),
                     dict(second, id=3, file_name="link_in.jpg")]
    doc["annotations"] = []
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(doc))
    store = PoseStore(tmp_path / "store")
    report = ingest_coco(store, ann, images, "src")
    reasons = {r["record_id"]: r["reason"] for r in store.rejects().to_pylist()}
    assert reasons == {"1": "path_escapes", "2": "path_escapes"}
    assert report.images_accepted == 1
    (row,) = store.images().to_pylist()
    # The link inside the folder is followed; where it led is recorded.
    assert json.loads(row["provenance"])["resolved_path"] == second["file_name"]
