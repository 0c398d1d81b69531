"""Pre-annotations: COCO -> store -> LabelMe -> store is exact, and every written file is what
labelme's own LabelFile reads. Also the LabelMe config and its printed command."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from posepipe.annotation import config, labelme_format
from posepipe.annotation.intake import ingest_labelme
from posepipe.annotation.preannotate import export_labelme
from posepipe.datasets import schema
from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.images import probe


def _by_image(store, source):
    inst = store.instances([source])
    kp = schema.keypoints_from_arrow(inst.column("keypoints"))
    boxes = schema.bbox_from_arrow(inst.column("bbox"))
    out: dict[str, list] = {}
    for row, (image_id, crowd) in enumerate(zip(inst.column("image_id").to_pylist(), inst.column("iscrowd").to_pylist())):
        out.setdefault(image_id, []).append((kp[row], boxes[row], crowd))
    return out


@pytest.mark.parametrize("source", ["coco-val", "coco-train"])
def test_coco_labelme_round_trip_is_exact(coco_store, tmp_path, monkeypatch, source):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "pre"
    report = export_labelme(coco_store, source, out)
    images = coco_store.images([source])
    assert report.files == images.num_rows and report.images_written == images.num_rows
    assert report.people == coco_store.instances([source]).num_rows
    back = ingest_labelme(coco_store, out, f"{source}-lm", settle=0)
    assert back.files_read == back.files_accepted == report.files, [f.message for f in back.files if f.message]
    before, after = _by_image(coco_store, source), _by_image(coco_store, f"{source}-lm")
    assert sorted(before) == sorted(after)
    for image_id, people in before.items():
        again = after[image_id]
        assert len(again) == len(people)
        for (kp0, box0, crowd0), (kp1, box1, crowd1) in zip(people, again):
            np.testing.assert_array_equal(kp1, kp0)  # coordinates and visibility, bit for bit
            np.testing.assert_array_equal(box1, box0)
            assert crowd1 == crowd0
    assert sum(c for ps in after.values() for _, _, c in ps) == sum(c for ps in before.values() for _, _, c in ps) > 0
    assert set(coco_store.images([f"{source}-lm"]).column("sha256").to_pylist()) == set(images.column("sha256").to_pylist())


def _check_labelfile_structure(path: Path) -> None:
    """What labelme's LabelFile.load reads, checked key by key (labelme itself needs Qt)."""
    data = json.loads(path.read_text())
    assert set(labelme_format.FILE_KEYS) <= set(data)
    assert isinstance(data["version"], str) and isinstance(data["flags"], dict)
    assert data["imageData"] is None and isinstance(data["imagePath"], str)
    image = path.parent / data["imagePath"]  # LabelFile resolves it relative to the json file
    info = probe(image.read_bytes())
    assert (data["imageHeight"], data["imageWidth"]) == (info.height, info.width)
    for s in data["shapes"]:
        assert set(labelme_format.SHAPE_KEYS) <= set(s)
        assert isinstance(s["label"], str) and isinstance(s["group_id"], int) and isinstance(s["flags"], dict)
        assert s["shape_type"] in ("point", "rectangle") and s["description"] == "" and s["mask"] is None
        assert len(s["points"]) == (1 if s["shape_type"] == "point" else 2)
        assert all(len(p) == 2 and all(isinstance(v, float) for v in p) for p in s["points"])
    labelme_format.LabelMeFile.model_validate(data)


def test_written_files_are_labelme_files(coco_store, tmp_path):
    out = tmp_path / "pre"
    export_labelme(coco_store, "coco-val", out)
    files = sorted(out.glob("*.json"))
    assert len(files) == 79
    occluded = 0
    for f in files:
        _check_labelfile_structure(f)
        occluded += sum(s["flags"].get("occluded", False) for s in json.loads(f.read_text())["shapes"])
    assert occluded == 92  # every v=1 joint of coco-mini val
    first = {f.name: f.read_bytes() for f in files}
    export_labelme(coco_store, "coco-val", out)  # same store, same bytes
    assert {f.name: f.read_bytes() for f in sorted(out.glob("*.json"))} == first
    with pytest.raises(PosepipeError, match="not in the store"):
        export_labelme(coco_store, "nope", out)


