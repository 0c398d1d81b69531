"""The orchestration's business logic, called directly (no Prefect engine runs here)."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
import yaml

from posepipe.datasets import schema
from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.store import PoseStore
from posepipe.flows import ingest_flow, report, synth_flow, train_flow
from posepipe.flows.pipeline import PipelineConfig, stage_release
from tests.conftest import REPO
from tests.test_settle import FakeTime


def test_unit_slices_cover_every_image_once():
    spec = synth_flow.SynthSpec(images=10, slices=4, seed=7)
    assert synth_flow.unit_slices(spec) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert synth_flow.unit_slices(synth_flow.SynthSpec(images=1, slices=4, seed=0)) == [(0, 1)]
    with pytest.raises(PosepipeError, match="'colour' is not a setting"):
        synth_flow.SynthSpec.from_mapping({"colour": 1})
    with pytest.raises(PosepipeError, match=r"pipeline.synth.rig: .*nope.json: joint map not found"):
        synth_flow.SynthSpec.from_mapping({"rig": "nope.json"})


def test_pipeline_config_reads_the_bundled_params():
    cfg = PipelineConfig.load(REPO / "params.yaml", out="x/run")
    assert [s.source for s in cfg.coco] == ["coco-train", "coco-val"] and cfg.labelme[0].quarantine_mode == "copy"
    assert str(cfg.store) == "x/run/store" and cfg.synth.source == "synth/demo"
    assert cfg.mix["ratio"] == "1:3" and cfg.mix["split_seed"] == 0  # pipeline.mix over mix:
    # coco-val is ingested but held out of the mix: the AP is measured on it.
    assert cfg.train.nproc == 2 and cfg.real_sources == ["coco-train", "labelme-samples"]
    assert cfg.held_out == ["coco-val"] and cfg.train.val_sources == ["coco-val"]
    assert cfg.train.init == "movenet-thunder" and cfg.qa == {"model": "movenet-thunder", "sources": []}
    real_only = PipelineConfig.load(REPO / "params.yaml", synth_images=0)
    assert real_only.synth is None and real_only.mix["ratio"] == "0:1" and real_only.train.ratio == "0:1"


def test_pipeline_config_errors_are_one_line(tmp_path):
    doc = yaml.safe_load((REPO / "params.yaml").read_text())
    doc["pipeline"]["ingest"]["coco"][0]["annotations"] = str(tmp_path / "missing.json")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(doc))
    with pytest.raises(PosepipeError, match=r"source coco-train: annotation file .*missing.json not found"):
        PipelineConfig.load(params).check()
    doc["pipeline"]["trian"] = {}
    params.write_text(yaml.safe_dump(doc))
    with pytest.raises(PosepipeError, match="pipeline.trian is not a pipeline setting"):
        PipelineConfig.load(params)
    with pytest.raises(PosepipeError, match="give exactly one of epochs and max_steps"):
        train_flow.TrainSpec.from_mapping({"epochs": 2, "max_steps": 3})
    del doc["pipeline"]["trian"]
    doc["pipeline"]["ingest"]["coco"][0]["annotations"] = str(REPO.parent / "shared/data/coco-mini/annotations/"
                                                                "person_keypoints_train2017.json")
    doc["pipeline"]["train"]["val_sources"] = ["coco-test"]
    params.write_text(yaml.safe_dump(doc))
    with pytest.raises(PosepipeError, match="val_sources names 'coco-test', which pipeline.ingest does not ingest"):
        PipelineConfig.load(params).check()


def test_release_is_skipped_with_the_reason(tmp_path):
    cfg = PipelineConfig.load(REPO / "params.yaml", out=tmp_path)
    assert stage_release(cfg) == {"status": "skipped",
                                  "reason": "no release asked for (posepipe run --release NAME)"}
    cfg.release, cfg.store = "r1", tmp_path.parent / "elsewhere"
    with pytest.raises(PosepipeError, match="needs its store inside"):
        stage_release(cfg)


def test_labelme_batch_counts_and_markdown_name_every_reason(shared_data, tmp_path):
    folder = tmp_path / "drop"
    shutil.copytree(shared_data / "labelme-samples", folder)
    spec = ingest_flow.LabelmeSpec(source="labelme/drop", folder=str(folder), quarantine=str(tmp_path / "q"),
                                   quarantine_mode="copy")
    first = ingest_flow.ingest_labelme_batch(str(tmp_path / "store"), spec)
    assert first["read"] == first["accepted"] + first["rejected"] and first["accepted"] == 1
    assert first["reasons"] == {"no_keypoints": first["rejected"]} and first["rejected"] >= 1
    text = ingest_flow.summary_markdown([first])
    assert "`no_keypoints`" in text and schema.REASONS["no_keypoints"] in text
    assert all(f"`{f['file']}`" in text for f in first["rejected_files"])
    again = ingest_flow.ingest_labelme_batch(str(tmp_path / "store"), spec)
    assert again["unchanged"] and again["read"] == 0


def test_skeleton_drawing_marks_occluded_joints_differently():
    image = np.zeros((60, 60, 3), np.uint8)
    kp = np.zeros((17, 3), np.float32)
    kp[0] = (15, 15, 2)  # nose visible
    kp[5] = (45, 45, 1)  # left shoulder occluded
    drawn = report.draw_person(image, kp)
    assert tuple(drawn[15, 15]) == report.VISIBLE_COLOUR  # filled centre
    assert tuple(drawn[45, 45]) == (0, 0, 0)  # hollow ring: centre untouched
    ring = drawn[40:51, 40:51].reshape(-1, 3)
    assert (np.abs(ring.astype(int) - report.OCCLUDED_COLOUR).sum(axis=1) < 60).any()
    assert not drawn[0:5].any()  # v=0 joints (at 0, 0) are not drawn


def test_report_without_training_says_what_is_missing(coco_store, tmp_path):
    inputs = report.ReportInputs(store=coco_store.root, real_sources=["coco-train", "coco-val"], synth_sources=[],
                                 mix_dir=tmp_path / "none", gallery_per_kind=3)
    page, numbers = report.render_html(inputs)
    assert page.count('<img src="data:image/png;base64,') == 3
    assert numbers["visibility"]["coco-train"]["people"] == 172
    assert set(numbers["extreme_shares"]) == {"real"}
    assert "no mix in this run" in page and "no training in this run" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained


def _aged(path) -> None:
    old = time.time() - 3600
    os.utime(path, (old, old))


def test_a_coco_batch_still_being_written_is_skipped_whole_then_taken(shared_data, tmp_path):
    mini = shared_data / "coco-mini"
    data = (mini / "annotations/person_keypoints_val2017.json").read_bytes()
    images = tmp_path / "val2017"
    shutil.copytree(mini / "val2017", images)  # copies keep the old mtimes: settled
    ann = tmp_path / "val.json"
    ann.write_bytes(data[: len(data) // 2])
    spec = ingest_flow.CocoSpec(source="coco-val", annotations=str(ann), images=str(images))
    store = str(tmp_path / "store")
    size = [len(data) // 2]

    def trickle(t):  # the download goes on for as long as the batch looks
        with open(ann, "ab") as fh:
            fh.write(data[size[0]: size[0] + 4096])
        size[0] += 4096

    logs: list[str] = []
    t = FakeTime(time.time(), trickle)
    result = ingest_flow.ingest_coco_batch(store, spec, settle=5, clock=t.clock, sleep=t.sleep, log=logs.append)
    assert result["skipped"].startswith("still being written: ") and str(ann) in result["skipped"]
    assert result["fatal"] is None and result["read"] == 0 and ingest_flow.fatal_error([result]) is None
    assert "skipped: still being written" in ingest_flow.summary_markdown([result])
    assert len(logs) == 1 and "a later run takes it" in logs[0]
    assert PoseStore(store).sources() == []

    # The annotation file is done, but an image is being copied again: still skipped whole.
    ann.write_bytes(data)
    _aged(ann)
    image = sorted(images.iterdir())[0]
    content = image.read_bytes()
    image.write_bytes(content[:100])

    def finish(t):
        if len(t.naps) == 1:
            image.write_bytes(content)

    t = FakeTime(time.time(), finish)
    result = ingest_flow.ingest_coco_batch(store, spec, settle=5, clock=t.clock, sleep=t.sleep, log=logs.append)
    assert result["skipped"] is None and result["accepted"] == 118 and result["rejected"] == 0, result
    assert PoseStore(store).rejects(["coco-val"]).num_rows == 0


def test_a_watched_folder_that_is_gone_is_a_warning_and_changes_nothing(shared_data, tmp_path):
    folder = tmp_path / "drop"
    shutil.copytree(shared_data / "labelme-samples", folder)
    spec = ingest_flow.LabelmeSpec(source="labelme/drop", folder=str(folder), quarantine_mode="copy",
                                   quarantine=str(tmp_path / "q"), watch=True, prune=True)
    store = str(tmp_path / "store")
    first = ingest_flow.ingest_labelme_batch(store, spec)
    kept = PoseStore(store).batches(["labelme/drop"]).num_rows
    assert first["accepted"] == 1 and kept == first["read"]
    folder.rename(tmp_path / "away")
    logs: list[str] = []
    gone = ingest_flow.ingest_labelme_batch(store, spec, log=logs.append)
    assert gone["skipped"] and "does not exist" in gone["skipped"] and gone["read"] == 0
    assert len(logs) == 1 and logs[0].startswith("WARNING") and "the next scan looks again" in logs[0]
    assert PoseStore(store).batches(["labelme/drop"]).num_rows == kept  # nothing pruned, nothing lost
    ingest_flow.check_inputs([], [spec])  # a watched folder may be away
    with pytest.raises(PosepipeError, match="not found"):
        ingest_flow.check_inputs([], [ingest_flow.LabelmeSpec(source="s", folder=str(folder))])
    with pytest.raises(PosepipeError, match="does not exist"):  # not watched: an error, as before
        ingest_flow.ingest_labelme_batch(store, ingest_flow.LabelmeSpec(source="labelme/drop", folder=str(folder)))


@pytest.mark.parametrize("entry, message", [
    ({"settle": "soon"}, "settle must be a number"), ({"settle": -2}, "settle must be 0"),
    ({"watch": "yes"}, "watch must be true or false"), ({"prune": 1}, "prune must be true or false"),
])
def test_bad_settle_and_watch_entries_are_one_line_errors(entry, message):
    with pytest.raises(PosepipeError, match=message):
        ingest_flow.specs_from_section({"labelme": [{"source": "s", "folder": "f", **entry}]}, "params.yaml: ingest")


def test_settle_in_params_entries():
    coco, labelme = ingest_flow.specs_from_section(
        {"coco": [{"source": "c", "annotations": "a.json", "images": "i", "settle": 0}],
         "labelme": [{"source": "s", "folder": "f", "settle": "2.5", "watch": True}]}, "x")
    assert coco[0].settle == 0.0 and labelme[0].settle == 2.5 and labelme[0].watch is True
