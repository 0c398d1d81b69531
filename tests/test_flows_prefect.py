"""The flows under Prefect (a session-wide prefect_test_harness): artifacts, Dask fan-out, cancellation,
and the main job end to end with its report rendered in headless Chromium.

Waits are on conditions with generous deadlines (tests.waiting): a loaded machine makes these
slower, never red."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from posepipe.datasets.store import PoseStore
from posepipe.flows import ingest_flow, pipeline, synth_flow, train_flow
from tests.conftest import REPO
from tests.test_train_support import train_workspace  # noqa: F401  (session fixture)
from tests.waiting import LONG, wait_until

TINY_SYNTH = {"images": 4, "slices": 2, "workers": 2, "width": 64, "height": 96, "engine": "workbench",
              "samples": 1}


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=LONG):
        yield


def _artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert found, f"no artifact {key}"
    return max(found, key=lambda a: a.created)


def test_ingest_flow_is_incremental_and_publishes_counts(prefect_harness, shared_data, tmp_path):
    mini = shared_data / "coco-mini"
    drop = tmp_path / "drop"
    shutil.copytree(shared_data / "labelme-samples", drop)
    coco = [{"source": "coco-val", "annotations": str(mini / "annotations/person_keypoints_val2017.json"),
             "images": str(mini / "val2017")}]
    labelme = [{"source": "labelme/drop", "folder": str(drop), "quarantine_mode": "copy",
                "quarantine": str(tmp_path / "q")}]
    store = str(tmp_path / "store")
    first = ingest_flow.ingest(store=store, params=None, coco=coco, labelme=labelme)
    assert [r["unchanged"] for r in first] == [False, False]
    assert first[0]["accepted"] == 118 and first[1]["accepted"] == 1 and first[1]["rejected"] >= 1
    text = _artifact(ingest_flow.ARTIFACT_KEY).data
    assert "| coco-val | coco (annotations) |" in text and "`no_keypoints`" in text

    (drop / "x-anylabeling-pose" / "human-pose.json").rename(drop / "x-anylabeling-pose" / "second.json")
    again = ingest_flow.ingest(store=store, params=None, coco=coco, labelme=labelme)
    assert again[0]["unchanged"] and again[1]["read"] == 1  # only the new file name was read
    assert PoseStore(store).instances(["coco-val"]).num_rows == 118


def test_ingest_flow_reads_a_split_file_from_a_task_thread(prefect_harness, shared_data, tmp_path, monkeypatch):
    """A large file is read by this process and a forked helper, here forked from a Prefect task
    thread while Prefect's own threads run: the rows equal a plain one-process ingest's."""
    from posepipe.datasets.coco import ingest_coco
    from tests.test_ingest_paths_agree import _split_always

    mini = shared_data / "coco-mini"
    ann, images = mini / "annotations/person_keypoints_train2017.json", mini / "train2017"
    plain = PoseStore(tmp_path / "plain")
    ingest_coco(plain, ann, images, "coco-train", fast=False)
    outcomes = _split_always(monkeypatch)
    coco = [{"source": "coco-train", "annotations": str(ann), "images": str(images)}]
    (result,) = ingest_flow.ingest(store=str(tmp_path / "store"), params=None, coco=coco, labelme=[])
    assert outcomes == ["taken"] and result["accepted"] == plain.instances().num_rows
    for name in ("images", "instances", "rejects"):
        assert getattr(PoseStore(tmp_path / "store"), name)().equals(getattr(plain, name)())


def test_synth_flow_fans_out_over_a_local_dask_cluster_of_two_workers(prefect_harness, tmp_path, monkeypatch):
    import dask.config

    # Dask's 30 s connection timeouts are for networks; workers starting on two busy cores may
    # take longer to answer. Environment variables reach the worker processes too.
    for name in ("CONNECT", "TCP"):
        monkeypatch.setenv(f"DASK_DISTRIBUTED__COMM__TIMEOUTS__{name}", f"{LONG}s")
    dask.config.refresh()
    store = str(tmp_path / "store")
    flow = synth_flow.synth_with_runner(dask=True, workers=2)
    result = flow(store=store, spec={**TINY_SYNTH, "run": "dask"})
    assert result["slices"] == 2 and result["rendered"] == 4 and result["processes"] == 2  # one Blender each
    assert PoseStore(store).images(["synth/dask"]).num_rows == 4
    # Same seeds, same bytes: a re-run renders nothing new.
    assert flow(store=store, spec={**TINY_SYNTH, "run": "dask"})["unchanged"] == 4
    # The slices are parts of one run: the same images, byte for byte, as `posepipe synth --count 4
    # --seed 0` in one piece (what the dvc.yaml stage runs).
    from posepipe.synth.core.scene import SceneConfig
    from posepipe.synth.run import SynthOptions, synth_run

    whole = PoseStore(tmp_path / "whole")
    synth_run(whole, SynthOptions(count=4, seed=0, width=64, height=96, engine="workbench", samples=1,
                                  source="synth/dask", config=SceneConfig(width=64, height=96)))
    for table in ("images", "batches"):
        cols = ["image_id", "sha256"] if table == "images" else ["source_file", "file_sha256"]
        got = getattr(PoseStore(store), table)(["synth/dask"]).select(cols).sort_by(cols[0])
        assert got.equals(getattr(whole, table)(["synth/dask"]).select(cols).sort_by(cols[0])), table


def _torchrun_pids(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker in cmd and state != "Z":
                pids.append(int(entry.name))
    return pids


def test_cancelled_train_flow_leaves_no_torchrun_process(prefect_harness, train_workspace, tmp_path):  # noqa: F811
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterId, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelling

    _, manifest = train_workspace
    out = tmp_path / "cancel"
    spec = {"nproc": 2, "max_steps": 100000, "batch_size": 8, "workers": 1, "threads": 1, "retries": 2,
            "export": False}
    states = []
    runner = threading.Thread(target=lambda: states.append(
        train_flow.train(manifest=str(manifest), out=str(out), spec=spec, return_state=True)))
    runner.start()
    log = out / "train" / "train_log.jsonl"
    wait_until("the first training step", lambda: (log.exists() and "step" in log.read_text())
               or not runner.is_alive(), LONG, interval=0.2)
    pids = _torchrun_pids(str(out))
    assert len(pids) >= 3, f"expected torchrun and 2 ranks running, found {pids}"  # launcher + ranks (+ workers)
    with get_client(sync_client=True) as client:
        running = [r for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                   type=FlowRunFilterStateType(any_=[StateType.RUNNING]))), limit=200)
                   if r.name and r.parameters.get("out") == str(out)]
        assert len(running) == 1
        client.set_flow_run_state(running[0].id, Cancelling(), force=True)  # what `prefect flow-run cancel` does
        runner.join(timeout=LONG)
        assert not runner.is_alive()
        final = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[running[0].id])))[0]
    assert states[0].is_cancelled() and final.state.is_cancelled()
    assert _torchrun_pids(str(out)) == [], "a torchrun process survived the cancellation"
    assert not any(train_flow.group_alive(pid) for pid in pids)


@pytest.mark.slow
def test_main_job_end_to_end_with_report_in_chromium(prefect_harness, tmp_path):
    params = tmp_path / "params.yaml"
    import yaml

    doc = yaml.safe_load((REPO / "params.yaml").read_text())
    section = doc["pipeline"]
    for entry in section["ingest"]["coco"]:  # paths in params.yaml are relative to the repo
        entry["annotations"], entry["images"] = str(REPO / entry["annotations"]), str(REPO / entry["images"])
    section["ingest"]["labelme"][0].update(folder=str(REPO / section["ingest"]["labelme"][0]["folder"]),
                                           quarantine=str(tmp_path / "quarantine"))
    section["synth"].update(TINY_SYNTH, run="e2e", images=8)
    section["train"].update(max_steps=4, batch_size=8, calibration=8, latency_runs=3, threads=1)
    params.write_text(yaml.safe_dump(doc))
    out = tmp_path / "run"

    summary = pipeline.pipeline(params=str(params), out=str(out))
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == list(pipeline.STAGES)
    assert stages["release"]["status"] == "skipped" and "--release" in stages["release"]["detail"]
    assert all(stages[s]["status"] == "done" for s in ("ingest", "synth", "mix", "train", "export", "compare"))
    compare = json.loads((out / "compare" / "results.json").read_text())
    assert compare["spec"]["arms"] == ["real-only", "mix-visibility"] and compare["spec"]["seeds"] == [0]
    assert "vs real-only" in stages["compare"]["detail"] and "coco-val" in stages["compare"]["detail"]
    mix = json.loads((out / "mix" / "report.json").read_text())
    assert mix["ratio"] == "1:3" and mix["synthetic_sources"] == ["synth/e2e"]
    export = json.loads((out / "export" / "export_report.json").read_text())
    assert export["size_int8"] < export["size_fp32"]
    assert "# posepipe pipeline" in _artifact(pipeline.SUMMARY_ARTIFACT_KEY).data

    page = Path(summary["report"]).read_text()
    assert page.count("data:image/png;base64,") >= 4  # real and synthetic gallery
    assert 'class="col synthetic"><h3>Synthetic (' in page and "FP32 vs INT8" in page
    assert "Loss per step" in page and "head_below_hips" in page
    assert "Does synthetic help?" in page and "Short version: 2 arms, 1 seed" in page
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): the screenshot was not taken")
    shot = tmp_path / "report.png"
    # Its own profile (no lock shared with another Chromium), and a virtual-time budget: the shot
    # is taken once the page has loaded, laid out and decoded its images, however slow the machine.
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=30000",
                           "--run-all-compositor-stages-before-draw",
                           "--window-size=1200,2400", f"--screenshot={shot}", Path(summary["report"]).as_uri()],
                          capture_output=True, text=True, timeout=LONG)
    assert proc.returncode == 0, proc.stderr[-500:]
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1200, 2400)
        colours = img.convert("RGB").resize((60, 120)).getcolors(maxcolors=100000)
    assert len(colours) > 50, "the screenshot is blank"  # a rendered page with pictures and charts


def test_experiment_flow_trains_scores_and_resumes(prefect_harness, train_workspace, model_cache, tmp_path):  # noqa: F811
    """Three arms from pulled MoveNet Lightning (torchrun, 2 processes each), scored on coco-val;
    then the CLI on the same folder trains nothing and writes the same tables and the page."""
    from posepipe.flows import experiment_flow
    from posepipe.pretrained.pull import pull
    from posepipe.training import evaluate, experiment

    pull("movenet-lightning", model_cache)
    _, manifest = train_workspace
    out = tmp_path / "exp"
    spec = {"manifest": str(manifest), "out": str(out), "arms": ["real-only", "mix-visibility", "synth-then-real"],
            "seeds": [0], "steps": 2, "starts": ["movenet-lightning"], "batch_size": 8, "bootstrap": 100}
    summary = experiment_flow.experiment(spec=spec)
    assert summary["runs"] == 3 and summary["headline"][0]["set"] == experiment.MANIFEST_VAL
    results = json.loads((out / "results.json").read_text())
    arms = {r["arm"] for r in results["rows"]}
    assert arms == {"start", "real-only", "mix-visibility", "synth-then-real"}
    parsed = experiment.ExperimentSpec.from_mapping(spec)
    gt = out / "sets" / experiment.MANIFEST_VAL / "val_gt.json"
    for run in experiment.plan(parsed):
        folder = run.folder(out)
        done = json.loads((folder / "run.json").read_text())
        assert done["steps"] == 2
        reference = evaluate.coco_eval(gt, folder / "eval" / experiment.MANIFEST_VAL / "predictions.json")
        assert done["sets"][experiment.MANIFEST_VAL]["AP"] == reference["AP"]
        row = next(r for r in results["rows"] if r["arm"] == run.arm and r["subset"] == "all")
        assert row["AP"] == round(reference["AP"], 4)
    staged = experiment.plan(parsed)[2].folder(out)
    assert json.loads((staged / "pretrain" / "train_result.json").read_text())["steps"] == 1
    assert json.loads((staged / "train" / "train_result.json").read_text())["steps"] == 1
    assert [p["stage"] for p in json.loads((staged / "curve.json").read_text())] == ["pretrain", "train"]
    assert "# Does synthetic data help?" in _artifact(experiment_flow.ARTIFACT_KEY).data

    proc = subprocess.run([sys.executable, "-m", "posepipe.flows.cli", "experiment", "--manifest", str(manifest),
                           "--out", str(out), "--arms", "real-only,mix-visibility,synth-then-real", "--seeds", "0",
                           "--steps", "2", "--start", "movenet-lightning", "--bootstrap", "100", "--no-prefect",
                           "--json"], capture_output=True, text=True, timeout=LONG)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torchrun" not in proc.stderr and "epoch 1/" not in proc.stderr  # every run was kept
    again = json.loads(proc.stdout)
    assert again["rows"] == results["rows"]
    assert "Does synthetic data help?" in Path(again["report"]).read_text()


def test_experiment_lanes_fan_out_over_a_local_dask_cluster(prefect_harness, train_workspace, model_cache, tmp_path):  # noqa: F811
    """Two seeds in two lanes, each lane a task on its own Dask worker process, each run its own torchrun."""
    from posepipe.flows import experiment_flow
    from posepipe.pretrained.pull import pull
    from posepipe.training import experiment

    pull("movenet-lightning", model_cache)
    _, manifest = train_workspace
    spec = {"manifest": str(manifest), "out": str(tmp_path / "exp"), "arms": ["real-only"], "seeds": [0, 1],
            "steps": 1, "starts": ["movenet-lightning"], "nproc": 1, "parallel": 2, "bootstrap": 20}
    parsed = experiment.ExperimentSpec.from_mapping(spec)
    assert [len(lane.runs) for lane in experiment.lanes(parsed)] == [1, 1]
    summary = experiment_flow.experiment_with_runner(dask=True, workers=2)(spec=spec)
    assert summary["runs"] == 2
    runs = [json.loads((r.folder(parsed.folder) / "run.json").read_text()) for r in experiment.plan(parsed)]
    assert [r["seed"] for r in runs] == [0, 1] and all(r["steps"] == 1 for r in runs)
    logs = [json.loads(line) for r in experiment.plan(parsed)
            for line in (r.folder(parsed.folder) / "train" / "train_log.jsonl").read_text().splitlines()]
    assert {e["schedule"] for e in logs if e.get("event") == "start"} == {"steps"}
