"""LabelMe files of every version in use, generated from real coco-mini annotations, plus the
real samples: each style must give back COCO's keypoints, visibility and boxes exactly."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from posepipe.annotation.intake import ingest_labelme
from posepipe.datasets import schema
from posepipe.datasets.store import PoseStore

VAL = "coco-mini/annotations/person_keypoints_val2017.json"
STYLES = ("labelme3", "labelme4", "labelme5", "labelme7", "xanylabeling", "windows")


def coco_people(shared_data: Path, want_single: bool = False, limit: int = 3):
    """(image record, its annotations) of val images with labelled joints."""
    doc = json.loads((shared_data / VAL).read_text())
    anns: dict[int, list] = {}
    for a in doc["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    picked = []
    for im in sorted(doc["images"], key=lambda r: r["id"]):
        people = [a for a in anns.get(im["id"], []) if not a["iscrowd"]]
        if not people or any(a["num_keypoints"] == 0 for a in people):
            continue
        if want_single != (len(people) == 1):
            continue
        picked.append((im, people))
        if len(picked) == limit:
            break
    return picked


def labelme_doc(style: str, im: dict, people: list[dict], image_bytes: bytes, image_path: str) -> dict:
    """One LabelMe file in the given version's style (keys, occlusion convention, image storage)."""
    shapes = []
    for g, a in enumerate(people):
        gid = None if style == "labelme3" else g + 1
        x, y, w, h = a["bbox"]
        corners = [[x, y], [x + w, y + h]]
        if style == "xanylabeling":
            corners = [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]
        shapes.append(_shape(style, "person", corners, "rectangle", gid, False))
        kp = a["keypoints"]
        for j, name in enumerate(schema.COCO17_JOINTS):
            px, py, v = kp[3 * j:3 * j + 3]
            if v == 0:
                continue
            shapes.append(_shape(style, name, [[px, py]], "point", gid, v == 1))
    doc = {"version": {"labelme3": "3.16.7", "labelme4": "4.5.13", "labelme5": "5.2.1", "labelme7": "7.1.0",
                       "xanylabeling": "2.4.0", "windows": "5.4.1"}[style],
           "flags": {}, "shapes": shapes, "imagePath": image_path, "imageData": None,
           "imageHeight": im["height"], "imageWidth": im["width"]}
    if style == "labelme3":
        doc["lineColor"], doc["fillColor"] = [0, 255, 0, 128], [255, 0, 0, 128]
        del doc["imageHeight"], doc["imageWidth"]  # early 3.x files do not carry the size
    if style in ("labelme3", "labelme5"):
        doc["imageData"] = base64.b64encode(image_bytes).decode()
    return doc


def _shape(style: str, label: str, points, shape_type: str, gid, occluded: bool) -> dict:
    if style == "labelme3":
        # 3.x: no group_id, no per-shape flags; occlusion by the label suffix.
        return {"label": label + ("_occluded" if occluded else ""), "line_color": None, "fill_color": None,
                "points": points, "shape_type": shape_type}
    s = {"label": label, "points": points, "group_id": gid, "shape_type": shape_type, "flags": {}}
    if style == "labelme4":
        s["flags"] = {"occluded": occluded} if shape_type == "point" else {}
    elif style == "labelme5":
        s["description"] = "occluded" if occluded else ""
    elif style in ("labelme7", "windows"):
        s.update(description="", mask=None, flags={"occluded": occluded} if shape_type == "point" else {})
    elif style == "xanylabeling":
        s.update(score=0.93, description=None, difficult=occluded, attributes={}, kie_linking=[], visible=False)
    return s


