"""The data-value experiment without training: settings, refusals, arm manifests, lanes, statistics.

Training and scoring for real (torchrun, a pulled model, the Prefect flow) are in
tests/test_flows_prefect.py::test_experiment_flow_trains_scores_and_resumes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from posepipe.datasets.errors import PosepipeError
from posepipe.training import evaluate, experiment, oks
from posepipe.training.experiment import ExperimentSpec
from posepipe.training.experiment_stats import dvc_metrics, markdown, write_results
from tests.test_train_support import train_workspace, write_manifest  # noqa: F401  (session fixture)


def _spec(manifest, out, **kw) -> ExperimentSpec:
    values = {"manifest": str(manifest), "out": str(out), "seeds": [0, 1, 2], "steps": 4, "bootstrap": 200,
              "starts": ["scratch:tiny"], **kw}
    return ExperimentSpec.from_mapping(values)


@pytest.mark.parametrize("values, message", [
    ({"steps": 0}, "steps must be at least 1"),
    ({"arms": ["mix-visibility"]}, "must include real-only"),
    ({"arms": ["real-only", "mixed"]}, "unknown arm 'mixed'"),
    ({"seeds": []}, "seeds is empty"),
    ({"ratio": "0:1"}, "is not a mix"),
    ({"batch_size": 6}, "not a multiple of the ratio's block 4"),
    ({"pretrain_share": 1.0}, "pretrain_share must be between 0 and 1"),
    ({"colour": "red"}, "'colour' is not a setting"),
    ({"starts": ["movenet-lightning", "movenet-lightning"]}, "name the same start twice"),
    ({"devices": ["0"], "nproc": 2}, "1 device(s) for runs of nproc 2"),
])
def test_settings_that_make_no_experiment_are_refused(values, message):
    with pytest.raises(PosepipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ExperimentSpec.from_mapping({"manifest": "m", "out": "o", **values})


def test_plan_and_lanes():
    spec = ExperimentSpec.from_mapping({"arms": ["mix-uniform", "real-only"], "seeds": [3, 4], "starts": ["a", "scratch:tiny-up"]})
    runs = experiment.plan(spec)
    assert len(runs) == 8 and runs[0].arm == "real-only" and {r.seed for r in runs} == {3, 4}
    assert runs[0].folder(spec.folder).parts[-3:] == ("a", "real-only", "seed3")
    assert experiment.Start.parse("scratch:tiny-up").model == "tiny-up"
    gpu = experiment.lanes(ExperimentSpec.from_mapping({**spec.to_dict(), "devices": ["0", "1", "2", "3"], "nproc": 2}))
    assert [lane.devices for lane in gpu] == [("0", "1"), ("2", "3")]
    assert {r for lane in gpu for r in lane.runs} == set(runs) and sum(len(lane.runs) for lane in gpu) == 8
    cpu = experiment.lanes(ExperimentSpec.from_mapping({**spec.to_dict(), "parallel": 2, "nproc": 1}))
    assert len(cpu) == 2 and all(not lane.devices for lane in cpu) and sum(len(lane.runs) for lane in cpu) == 8


def test_prepare_writes_sets_and_arm_manifests(train_workspace, tmp_path):  # noqa: F811
    store, manifest = train_workspace
    spec = _spec(manifest, tmp_path / "exp")
    info = experiment.prepare(spec)
    assert list(info["sets"]) == [experiment.MANIFEST_VAL]
    val = info["sets"][experiment.MANIFEST_VAL]
    gt = json.loads((spec.folder / "sets" / experiment.MANIFEST_VAL / "val_gt.json").read_text())
    people = json.loads((spec.folder / "sets" / experiment.MANIFEST_VAL / "people.json").read_text())
    assert val["people"] == len(people) == sum(1 for a in gt["annotations"] if a["num_keypoints"] and not a["iscrowd"])
    assert 0 < val["extreme_people"] < val["people"] and 0 < val["occluded_people"] < val["people"]
    arms = {a: pd.read_parquet(spec.folder / "arms" / a / "manifest.parquet")
            for a in ("real-only", "mix-visibility", "mix-uniform", "synth-only")}
    train = {a: m[m["split"] == "train"] for a, m in arms.items()}
    assert set(train["real-only"]["source_kind"]) == {"real"}
    assert set(train["synth-only"]["source_kind"]) == {"synthetic"}
    assert set(train["mix-visibility"]["source_kind"]) == {"real", "synthetic"}
    assert (train["mix-uniform"]["weight"] == 1.0).all()
    weights = train["mix-visibility"]["weight"]
    assert weights.min() == 1.0 and weights.max() > 1.0  # occluded people weigh more
    real_w = train["mix-visibility"].set_index("instance_id")["weight"]
    assert (train["real-only"].set_index("instance_id")["weight"] == real_w.loc[train["real-only"]["instance_id"]]).all()
    assert all((m["split"] == "val").sum() == val["people"] for m in arms.values())
    assert not (spec.folder / "arms" / "synth-then-real").exists()  # it trains on synth-only, then real-only


def test_incomparable_inputs_are_refused_before_training(train_workspace, tmp_path):  # noqa: F811
    store, manifest = train_workspace
    with pytest.raises(PosepipeError, match="no synthetic train rows, which arm mix-visibility needs"):
        experiment.prepare(_spec(write_manifest(store, tmp_path / "real-only", synth_source=None), tmp_path / "a"))
    with pytest.raises(PosepipeError, match="'coco-train' is also in .* train rows"):
        experiment.prepare(_spec(manifest, tmp_path / "b", held_out=["coco-train"]))
    with pytest.raises(PosepipeError, match="'nowhere' is not in the store"):
        experiment.prepare(_spec(manifest, tmp_path / "c", held_out=["nowhere"]))
    rows = pd.read_parquet(manifest / "manifest.parquet")
    no_val = tmp_path / "no-val"
    no_val.mkdir()
    rows[rows["split"] == "train"].to_parquet(no_val / "manifest.parquet")
    (no_val / "report.json").write_text(json.dumps({"store": str(store.root)}))
    with pytest.raises(PosepipeError, match="no real val people and no held-out source"):
        experiment.prepare(_spec(no_val, tmp_path / "d"))
    leak = tmp_path / "leak"
    leak.mkdir()
    rows.assign(split="train").to_parquet(leak / "manifest.parquet")
    (leak / "report.json").write_text(json.dumps({"store": str(store.root)}))
    with pytest.raises(PosepipeError, match="'coco-val' is also in"):
        experiment.prepare(_spec(leak, tmp_path / "e", held_out=["coco-val"]))
    # An output folder from another experiment: refused, or emptied with replace.
    experiment.prepare(_spec(manifest, tmp_path / "f"))
    (tmp_path / "f" / "runs" / "x").mkdir(parents=True)
    with pytest.raises(PosepipeError, match="cannot be compared .* training settings"):
        experiment.prepare(_spec(manifest, tmp_path / "f", steps=5))
    experiment.prepare(_spec(manifest, tmp_path / "f", steps=5), replace=True)
    assert not (tmp_path / "f" / "runs").exists()
    experiment.prepare(_spec(manifest, tmp_path / "f", steps=5))  # the same again: accepted


def test_cli_refuses_bad_input_in_one_line(train_workspace, tmp_path):  # noqa: F811
    store, manifest = train_workspace
    for args, message in ((["--steps", "0"], "steps must be at least 1"),
                          (["--held-out", "coco-train"], "also in"),
                          (["--arms", "mix-uniform"], "must include real-only")):
        proc = subprocess.run([sys.executable, "-m", "posepipe.flows.cli", "experiment", "--manifest", str(manifest),
                               "--out", str(tmp_path / "o"), "--start", "scratch:tiny", "--no-prefect", *args],
                              capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "o" / "runs").exists()


def _fake_runs(spec: ExperimentSpec, noise: dict[str, float], same_draws=("real-only", "mix-visibility",
                                                                          "synth-then-real")) -> None:
    """Predictions files for every run, made from the ground truth with per-arm noise (no training)."""
    info = json.loads((spec.folder / "experiment.json").read_text())
    for run in experiment.plan(spec):
        folder = run.folder(spec.folder)
        # Arms in `same_draws` get the seed's own noise draw (scaled): they differ only by the scale.
        rng = np.random.default_rng([run.seed, 0 if run.arm in same_draws else 1 + sorted(noise).index(run.arm)])
        for name in info["sets"]:
            gt = json.loads((spec.folder / "sets" / name / "val_gt.json").read_text())
            results, people = [], []
            for ann in gt["annotations"]:
                if ann["iscrowd"] or not ann["num_keypoints"]:
                    continue
                kp = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
                kp[:, :2] += rng.normal(0, 1, (17, 2)) * noise[run.arm] * (1 + run.seed)
                results.append({"image_id": ann["image_id"], "category_id": 1, "score": float(rng.uniform()),
                                "keypoints": [round(float(v), 3) for v in kp.ravel()]})
                people.append(ann["id"])
            (folder / "eval" / name).mkdir(parents=True)
            (folder / "eval" / name / "predictions.json").write_text(json.dumps(results))
            (folder / "eval" / name / "predictions.people.json").write_text(json.dumps(people))
        (folder / "curve.json").write_text(json.dumps([{"step": s, "loss": 1.0 / s} for s in range(1, 5)]))
        (folder / "run.json").write_text(json.dumps({"start": "scratch-tiny", "arm": run.arm, "seed": run.seed,
                                                     "steps": 4, "train_seconds": 1.0, "sets": {}}))


def test_intervals_find_a_real_difference_and_no_false_one(train_workspace, tmp_path):  # noqa: F811
    store, manifest = train_workspace
    spec = _spec(manifest, tmp_path / "exp")
    experiment.prepare(spec)
    # mix-visibility: the same errors, smaller; mix-uniform: other errors of the same size;
    # synth-then-real: the very same predictions as real-only.
    _fake_runs(spec, {"real-only": 12.0, "mix-visibility": 3.0, "mix-uniform": 12.0, "synth-then-real": 12.0})
    results = write_results(spec)
    rows = {(r["subset"], r["arm"]): r for r in results["rows"]}
    better, other, same = (rows[("all", a)] for a in ("mix-visibility", "mix-uniform", "synth-then-real"))
    assert better["verdict"] == "better" and better["dAP_ci"][0] > 0 and better["dAP"] > 0.05
    assert other["verdict"] == "no clear difference" and other["dAP_ci"][0] < 0 < other["dAP_ci"][1]
    assert same["dAP"] == 0 and same["dAP_ci"] == [0.0, 0.0]
    assert better["AP_ci"][0] <= better["AP"] <= better["AP_ci"][1]
    # The point values are pycocotools' AP of the files, averaged over seeds.
    set_dir = spec.folder / "sets" / experiment.MANIFEST_VAL
    per_seed = [evaluate.coco_eval(set_dir / "val_gt.json", run.folder(spec.folder) / "eval" / experiment.MANIFEST_VAL /
                                   "predictions.json")["AP"] for run in experiment.plan(spec) if run.arm == "real-only"]
    assert rows[("all", "real-only")]["AP"] == round(float(np.mean(per_seed)), 4)
    # Subsets hold their people only.
    people = json.loads((set_dir / "people.json").read_text())
    assert rows[("extreme", "real-only")]["people"] == sum(p["extreme"] for p in people.values())
    assert results["headline"][0]["set"] == experiment.MANIFEST_VAL and results["headline"][0]["dAP"] > 0
    metrics = json.loads((spec.folder / "metrics.json").read_text())
    assert metrics == dvc_metrics(results)
    assert metrics["scratch-tiny"][experiment.MANIFEST_VAL]["all"]["mix-visibility"]["dAP"] == better["dAP"]
    assert "| all | mix-visibility |" in (spec.folder / "results.md").read_text() == markdown(results)
    assert json.loads((spec.folder / "curves" / "scratch-tiny--real-only.json").read_text())[0] == {"step": 1, "loss": 1.0}
    again = write_results(spec)
    assert again["rows"] == results["rows"]  # seeded resampling: same intervals every time


def test_statistics_refuse_an_unfinished_experiment(train_workspace, tmp_path):  # noqa: F811
    store, manifest = train_workspace
    spec = _spec(manifest, tmp_path / "exp", arms=["real-only", "mix-uniform"], seeds=[0])
    experiment.prepare(spec)
    with pytest.raises(PosepipeError, match="2 of 2 runs have not finished"):
        write_results(spec)


def test_resampling_matches_ap_on_the_match(train_workspace, tmp_path):  # noqa: F811
    """The all-ones resample is the point value: intervals are around the same AP the table shows."""
    store, manifest = train_workspace
    spec = _spec(manifest, tmp_path / "exp", arms=["real-only"], seeds=[0])
    experiment.prepare(spec)
    _fake_runs(spec, {"real-only": 8.0})
    folder = experiment.plan(spec)[0].folder(spec.folder) / "eval" / experiment.MANIFEST_VAL
    m = oks.match(*oks.load(spec.folder / "sets" / experiment.MANIFEST_VAL / "val_gt.json", folder / "predictions.json"))
    assert oks.resampled_ap(m, np.ones((1, len(m.image_ids))))[0, 0] == oks.average_precision(m)["AP"]