def test_written_files_open_in_labelme(coco_store, tmp_path, monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # labelme imports Qt; no screen here
    try:
        try:
            from labelme._label_file import LabelFile  # labelme 6
        except ImportError:
            from labelme.label_file import LabelFile  # labelme 5
    except Exception as exc:  # labelme imports Qt at import time; the pipeline never installs it
        pytest.skip(f"labelme is not importable here ({type(exc).__name__}: {exc}); "
                    "install the extra with `pip install posepipe[annotate]` to run this check")
    out = tmp_path / "pre"
    export_labelme(coco_store, "coco-val", out)
    files = sorted(out.glob("*.json"))
    assert files
    for f in files:
        written = json.loads(f.read_text())
        lf = LabelFile(str(f))  # raises LabelFileError on anything labelme cannot open
        image_path = lf.image_path if hasattr(lf, "image_path") else lf.imagePath
        image_data = lf.image_data if hasattr(lf, "image_data") else lf.imageData
        assert image_path == written["imagePath"] and image_data
        assert [s["label"] for s in lf.shapes] == [s["label"] for s in written["shapes"]]
        for loaded, mine in zip(lf.shapes, written["shapes"]):
            assert loaded["group_id"] == mine["group_id"] and loaded["flags"] == mine["flags"]
            assert np.allclose(loaded["points"], mine["points"])


def test_config_and_command(tmp_path):
    path = config.write_config(tmp_path / "cfg.yaml")
    cfg = yaml.safe_load(path.read_text())
    assert cfg["labels"] == ["person", *schema.COCO17_JOINTS] and cfg["flags"] == ["crowd"]
    assert cfg["store_data"] is False and cfg["validate_label"] == "exact"

    joint_flags = next(v for k, v in cfg["label_flags"].items() if re.match(k, "left_knee"))
    assert joint_flags == ["occluded", "check"] and not re.match(next(iter(cfg["label_flags"])), "left_knee")
    out = subprocess.run([sys.executable, "-m", "posepipe.flows", "annotate", "config", "--out", path,
                          "--images", "my images"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (f"labelme 'my images' --config {path} --labels "
                                  f"person,{','.join(schema.COCO17_JOINTS)} --nodata --autosave")
    assert "posepipe[annotate]" in out.stderr
    probe_imports = subprocess.run(
        [sys.executable, "-c", "import sys, posepipe.flows.cli, posepipe.annotation.intake, "
         "posepipe.annotation.preannotate, posepipe.annotation.config; print('labelme' in sys.modules)"],
        capture_output=True, text=True, check=True)
    assert probe_imports.stdout.strip() == "False"  # runtime code never imports labelme


def test_cli_export_then_ingest(coco_store, tmp_path):
    out = tmp_path / "pre"
    run = [sys.executable, "-m", "posepipe.flows"]
    exp = subprocess.run([*run, "annotate", "export", "--source", "coco-val", "--out", out, "--store",
                          coco_store.root, "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert exp.returncode == 0, exp.stderr
    assert json.loads(exp.stdout)["files"] == 79
    target = next(f for f in sorted(out.glob("*.json")) if '"point"' in f.read_text())
    doc = json.loads(target.read_text())
    # an annotator embeds the image (labelme 5 default) and marks a joint occluded by description
    doc["imageData"] = base64.b64encode((out / doc["imagePath"]).read_bytes()).decode()
    point = next(s for s in doc["shapes"] if s["shape_type"] == "point")
    point["flags"], point["description"] = {}, "occluded"
    target.write_text(json.dumps(doc))
    ing = subprocess.run([*run, "ingest", "labelme", out, "--source", "pre", "--store", coco_store.root, "--json",
                          "--settle", "0"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert ing.returncode == 0, ing.stderr
    report = json.loads(ing.stdout)
    assert report["files_accepted"] == 79 and report["images_embedded"] == 1
    assert report["notes"]["occluded_from_description"] == 1
