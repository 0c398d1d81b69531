"""Every real sample in ../shared/data ingests, and every reject is explained."""

from __future__ import annotations

import json

import pytest

from posepipe.datasets import schema
from posepipe.datasets.coco import ingest_coco
from posepipe.datasets.stats import stats

# file, images folder, skeleton, expected (accepted annotations, reject reasons, notes present)
SAMPLES = [
    ("coco-mini/annotations/person_keypoints_train2017.json", "coco-mini/train2017", "coco17", 172, {}, set()),
    ("coco-mini/annotations/person_keypoints_val2017.json", "coco-mini/val2017", "coco17", 118, {}, set()),
    ("pose-samples/coco/test_coco.json", "pose-samples/coco", "coco17", 14, {}, set()),
    ("pose-samples/coco/test_coco_wholebody.json", "pose-samples/coco", "coco_wholebody", 14, {}, set()),
    ("pose-samples/ochuman/test_ochuman.json", "pose-samples/ochuman", "coco17", 5, {}, set()),
    ("pose-samples/humanart/test_humanart.json", "pose-samples/humanart", "humanart21", 4, {}, set()),
    ("pose-samples/crowdpose/test_crowdpose.json", "pose-samples/crowdpose", "crowdpose14", 5, {},
     {"area_derived_from_bbox"}),
    ("pose-samples/aic/test_aic.json", "pose-samples/aic", "aic14", 9, {},
     {"area_derived_from_bbox", "iscrowd_defaulted_to_0"}),
    ("pose-samples/mpii/test_mpii.json", "pose-samples/mpii", "mpii16", 5, {},
     {"bbox_derived_from_joints", "visibility_assumed_visible", "area_derived_from_bbox"}),
    ("pose-samples/halpe/test_halpe.json", "pose-samples/coco", "halpe136", 14, {}, set()),
    # A metric fixture whose 17-name category holds 133-joint arrays: rejected with the reason.
    ("pose-samples/coco/test_keypoint_partition_metric.json", "pose-samples/coco", None, 0,
     {"keypoints_length": 14}, set()),
    # MPII-TRB has no boxes: each person is rejected as bbox_missing, its images still land.
    ("pose-samples/mpii/test_mpii_trb.json", "pose-samples/mpii", "custom40", 0, {"bbox_missing": 5}, set()),
]


@pytest.mark.parametrize("rel,images,skeleton,accepted,reasons,notes", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_real_sample_ingests(store, shared_data, rel, images, skeleton, accepted, reasons, notes):
    report = ingest_coco(store, shared_data / rel, shared_data / images, "src")
    assert report.fatal is None
    assert report.annotations_read == report.annotations_accepted + report.annotations_rejected
    assert report.images_read == report.images_accepted + report.images_rejected
    assert report.annotations_accepted == accepted
    assert dict(report.reasons) == reasons
    assert notes <= set(report.notes)
    inst = store.instances()
    assert inst.num_rows == accepted
    if accepted:
        assert set(inst.column("skeleton").to_pylist()) == {skeleton}
    rejects = store.rejects().to_pylist()
    assert len(rejects) == report.rejected
    for row in rejects:
        assert row["reason"] in schema.REASONS
        assert rel.split("/")[-1] in row["message"] and row["raw"]
        assert "\n" not in row["message"]
    s = stats(store)["sources"]["src"]
    assert s["annotations_read"] == s["annotations_accepted"] + s["annotations_rejected"]


def test_extra_joints_are_kept(store, shared_data):
    pose = shared_data / "pose-samples"
    ingest_coco(store, pose / "halpe/test_halpe.json", pose / "coco", "halpe")
    ingest_coco(store, pose / "crowdpose/test_crowdpose.json", pose / "crowdpose", "crowd")
    ingest_coco(store, pose / "coco/test_coco_wholebody.json", pose / "coco", "wholebody")
    halpe = store.instances(["halpe"]).column("extra_keypoints").to_pylist()
    assert all(len(row) == 136 - 17 for row in halpe)
    assert [j["name"] for j in halpe[0][:2]] == ["head_top", "neck"]
    crowd = store.instances(["crowd"])
    extras = crowd.column("extra_keypoints").to_pylist()
    assert [j["name"] for j in extras[0]] == ["head_top", "neck"]
    # CrowdPose has no face joints: they are v=0 in COCO-17; its limbs land on COCO indices.
    kp = schema.keypoints_from_arrow(crowd.column("keypoints"))
    assert (kp[:, :5, 2] == 0).all()
    assert kp[:, 5:, 2].sum() > 0
    wb = store.instances(["wholebody"]).column("extra_keypoints").to_pylist()
    assert len(wb[0]) == 6 + 68 + 21 + 21


def test_humanart_second_keypoint_field_and_nested_paths(store, shared_data):
    pose = shared_data / "pose-samples"
    ingest_coco(store, pose / "humanart/test_humanart.json", pose / "humanart", "humanart")
    images = store.images().to_pylist()
    # file_names carry the dataset root ("HumanArt/images/..."); the resolved path is recorded.
    assert all(im["file_name"].startswith("HumanArt/images/") for im in images)
    assert all('"resolved_path"' in im["provenance"] for im in images)
    extras = store.instances().column("extra_keypoints").to_pylist()
    assert [j["name"] for j in extras[0]] == ["left_finger", "right_finger", "left_toe", "right_toe"]


def test_mpii_native_json_maps_joints(store, shared_data):
    pose = shared_data / "pose-samples"
    ingest_coco(store, pose / "mpii/test_mpii.json", pose / "mpii", "mpii")
    inst = store.instances()
    kp = schema.keypoints_from_arrow(inst.column("keypoints"))
    # MPII joint 0 is the right ankle: COCO index 16.
    raw = json.loads((pose / "mpii/test_mpii.json").read_text())
    row = inst.column("record_index").to_pylist().index(0)
    assert kp[row, 16, :2].tolist() == pytest.approx(raw[0]["joints"][0])
    assert set(inst.column("skeleton").to_pylist()) == {"mpii16"}
    assert all("bbox_derived_from_joints" in n for n in inst.column("notes").to_pylist())
