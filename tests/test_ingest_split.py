"""The two-process COCO reader (``coco_split``): same output as one pass, or it steps aside.

Every case is checked against the one-process per-record reader with ``_both_paths`` (equal
tables, equal reports, byte-identical store files); here the cases are the ones only a split
file has: rejects in both halves, an id in both halves, a keypoint-field switch across the cut,
a cut inside a string, and a helper process that fails.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from posepipe.datasets import coco, coco_split
from posepipe.datasets.forked import ChildFailed, ForkedChild
from posepipe.datasets.store import PoseStore

from .test_ingest_paths_agree import _both_paths, _split_always


@pytest.fixture(scope="module")
def train(shared_data) -> tuple[dict, Path]:
    """coco-mini train: its first 20 images and their labelled annotations."""
    src = shared_data / "coco-mini"
    doc = json.loads((src / "annotations/person_keypoints_train2017.json").read_text())
    doc["images"] = doc["images"][:20]
    ids = {im["id"] for im in doc["images"]}
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in ids and a["num_keypoints"] > 2]
    assert len(doc["annotations"]) >= 8
    return doc, src / "train2017"


def _write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    return path


def _halves(doc: dict) -> tuple[list[dict], list[dict]]:
    """The records on each side of the cut the split reader will make in this file."""
    raw = json.dumps(doc["annotations"]).encode()
    cut = coco_split._BOUNDARY.search(raw, len(raw) // 2)
    first = json.loads(raw[:cut.start() + 1] + b"]")
    return doc["annotations"][:len(first)], doc["annotations"][len(first):]


def _children() -> set[str]:
    """Child process ids of this test process (others, e.g. a Prefect server, may run beside)."""
    return {c for task in Path("/proc/self/task").iterdir() for c in (task / "children").read_text().split()}


def test_rejects_from_both_halves_come_out_in_one_pass_order(tmp_path, train, monkeypatch):
    doc = copy.deepcopy(train[0])
    first, second = _halves(doc)
    first[1]["bbox"] = [99999, 0, 10, 10]  # a late check (bbox) in the first half
    j = next(j for j in range(17) if second[1]["keypoints"][3 * j + 2] > 0)
    second[1]["keypoints"][3 * j] = -5  # an early check (negative coordinate) in the second half
    first[2]["category_id"] = 7  # structural, first half
    second[2]["id"] = "x"  # structural, second half
    outcomes = _split_always(monkeypatch)
    report, _ = _both_paths(tmp_path, _write(tmp_path, doc), train[1], monkeypatch)
    assert outcomes == ["taken"]
    rows = [(r["record_id"], r["reason"]) for r in PoseStore(tmp_path / "fast").rejects().to_pylist()]
    assert rows == [
        (str(first[2]["id"]), "not_person_category"), ("x", "bad_type"),
        (str(second[1]["id"]), "negative_coordinate"), (str(first[1]["id"]), "bbox_outside_image"),
    ]
    assert report.annotations_rejected == 4 and report.annotations_read == len(doc["annotations"])


def test_an_id_the_second_half_repeats_is_rejected_there_as_one_pass_does(tmp_path, train, monkeypatch):
    doc = copy.deepcopy(train[0])
    first, second = _halves(doc)
    second[0]["id"] = first[0]["id"]
    second[1]["id"] = first[1]["id"]
    second[1]["category_id"] = 7  # one pass sees the copied id before the category
    outcomes = _split_always(monkeypatch)
    report, _ = _both_paths(tmp_path, _write(tmp_path, doc), train[1], monkeypatch)
    assert outcomes == ["taken"] and report.reasons == {"duplicate_annotation_id": 2}


def test_a_keypoint_field_switch_across_the_cut_is_left_to_one_pass(tmp_path, shared_data, monkeypatch):
    """Human-Art keeps 21 joints in ``keypoints_21``; one pass switches to it for good at the first
    record that has it, so the records before the switch and after it read differently."""
    pose = shared_data / "pose-samples/humanart"
    doc = json.loads((pose / "test_humanart.json").read_text())
    template = doc["annotations"][0]
    doc["annotations"] = [dict(template, id=i + 1) for i in range(8)]
    for rec in doc["annotations"][:4]:
        del rec["keypoints_21"]  # rejected as too short for 21 joints before the switch
    outcomes = _split_always(monkeypatch)
    report, _ = _both_paths(tmp_path, _write(tmp_path, doc), pose, monkeypatch, skeleton="humanart21")
    assert outcomes == ["declined"]
    assert report.annotations_accepted == 4 and report.reasons == {"keypoints_length": 4}


def test_a_cut_inside_a_string_is_left_to_one_pass(tmp_path, train, monkeypatch):
    doc = copy.deepcopy(train[0])
    doc["annotations"][len(doc["annotations"]) // 2]["comment"] = "},{" * 20000  # covers the middle
    outcomes = _split_always(monkeypatch)
    report, _ = _both_paths(tmp_path, _write(tmp_path, doc), train[1], monkeypatch)
    assert outcomes == ["declined"] and report.annotations_accepted == len(doc["annotations"])


def test_a_failing_helper_process_is_redone_here_and_leaves_no_process(tmp_path, train, monkeypatch):
    check = coco._check_annotations

    def failing_in_the_child(ctx, annotations, category_id, skel, offset=0):
        if offset:  # only the child reads from a record other than the first
            raise MemoryError("simulated")
        return check(ctx, annotations, category_id, skel, offset)

    monkeypatch.setattr(coco, "_check_annotations", failing_in_the_child)
    outcomes = _split_always(monkeypatch)
    before = _children()
    report, _ = _both_paths(tmp_path, _write(tmp_path, train[0]), train[1], monkeypatch)
    assert outcomes == ["declined"] and report.annotations_accepted == len(train[0]["annotations"])
    assert _children() <= before


def test_forked_child_hands_back_a_header_and_a_table():
    data = list(range(1000))  # the child reads the parent's memory as it was at the fork
    before = _children()

    def work(prepared, message):
        return {"sum": prepared + message["add"]}, pa.table({"x": pa.array(data[message["add"]:])})

    with ForkedChild(lambda: sum(data), work) as child:
        child.send({"add": 990})
        header, table = child.result()
    assert header == {"sum": sum(data) + 990} and table.column("x").to_pylist() == data[990:]
    assert _children() <= before


def test_forked_child_failures_reach_the_parent():
    before = _children()

    def broken():
        raise ValueError("cannot prepare")

    with ForkedChild(broken, lambda p, m: ({}, pa.table({}))) as child:
        child.send({})  # the child is gone already: sending must not raise
        with pytest.raises(ChildFailed):
            child.result()
    with ForkedChild(lambda: 1, lambda p, m: ({"not json": {1, 2}}, pa.table({}))) as child:
        child.send({})
        with pytest.raises(ChildFailed):
            child.result()
    with ForkedChild(lambda: 1, lambda p, m: ({}, pa.table({}))) as child:
        pass  # never sent anything: leaving stops the child
    assert _children() <= before


def test_small_files_and_single_cores_stay_in_one_process(monkeypatch):
    assert not coco_split.usable(b"{}")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert not coco_split.usable(b" " * coco_split.MIN_BYTES)


def test_the_hand_over_leaves_a_small_dev_shm_alone(monkeypatch, tmp_path):
    """Containers often mount a 64 MB /dev/shm: a hand-over larger than half its room goes to disk."""
    from posepipe.datasets import forked

    assert forked._scratch_dir(0) in (forked._SHM, None)
    assert forked._scratch_dir(1 << 60) is None
    monkeypatch.setattr(forked, "_SHM", str(tmp_path / "missing"))
    assert forked._scratch_dir(0) is None


def test_one_process_option_keeps_the_annotations_here(tmp_path, train, monkeypatch):
    """``ingest_coco(helper_process=False)`` (CLI ``--one-process``) never forks, whatever the size."""
    outcomes = _split_always(monkeypatch)
    ann = _write(tmp_path, train[0])
    alone = coco.ingest_coco(PoseStore(tmp_path / "alone"), ann, train[1], "src", helper_process=False)
    split = coco.ingest_coco(PoseStore(tmp_path / "split"), ann, train[1], "src")
    assert outcomes == ["taken"] and alone.to_dict() == split.to_dict()
    assert PoseStore(tmp_path / "alone").instances().equals(PoseStore(tmp_path / "split").instances())


def test_no_fork_means_one_process(tmp_path, train, monkeypatch):
    """Where the system refuses a fork (memory or process limits), the file is read here."""
    def refuse():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    outcomes = _split_always(monkeypatch)
    monkeypatch.setattr(os, "fork", refuse)
    report, _ = _both_paths(tmp_path, _write(tmp_path, train[0]), train[1], monkeypatch)
    assert outcomes == ["declined"] and report.annotations_accepted == len(train[0]["annotations"])