def write_style(root: Path, shared_data: Path, style: str) -> list[tuple[dict, list[dict], str]]:
    picked = coco_people(shared_data, want_single=style == "labelme3")
    out = []
    for im, people in picked:
        data = (shared_data / "coco-mini/val2017" / im["file_name"]).read_bytes()
        if style == "windows":
            # json in labels/, image in images/, path written the Windows way.
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "images" / im["file_name"]).write_bytes(data)
            json_path, image_path = root / "labels" / (Path(im["file_name"]).stem + ".json"), f"..\\images\\{im['file_name']}"
        else:
            json_path, image_path = root / (Path(im["file_name"]).stem + ".json"), im["file_name"]
            if style not in ("labelme3", "labelme5"):
                root.mkdir(parents=True, exist_ok=True)
                (root / im["file_name"]).write_bytes(data)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(labelme_doc(style, im, people, data, image_path)))
        out.append((im, people, json_path.relative_to(root).as_posix()))
    return out


@pytest.mark.parametrize("style", STYLES)
def test_every_version_gives_coco_keypoints_back(tmp_path, shared_data, style, monkeypatch):
    monkeypatch.chdir(tmp_path)
    written = write_style(tmp_path / "intake", shared_data, style)
    assert len(written) == 3
    store = PoseStore(tmp_path / "store")
    report = ingest_labelme(store, tmp_path / "intake", "lm", annotator="ann", settle=0)
    assert report.files_read == report.files_accepted == len(written), [f.message for f in report.files]
    assert report.images_embedded == (len(written) if style in ("labelme3", "labelme5") else 0)
    inst = store.instances(["lm"])
    kp = schema.keypoints_from_arrow(inst.column("keypoints"))
    boxes = schema.bbox_from_arrow(inst.column("bbox"))
    files = inst.column("source_file").to_pylist()
    for im, people, rel in written:
        rows = [i for i, f in enumerate(files) if f == f"intake/{rel}"]
        assert len(rows) == len(people)
        for row, a in zip(rows, people):
            expected = np.array(a["keypoints"], dtype=np.float32).reshape(17, 3)
            expected[expected[:, 2] == 0] = 0
            np.testing.assert_array_equal(kp[row], expected)
            np.testing.assert_array_equal(boxes[row], np.array(a["bbox"]))
    assert set(inst.column("annotator").to_pylist()) == {"ann"}
    if style == "labelme3":
        assert report.notes["image_size_from_image"] == 2 * len(written)
        assert report.notes["occluded_from_label_suffix"] > 0
    if style == "xanylabeling":
        assert report.notes["occluded_from_difficult"] > 0
        assert '"score":0.93' in inst.column("attributes")[0].as_py()


def test_real_samples(tmp_path, shared_data, monkeypatch):
    """X-AnyLabeling's real person file is accepted; LabelMe's own examples hold no keypoints."""
    monkeypatch.chdir(tmp_path)
    intake = tmp_path / "intake"
    shutil.copytree(shared_data / "labelme-samples", intake)
    store = PoseStore(tmp_path / "store")
    report = ingest_labelme(store, intake, "samples", quarantine_mode="copy")
    assert report.files_read == 5 and report.files_accepted == 1 and report.files_rejected == 4
    by_name = {Path(f.relative).name: f for f in report.files}
    person = by_name["human-pose.json"]
    assert person.status == "accepted" and person.instances == 1
    kp = schema.keypoints_from_arrow(store.instances(["samples"]).column("keypoints"))
    assert int((kp[0, :, 2] == 2).sum()) == 16 and kp[0, schema.JOINT_INDEX["right_ear"], 2] == 0
    box = schema.bbox_from_arrow(store.instances(["samples"]).column("bbox"))[0]
    np.testing.assert_allclose(box, [202.57744789, 262.77809143, 118.76020432, 364.28232193], atol=1e-6)
    prim = by_name["primitives.json"]
    assert prim.reason == "no_keypoints"
    for kind in ("circle", "polygon", "line", "point"):
        assert kind in prim.message
    for name in ("2011_000003.json", "2011_000006.json", "2011_000025.json"):
        assert by_name[name].reason == "no_keypoints", by_name[name].message
        assert "group_id" in by_name[name].message
    # copy mode: the originals stay, the quarantine holds copies and readable reasons
    errors = intake / "_quarantine/labelme-examples/primitives/primitives.errors.txt"
    assert "no_keypoints" in errors.read_text() and (intake / "labelme-examples/primitives/primitives.json").exists()
    assert store.rejects(["samples"]).num_rows == 4
