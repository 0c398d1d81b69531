"""Intake behaviour: one clear reason per bad file, idempotent and incremental re-runs, deleted
files reported, quarantine with *.errors.txt, and the rejects listing.

The files here are written just before each ingest, so the intake is told not to wait for them
to settle (settle=0); files still being written are tested in test_labelme_arrival.py."""

from __future__ import annotations

import base64
import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from posepipe.annotation.intake import ingest_labelme
from posepipe.datasets import schema
from posepipe.datasets.store import PoseStore
from tests.conftest import REPO
from tests.test_labelme_versions import coco_people, labelme_doc


def _jpeg(seed: int, w: int = 64, h: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def good(shared_data):
    """A real two-person file (labelme 7 style) and its image bytes."""
    im, people = coco_people(shared_data, limit=1)[0]
    data = (shared_data / "coco-mini/val2017" / im["file_name"]).read_bytes()
    return labelme_doc("labelme7", im, people[:2], data, "img.jpg"), data


def _joint(doc, group, name):
    return next(s for s in doc["shapes"] if s["group_id"] == group and s["label"] == name)


def _cases(doc: dict) -> dict[str, tuple[object, str, tuple[str, ...]]]:
    """name -> (file content, expected reason, words the message must contain)."""
    cases = {}
    doc = {**doc, "imagePath": "../img.jpg"}  # the bad files live in intake/bad/

    def case(name, reason, words, mutate=None, raw=None):
        d = copy.deepcopy(doc)
        if mutate:
            mutate(d)
        cases[name] = (raw if raw is not None else d, reason, words)

    first_point = next(i for i, s in enumerate(doc["shapes"]) if s["shape_type"] == "point")
    label = doc["shapes"][first_point]["label"]
    case("truncated", "invalid_json", ("not valid json",), raw=json.dumps(doc)[:300])
    case("typo", "unknown_label", (f"shape #{first_point}", "left_elbw", "did you mean 'left_elbow'"),
         lambda d: d["shapes"][first_point].update(label="left_elbw"))
    case("twice", "duplicate_joint", ("appears twice", "group_id 1", label),
         lambda d: d["shapes"].append(copy.deepcopy(d["shapes"][first_point])))
    case("nogroup", "ambiguous_person", ("no group_id", "2 people"),
         lambda d: d["shapes"][first_point].update(group_id=None))
    case("lonely", "implausible_person", ("group_id 9", "1 joint"),
         lambda d: d["shapes"].append({**copy.deepcopy(d["shapes"][first_point]), "group_id": 9}))
    case("far", "implausible_person", ("far outside its person rectangle",),
         lambda d: d["shapes"][first_point].update(points=[[1.0, 1.0]]) or
         [s.update(points=[[d["imageWidth"] - 1, d["imageHeight"] - 1], [d["imageWidth"], d["imageHeight"]]])
          for s in d["shapes"] if s["label"] == "person" and s["group_id"] == 1])
    case("polyjoint", "wrong_shape_type", (label, "must be a point"),
         lambda d: d["shapes"][first_point].update(shape_type="polygon", points=[[1, 1], [2, 2], [3, 1]]))
    case("rect3", "bad_point_count", ("rectangle needs 2 points", "got 3"),
         lambda d: d["shapes"][0]["points"].append([5.0, 5.0]))
    case("point2", "bad_point_count", ("a point needs 1 point, got 2",),
         lambda d: d["shapes"][first_point]["points"].append([5.0, 5.0]))
    case("nan", "nonfinite_coordinate", (f"shape #{first_point}", "nan"),
         lambda d: d["shapes"][first_point].update(points=[[float("nan"), 3.0]]))
    case("outside", "keypoint_outside_image", ("outside the", f"{doc['imageWidth']}x{doc['imageHeight']}"),
         lambda d: d["shapes"][first_point].update(points=[[d["imageWidth"] + 50.0, 3.0]]))
    case("size", "size_mismatch", ("imageHeight is 7",), lambda d: d.update(imageHeight=7))
    case("noimage", "image_missing", ("gone.jpg",), lambda d: d.update(imagePath="gone.jpg"))
    case("notimage", "not_an_image", ("imagePath '../broken.jpg'",), lambda d: d.update(imagePath="../broken.jpg"))
    case("b64", "bad_image_data", ("imageData is not valid base64",), lambda d: d.update(imageData="%%%not-base64"))
    case("escape", "path_escapes", ("outside the intake folder",), lambda d: d.update(imagePath="../../secret.jpg"))
    case("noshapes", "missing_key", ("shapes",), lambda d: d.pop("shapes"))
    case("badpoints", "bad_type", (f"shape #{first_point}", "points"),
         lambda d: d["shapes"][first_point].update(points="12,34"))
    return cases


def test_every_bad_file_is_rejected_with_a_clear_reason(tmp_path, good, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc, data = good
    intake = tmp_path / "intake"
    intake.mkdir()
    (intake / "img.jpg").write_bytes(data)
    (intake / "broken.jpg").write_bytes(b"this is not a jpeg")
    (intake / "ok.json").write_text(json.dumps(doc))
    cases = _cases(doc)
    for name, (content, _, _) in cases.items():
        text = content if isinstance(content, str) else json.dumps(content)  # NaN is written as NaN
        (intake / "bad" / f"{name}.json").parent.mkdir(exist_ok=True)
        (intake / "bad" / f"{name}.json").write_text(text)
    store = PoseStore(tmp_path / "store")
    report = ingest_labelme(store, intake, "lm", settle=0)
    assert report.files_read == len(cases) + 1 == report.files_accepted + report.files_rejected
    assert report.files_accepted == 1 and report.instances_accepted == 2
    outcomes = {Path(f.relative).stem: f for f in report.files}
    for name, (_, reason, words) in cases.items():
        got = outcomes[name]
        assert got.status == "rejected" and got.reason == reason, (name, got.message)
        assert got.message.startswith(f"intake/bad/{name}.json: ")
        for word in words:
            assert word in got.message, (name, word, got.message)
        assert "\n" not in got.message
    rejects = store.rejects(["lm"]).to_pylist()
    assert len(rejects) == len(cases)
    assert {r["kind"] for r in rejects} == {"file"}
    assert {r["record_id"] for r in rejects} == {f"bad/{n}.json" for n in cases}
    typo = next(r for r in rejects if r["record_id"] == "bad/typo.json")
    assert typo["field"].endswith(".label") and "left_elbw" in typo["raw"]
    # move mode (the default): the bad files left the intake for the quarantine, with their reasons
    assert not list((intake / "bad").glob("*.json"))
    assert "did you mean 'left_elbow'" in (intake / "_quarantine/bad/typo.errors.txt").read_text()
    assert (intake / "_quarantine/bad/typo.json").exists()
    # the next run reports them as quarantined and adds nothing
    again = ingest_labelme(store, intake, "lm", settle=0)
    assert again.files_read == 0 and again.files_unchanged == 1
    assert {m["state"] for m in again.missing} == {"quarantined"} and len(again.missing) == len(cases)
    # a fixed file dropped back in replaces its rejection
    (intake / "bad").mkdir(exist_ok=True)
    fixed = {**doc, "imagePath": "../img.jpg"}
    (intake / "bad/typo.json").write_text(json.dumps(fixed))
    (intake / "ok.json").unlink()  # so the image is not claimed twice in the source
    third = ingest_labelme(store, intake, "lm", prune=True, settle=0)
    assert third.files_accepted == 1 and third.pruned == 1
    assert all(r["record_id"] != "bad/typo.json" for r in store.rejects(["lm"]).to_pylist())
    assert set(store.instances(["lm"]).column("source_file").to_pylist()) == {"intake/bad/typo.json"}


def test_idempotent_incremental_and_deleted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    intake = tmp_path / "intake"
    intake.mkdir()
    docs = {}
    for i in range(4):
        shapes = [{"label": "person", "points": [[5, 5], [40, 40]], "group_id": 1, "shape_type": "rectangle", "flags": {}},
                  {"label": "nose", "points": [[10 + i, 12]], "group_id": 1, "shape_type": "point", "flags": {}},
                  {"label": "left_eye", "points": [[14, 11]], "group_id": 1, "shape_type": "point",
                   "flags": {"occluded": True}}]
        img = _jpeg(i)
        embedded = i % 2 == 0
        if not embedded:
            (intake / f"{i}.jpg").write_bytes(img)
        docs[i] = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": f"{i}.jpg",
                   "imageData": base64.b64encode(img).decode() if embedded else None,
                   "imageHeight": 48, "imageWidth": 64}
        (intake / f"{i}.json").write_text(json.dumps(docs[i]))
    store = PoseStore(tmp_path / "store")
    first = ingest_labelme(store, intake, "lm", settle=0)
    assert first.files_accepted == 4 and first.images_embedded == 2
    tables = {name: store.table(name, ["lm"]) for name in schema.TABLES}
    shards = sorted(p.name for p in (store.root / "shards").iterdir())
    second = ingest_labelme(store, intake, "lm", settle=0)
    assert second.files_read == 0 and second.files_unchanged == 4 and not second.missing
    for name, table in tables.items():
        assert store.table(name, ["lm"]).equals(table), name
    assert sorted(p.name for p in (store.root / "shards").iterdir()) == shards
    kp = schema.keypoints_from_arrow(tables["instances"].column("keypoints"))
    assert kp[:, schema.JOINT_INDEX["left_eye"], 2].tolist() == [1.0] * 4
    assert kp[:, schema.JOINT_INDEX["nose"], 2].tolist() == [2.0] * 4

    # one file changes: only it is read, and its person is replaced (same id, new nose)
    docs[1]["shapes"][1]["points"] = [[30.0, 31.0]]
    (intake / "1.json").write_text(json.dumps(docs[1]))
    third = ingest_labelme(store, intake, "lm", settle=0)
    assert third.files_read == 1 and third.files_unchanged == 3
    inst = store.instances(["lm"])
    assert inst.num_rows == 4
    row = inst.column("source_file").to_pylist().index("intake/1.json")
    assert schema.keypoints_from_arrow(inst.column("keypoints"))[row, 0].tolist() == [30.0, 31.0, 2.0]
    assert sorted(inst.column("instance_id").to_pylist()) == sorted(tables["instances"].column("instance_id").to_pylist())

    # one file is deleted: reported, kept; pruned only when asked
    (intake / "3.json").unlink()
    fourth = ingest_labelme(store, intake, "lm", settle=0)
    assert fourth.missing == [{"file": "intake/3.json", "state": "deleted",
                               "action": "its records are kept; run with --prune to remove them"}]
    assert store.instances(["lm"]).num_rows == 4
    fifth = ingest_labelme(store, intake, "lm", prune=True, settle=0)
    assert fifth.pruned == 1 and store.instances(["lm"]).num_rows == 3
    assert ingest_labelme(store, intake, "lm", settle=0).missing == []


def test_identical_images_stored_once(tmp_path, monkeypatch):
    """The same embedded image in two sources is one shard entry; twice in one source is a reject."""
    monkeypatch.chdir(tmp_path)
    img = _jpeg(7)
    doc = {"version": "5.2.1", "flags": {}, "imagePath": "a.jpg", "imageData": base64.b64encode(img).decode(),
           "imageHeight": 48, "imageWidth": 64,
           "shapes": [{"label": "nose", "points": [[3, 4]], "shape_type": "point"},
                      {"label": "left_eye", "points": [[6, 9]], "shape_type": "point"}]}
    for name in ("a", "b"):
        (tmp_path / "in" / name).mkdir(parents=True)
        (tmp_path / "in" / name / "x.json").write_text(json.dumps(doc))
    store = PoseStore(tmp_path / "store")
    assert ingest_labelme(store, tmp_path / "in/a", "one", settle=0).files_accepted == 1
    assert ingest_labelme(store, tmp_path / "in/b", "two", settle=0).files_accepted == 1
    images = store.images()
    assert images.num_rows == 2 and len(set(images.column("shard").to_pylist())) == 1
    assert len(set(zip(images.column("shard").to_pylist(), images.column("offset").to_pylist()))) == 1
    assert store.read_image(*[images.column(c)[0].as_py() for c in ("shard", "offset", "num_bytes")]) == img
    both = ingest_labelme(store, tmp_path / "in", "three", quarantine_mode="copy", settle=0)
    assert both.files_accepted == 1 and both.reasons == {"duplicate_image": 1}
    # ungrouped joints of the image's only person are that person; the box comes from the joints
    inst = store.instances(["one"]).to_pylist()[0]
    assert "bbox_derived_from_joints" in inst["notes"] and inst["num_keypoints"] == 2


def test_cli_ingest_rejects_and_strict(tmp_path, shared_data):
    intake = tmp_path / "intake"
    (intake / "pose").mkdir(parents=True)
    for f in ("human-pose.json", "human-pose.jpeg"):
        (intake / "pose" / f).write_bytes((shared_data / "labelme-samples/x-anylabeling-pose" / f).read_bytes())
    (intake / "primitives.json").write_bytes(
        (shared_data / "labelme-samples/labelme-examples/primitives/primitives.json").read_bytes())
    store = tmp_path / "store"

    def run(*args):
        return subprocess.run([sys.executable, "-m", "posepipe.flows", *map(str, args)], capture_output=True,
                              text=True, cwd=tmp_path)

    # --settle 0: these files were written just now (arrival is tested in test_labelme_arrival.py).
    out = run("ingest", "labelme", intake, "--source", "lm", "--store", store, "--annotator", "ana", "--strict",
              "--settle", "0")
    assert out.returncode == 1, out.stderr
    assert "[no_keypoints]" in out.stderr and "primitives.errors.txt" not in out.stderr
    assert (intake / "_quarantine/primitives.errors.txt").exists() and not (intake / "primitives.json").exists()
    listed = run("rejects", "--source", "lm", "--store", store)
    assert listed.returncode == 0
    assert "no_keypoints" in listed.stdout and "primitives.json" in listed.stdout
    again = run("ingest", "labelme", intake, "--source", "lm", "--store", store, "--json", "--settle", "0")
    report = json.loads(again.stdout)
    assert report["files_unchanged"] == 1 and report["missing"][0]["state"] == "quarantined"
    missing = run("ingest", "labelme", tmp_path / "nope", "--source", "lm", "--store", store)
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0 and "does not exist" in missing.stderr
    for args in (["ingest", "labelme"], ["annotate"], ["annotate", "config"], ["annotate", "export"]):
        assert "Usage" in subprocess.run([sys.executable, "-m", "posepipe.flows", *args, "--help"],
                                         capture_output=True, text=True, cwd=REPO).stdout


def test_huge_group_id_is_handled_without_a_traceback(tmp_path, good):
    """group_id beyond 64 bits (orjson's limit): the file is read and accounted for, no crash."""
    doc, data = good
    doc = copy.deepcopy(doc)
    for shape in doc["shapes"]:
        if shape["group_id"] == doc["shapes"][0]["group_id"]:
            shape["group_id"] = 2**70
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "img.jpg").write_bytes(data)
    (drop / "big.json").write_text(json.dumps(doc))
    store = PoseStore(tmp_path / "store")
    report = ingest_labelme(store, drop, "big", quarantine_mode="copy", settle=0)
    assert report.files_read == report.files_rejected == 1
    (row,) = store.rejects().to_pylist()
    assert row["reason"] == "bad_type" and "does not fit in 64 bits" in row["message"]


