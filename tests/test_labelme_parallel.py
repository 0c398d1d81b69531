"""Intake's fast paths give the same bytes as the general ones: the worker pool as one process,
and the plain-dict validation as pydantic's (same values, same reasons and messages)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from posepipe.annotation import intake, labelme_format
from posepipe.annotation.intake import ingest_labelme
from posepipe.datasets.store import PoseStore
from tests.test_labelme_intake import _cases, _jpeg, good  # noqa: F401  (good is a fixture)


def _shape(label, points, kind="point", group=1, **extra):
    return {"label": label, "points": points, "group_id": group, "shape_type": kind, **extra}


def _person(dx=0.0, **joint_extra):
    return [_shape("person", [[5.0 + dx, 5.0], [40.0 + dx, 40.0]], "rectangle"),
            _shape("nose", [[10.5 + dx, 12.25]], flags={"occluded": False}, description=""),
            _shape("left_eye", [[14.0 + dx, 11.0]], flags={"occluded": True}, **joint_extra)]


def _corpus(root: Path, good: tuple[dict, bytes]) -> None:
    """Good files (embedded and beside), every bad case, coercions pydantic makes, extras, a
    duplicate image and a file rejected after its image was stored."""
    doc, data = good
    root.mkdir()
    (root / "img.jpg").write_bytes(data)
    (root / "bad").mkdir()
    for name, (content, _, _) in _cases(doc).items():
        if name == "notimage":  # PIL's message for it holds a memory address: not the same twice
            continue
        (root / "bad" / f"{name}.json").write_text(content if isinstance(content, str) else json.dumps(content))
    variants = {
        "plain": {}, "twopeople": {"shapes": _person() + [dict(s, group_id=2) for s in _person(10.0)]},
        "intcoords": {"shapes": [dict(s, points=[[int(c) for c in p] for p in s["points"]]) for s in _person()]},
        "strgroup": {"shapes": [dict(s, group_id="1") for s in _person()]},
        "floatsize": {"imageHeight": 48.0}, "difficult1": {"shapes": _person(difficult=1)},
        "extras": {"shapes": _person(score=0.5, kie_linking=[], attributes={"a": [None, {"b": 1}]}, mask=None),
                   "lineColor": [0, 255, 0, 128], "otherData": {"k": None}},
        "nan": {"shapes": _person()[:2] + [_shape("left_eye", [[float("nan"), 1.0]])]},
        "far": {"shapes": [_shape("person", [[5.0, 5.0], [15.0, 15.0]], "rectangle"), _shape("nose", [[10.0, 12.0]]),
                           _shape("left_eye", [[60.0, 45.0]])]},  # rejected after its image is stored
        "crowd": {"flags": {"crowd": True}, "shapes": [dict(s, flags={"crowd": True}) if s["label"] == "person"
                                                       else s for s in _person()]},
        "ungrouped": {"shapes": [dict(s, group_id=None) for s in _person()]},
    }
    for i, (name, change) in enumerate(variants.items()):
        image = _jpeg(1000 + i)
        file = {"version": "5.5.0", "flags": {}, "shapes": _person(), "imagePath": f"{name}.jpg", "imageData": None,
                "imageHeight": 48, "imageWidth": 64, **change}
        if i % 2:
            file["imageData"] = base64.b64encode(image).decode()
        else:
            (root / f"{name}.jpg").write_bytes(image)
        (root / f"{name}.json").write_text(json.dumps(file))
    shutil.copy(root / "plain.json", root / "plain_again.json")  # the same image twice: a duplicate
    for i in range(40):  # enough files that every worker gets several chunks
        file = {"version": "7.1.0", "shapes": _person(i % 7), "imagePath": f"many/{i}.jpg",
                "imageData": base64.b64encode(_jpeg(2000 + i)).decode(), "imageHeight": 48, "imageWidth": 64}
        (root / "many").mkdir(exist_ok=True)
        (root / "many" / f"{i:02d}.json").write_text(json.dumps(file))


def _run(tmp_path: Path, name: str, good, monkeypatch, **kwargs) -> dict:
    """Ingest a fresh copy of the corpus twice (the second after a change) and return every byte written."""
    work = tmp_path / name
    work.mkdir()
    monkeypatch.chdir(work)
    _corpus(work / "intake", good)
    store = PoseStore(work / "store")
    reports = [ingest_labelme(store, work / "intake", "lm", annotator="ann", **kwargs, settle=0).to_dict()]
    changed = json.loads((work / "intake/many/03.json").read_text())
    changed["shapes"][1]["points"] = [[20.0, 21.0]]
    (work / "intake/many/03.json").write_text(json.dumps(changed))
    (work / "intake/many/07.json").unlink()
    reports.append(ingest_labelme(store, work / "intake", "lm", annotator="ann", prune=True, **kwargs, settle=0).to_dict())
    files = {p.relative_to(work).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(work.rglob("*")) if p.is_file() and ".lock" not in p.name}
    return {"reports": json.loads(json.dumps(reports, default=str)), "files": files}


def test_pool_and_plain_dicts_give_the_same_bytes(tmp_path, good, monkeypatch):
    serial = _run(tmp_path, "serial", good, monkeypatch, workers=1)
    pooled = _run(tmp_path, "pooled", good, monkeypatch, workers=2)
    assert pooled == serial
    # every file through pydantic (the general path) gives the same bytes as the plain-dict path
    monkeypatch.setattr(labelme_format, "_plain", lambda doc: False)
    general = _run(tmp_path, "general", good, monkeypatch, workers=1)
    assert general == serial

    first = serial["reports"][0]
    assert first["files_read"] == first["files_accepted"] + first["files_rejected"]
    assert first["reasons"]["duplicate_image"] == 1 and first["reasons"]["implausible_person"] == 3
    outcomes = {f["relative"]: f for f in first["files"]}
    for coerced in ("intcoords.json", "strgroup.json", "floatsize.json", "difficult1.json", "extras.json"):
        assert outcomes[coerced]["status"] == "accepted", outcomes[coerced]
    assert outcomes["nan.json"]["reason"] == "nonfinite_coordinate"
    assert outcomes["far.json"]["reason"] == "implausible_person"
    assert outcomes["plain_again.json"]["reason"] == "duplicate_image"
    assert any(k.startswith("store/shards/") for k in serial["files"])
    second = serial["reports"][1]
    assert second["files_read"] == 1 and second["pruned"] == 1


def test_plain_dicts_match_pydantic_values():
    data = json.dumps({"version": "5.5.0", "flags": {"crowd": False}, "imageHeight": 4, "imageWidth": 5,
                       "imagePath": "a.jpg", "imageData": None, "top_extra": [1, {"x": None}],
                       "shapes": [_shape("nose", [[1, 2.5]], description="", mask=None, score=0.9),
                                  {"label": "left_eye", "points": [[3.0, 4.0]]}]}).encode()
    plain = labelme_format.load(data)
    assert plain["shapes"][0]["points"] == [[1.0, 2.5]] and type(plain["shapes"][0]["points"][0][0]) is float
    assert labelme_format.to_plain(labelme_format.parse(data)) == {
        **{k: None for k in labelme_format.FILE_KEYS}, **plain,
        "shapes": [{**{k: None for k in labelme_format.SHAPE_FIELDS}, **s} for s in plain["shapes"]]}
    # values the model coerces, and nesting deeper than pydantic parses, go through pydantic
    assert labelme_format.load(data.replace(b'"imageHeight": 4', b'"imageHeight": "4"'))["imageHeight"] == 4
    deep = json.dumps({"shapes": [], "flags": {"a": [[[]]]}}).replace("[[[]]]", "[" * 300 + "]" * 300)
    with pytest.raises(labelme_format.ValidationError, match="recursion limit"):
        labelme_format.load(deep.encode())


def test_small_folders_stay_in_one_process(monkeypatch):
    assert intake._worker_count(None, intake.POOL_MIN_FILES - 1) == 1
    assert intake._worker_count(1, 10_000) == 1 and intake._worker_count(2, 3) == 2
    monkeypatch.setattr(intake.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert intake._worker_count(None, intake.POOL_MIN_FILES) == 2
