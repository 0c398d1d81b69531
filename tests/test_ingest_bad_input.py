"""Bad input: every problem gets its own reason code, file/record/field, and nothing is lost."""

from __future__ import annotations

import copy
import io
import json
import shutil

import pytest
from PIL import Image

from posepipe.datasets.coco import ingest_coco
from posepipe.datasets.errors import PosepipeError


@pytest.fixture
def mini(tmp_path, shared_data):
    """A small valid COCO file: the first 6 coco-mini train images and their annotations."""
    src = shared_data / "coco-mini"
    doc = json.loads((src / "annotations/person_keypoints_train2017.json").read_text())
    images = doc["images"][:6]
    ids = {im["id"] for im in images}
    doc["images"] = images
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in ids]
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for im in images:
        shutil.copy(src / "train2017" / im["file_name"], img_dir / im["file_name"])
    return doc, img_dir


def _write(tmp_path, doc, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def _reasons(store):
    return {(r["kind"], r["record_id"]): r for r in store.rejects().to_pylist()}


def test_each_annotation_problem_has_its_reason(tmp_path, store, mini):
    doc, img_dir = mini
    anns = [a for a in doc["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]]
    base = anns[0]
    bad = []

    def variant(new_id, **changes):
        a = copy.deepcopy(base)
        a["id"] = new_id
        for key, value in changes.items():
            if value is None:
                a.pop(key, None)
            else:
                a[key] = value
        bad.append(a)
        return a

    kp = base["keypoints"]
    labelled = next(j for j in range(17) if kp[3 * j + 2] > 0)
    w = next(im for im in doc["images"] if im["id"] == base["image_id"])["width"]

    def with_kp(j, x=None, v=None):
        k = list(kp)
        if x is not None:
            k[3 * j] = x
        if v is not None:
            k[3 * j + 2] = v
        return k

    variant(9001, keypoints=kp[:-3])
    variant(9002, keypoints=with_kp(labelled, v=3))
    variant(9003, keypoints=with_kp(labelled, x=float("nan")))
    variant(9004, keypoints=with_kp(labelled, x=-5))
    variant(9005, keypoints=with_kp(labelled, x=w * 3))
    variant(9006, num_keypoints=base["num_keypoints"] + 1)
    variant(9007, bbox=None)
    variant(9008, bbox=[10, 10, -4, 20])
    variant(9009, bbox=[w * 2, 0, 10, 10])
    variant(9010, image_id=123456789)
    variant(9011, category_id=7)
    dup = copy.deepcopy(base)
    bad.append(dup)  # same id as base: duplicate_annotation_id
    derived = variant(9012, area=None, iscrowd=None)
    doc["annotations"] = doc["annotations"] + bad
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))  # Python's json writes NaN literally, as real files do

    report = ingest_coco(store, path, img_dir, "bad")
    rejects = _reasons(store)
    expected = {
        9001: ("keypoints_length", "keypoints"), 9002: ("bad_visibility", "keypoints"),
        9003: ("nonfinite_coordinate", "keypoints"), 9004: ("negative_coordinate", "keypoints"),
        9005: ("keypoint_outside_image", "keypoints"), 9006: ("num_keypoints_mismatch", "num_keypoints"),
        9007: ("bbox_missing", "bbox"), 9008: ("bbox_invalid", "bbox"), 9009: ("bbox_outside_image", "bbox"),
        9010: ("image_not_found", "image_id"), 9011: ("not_person_category", "category_id"),
        base["id"]: ("duplicate_annotation_id", "id"),
    }
    for rid, (reason, field) in expected.items():
        row = rejects[("annotation", str(rid))]
        assert (row["reason"], row["field"]) == (reason, field), row["message"]
        assert "ann.json" in row["message"] and f"annotation {rid}" in row["message"]
        assert json.loads(row["raw"])["id"] == rid
    assert report.annotations_read == len(doc["annotations"])
    assert report.annotations_rejected == len(expected)
    assert report.annotations_accepted + report.annotations_rejected == report.annotations_read
    # Missing area/iscrowd are derived and noted, not rejected.
    inst = {r["source_annotation_id"]: r for r in store.instances().to_pylist()}
    assert set(inst[derived["id"]]["notes"]) == {"area_derived_from_bbox", "iscrowd_defaulted_to_0"}
    assert inst[derived["id"]]["area"] == pytest.approx(base["bbox"][2] * base["bbox"][3])


def _png(width, height, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def test_each_image_problem_has_its_reason(tmp_path, store, mini):
    doc, img_dir = mini
    ims = doc["images"]
    # 0: file missing; 1: truncated; 2: not an image; 3: size differs; 4: path escapes; 5: ok
    (img_dir / ims[0]["file_name"]).unlink()
    data = (img_dir / ims[1]["file_name"]).read_bytes()
    (img_dir / ims[1]["file_name"]).write_bytes(data[: len(data) // 2])
    (img_dir / ims[2]["file_name"]).write_bytes(b"this is not a jpeg at all")
    ims[3]["width"] += 1
    ims[4]["file_name"] = "../outside.jpg"
    shutil.copy(img_dir / ims[5]["file_name"], tmp_path / "outside.jpg")
    extra = [
        dict(ims[5], id=777),  # duplicate content under a new id
        dict(ims[5]),  # duplicate id
        {"id": 778, "file_name": "bomb.png", "width": 20000, "height": 10000},
        {"id": 779, "file_name": "x.jpg", "width": "wide", "height": 10},
        {"id": 780, "width": 10, "height": 10},
    ]
    (img_dir / "bomb.png").write_bytes(_png(20000, 10000, mode="1"))
    doc["images"] = ims + extra
    report = ingest_coco(store, _write(tmp_path, doc), img_dir, "imgs")
    rejects = _reasons(store)
    expected = {
        ims[0]["id"]: "image_missing", ims[1]["id"]: "image_truncated", ims[2]["id"]: "not_an_image",
        ims[3]["id"]: "size_mismatch", ims[4]["id"]: "path_escapes", 777: "duplicate_image",
        778: "image_too_large", 779: "bad_type", 780: "missing_field",
    }
    for rid, reason in expected.items():
        assert rejects[("image", str(rid))]["reason"] == reason, rejects[("image", str(rid))]["message"]
    # Messages are reproducible: no memory addresses from the image library.
    assert " at 0x" not in rejects[("image", str(ims[2]["id"]))]["message"]
    dup_rows = [r for r in store.rejects().to_pylist() if r["reason"] == "duplicate_image_id"]
    assert len(dup_rows) == 1
    assert report.images_accepted == 1
    assert report.images_read == len(doc["images"]) == report.images_accepted + report.images_rejected
    # Annotations of rejected images get their own rows, so annotation counts add up too.
    orphan = [r for r in store.rejects().to_pylist() if r["reason"] == "image_rejected"]
    assert orphan and all(r["kind"] == "annotation" for r in orphan)
    assert report.annotations_accepted + len(orphan) == report.annotations_read
    assert store.instances().num_rows == report.annotations_accepted


@pytest.mark.parametrize(
    "content,reason",
    [
        (b'{"images": [], "annotations": [', "invalid_json"),
        (b"\x89PNG not json", "invalid_json"),
        (b'{"images": [], "annotations": []}', "missing_key"),
        (b'{"images": {}, "annotations": [], "categories": []}', "bad_structure"),
        (b'{"images": [], "annotations": [], "categories": [{"id": 3, "name": "car"}]}', "no_person_category"),
        (b'{"images": [], "annotations": [], "categories": [{"id": 1, "name": "person", '
         b'"keypoints": ["a", "b", "c"]}]}', "unknown_skeleton"),
    ],
)
def test_fatal_file_problems(tmp_path, store, content, reason):
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    report = ingest_coco(store, path, tmp_path, "broken")
    assert report.fatal and "broken.json" in report.fatal
    rows = store.rejects().to_pylist()
    assert [(r["kind"], r["reason"]) for r in rows] == [("file", reason)]


def test_fatal_after_good_version_keeps_old_records(tmp_path, store, mini):
    doc, img_dir = mini
    path = _write(tmp_path, doc)
    first = ingest_coco(store, path, img_dir, "s")
    path.write_text(json.dumps(doc)[:-100])  # truncated re-delivery
    second = ingest_coco(store, path, img_dir, "s")
    assert second.fatal and "previous version are kept" in second.fatal
    assert store.instances().num_rows == first.annotations_accepted


def test_unreadable_inputs_are_user_errors(tmp_path, store):
    with pytest.raises(PosepipeError, match="cannot read"):
        ingest_coco(store, tmp_path / "nope.json", tmp_path, "s")
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(PosepipeError, match="images folder"):
        ingest_coco(store, tmp_path / "a.json", tmp_path / "missing", "s")
    with pytest.raises(PosepipeError, match="invalid source name"):
        ingest_coco(store, tmp_path / "a.json", tmp_path, "../evil")