def test_symlinks_out_of_the_intake_folder_are_rejected(tmp_path, good):
    """An imagePath inside the folder that is a link (file or folder) pointing outside it is refused."""
    doc, data = good
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "img.jpg").write_bytes(data)
    drop = tmp_path / "drop"
    (drop / "linked").mkdir(parents=True)
    (drop / "linked" / "img.jpg").symlink_to(outside / "img.jpg")  # a file link
    (drop / "dirlink").symlink_to(outside, target_is_directory=True)  # a folder link
    (drop / "inside").mkdir()
    (drop / "inside" / "img.jpg").write_bytes(data)
    (drop / "inside" / "alias.jpg").symlink_to(drop / "inside" / "img.jpg")  # stays inside: fine
    for name, path in (("file_link", "linked/img.jpg"), ("dir_link", "dirlink/img.jpg"),
                       ("inside_link", "inside/alias.jpg")):
        (drop / f"{name}.json").write_text(json.dumps({**doc, "imagePath": path, "imageData": None}))
    store = PoseStore(tmp_path / "store")
    report = ingest_labelme(store, drop, "links", quarantine_mode="copy", settle=0)
    reasons = {Path(r["file"]).name: r["reason"] for r in store.rejects().to_pylist()}
    assert reasons == {"file_link.json": "path_escapes", "dir_link.json": "path_escapes"}
    assert report.files_read == 3 and report.files_accepted == 1
