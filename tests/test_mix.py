"""posepipe mix on real coco-mini data: splits without leakage, counts that add up, the report, the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from posepipe.datasets import MixedRatioSampler, schema
from posepipe.datasets.coco import ingest_coco
from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.mix import MANIFEST_SCHEMA, MixConfig, build_manifest, write_mix
from posepipe.datasets.splits import assign_splits
from posepipe.datasets.store import PoseStore
from posepipe.flows.cli import main

REAL = ["coco-train", "coco-val"]
SYNTH = "synth/coco-val-copy"  # the coco-val pictures again: a synthetic source that shares real images


def _run(argv: list[str]) -> int:
    """The posepipe command as a user runs it: its exit code."""
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def mixed_store(coco_store_template, shared_data, tmp_path_factory) -> PoseStore:
    root = tmp_path_factory.mktemp("mix") / "store"
    shutil.copytree(coco_store_template, root)
    store = PoseStore(root)
    mini = shared_data / "coco-mini"
    ingest_coco(store, mini / "annotations/person_keypoints_val2017.json", mini / "val2017", SYNTH)
    return store


@pytest.fixture(scope="module")
def mix(mixed_store):
    return build_manifest(mixed_store, REAL, [SYNTH], MixConfig(ratio=(1, 3), seed=3))


def test_manifest_has_the_contract_columns_and_no_split_leakage(mix, mixed_store):
    df = mix.manifest.to_pandas()
    assert mix.manifest.schema == MANIFEST_SCHEMA
    assert set(df["split"]) == {"train", "val", "test"} and set(df["source_kind"]) == {"real", "synthetic"}
    assert df.groupby("image_id")["split"].nunique().max() == 1  # no picture in two splits
    assert (df.loc[df["split"] != "train", "source_kind"] == "real").all()
    assert (df.loc[df["source_kind"] == "synthetic", "split"] == "train").all()
    assert df["instance_id"].is_unique
    # The split is the documented function of image_id and split seed.
    expected = np.array(["train", "val", "test"])[assign_splits(df["image_id"].tolist(), 0, 0.1, 0.1)]
    real = df["source_kind"] == "real"
    assert (df.loc[real, "split"].to_numpy() == expected[real.to_numpy()]).all()


def test_every_instance_read_is_included_or_excluded_with_a_reason(mix, mixed_store):
    report = mix.report
    synth_held_out = 0
    real_images = mix.manifest.to_pandas().query("source_kind == 'real'")
    held_out_images = set(real_images.loc[real_images["split"] != "train", "image_id"])
    for name in REAL + [SYNTH]:
        inst = mixed_store.instances([name])
        s = report["sources"][name]
        assert s["read"] == inst.num_rows == s["included"] + sum(s["excluded"].values())
        kp = schema.keypoints_from_arrow(inst.column("keypoints"))
        crowd = np.array(inst.column("iscrowd").to_pylist(), dtype=bool)
        assert s["excluded"].get("crowd", 0) == crowd.sum()
        assert s["excluded"].get("too_few_keypoints", 0) == ((kp[..., 2] > 0).sum(1) == 0)[~crowd].sum()
        assert sum(s["splits"].values()) == s["included"]
        if name == SYNTH:
            ok = ~crowd & ((kp[..., 2] > 0).sum(1) > 0)
            ids = np.array(inst.column("image_id").to_pylist())
            synth_held_out = int((ok & np.isin(ids, list(held_out_images))).sum())
    # The synthetic copy shares coco-val's pictures: those held out as real val/test stay out of train.
    assert synth_held_out > 0
    assert report["sources"][SYNTH]["excluded"]["image_held_out"] == synth_held_out
    assert report["instances_read"] == report["instances_included"] + report["instances_excluded"]
    assert report["instances_included"] == mix.manifest.num_rows


def test_visibility_histograms_count_the_included_instances(mix, mixed_store):
    df = mix.manifest.to_pandas()
    for name in REAL:
        inst = mixed_store.instances([name]).to_pandas()
        kept = inst["instance_id"].isin(df.loc[df["source"] == name, "instance_id"]).to_numpy()
        kp = schema.keypoints_from_arrow(mixed_store.instances([name]).column("keypoints"))[kept]
        assert mix.report["sources"][name]["visibility"] == schema.visibility_histogram(kp)
        train_occluded = df.query("source == @name and split == 'train'")["occluded_joints"].sum()
        assert mix.report["sources"][name]["visibility_by_split"]["train"]["v1"] == train_occluded


def test_report_states_ratio_ess_and_weights(mix):
    report, df = mix.report, mix.manifest.to_pandas()
    epoch = report["epoch"]
    assert epoch["synthetic_draws"] * 3 == epoch["real_draws"]
    assert report["effective_ratio"]["synthetic_share"] == 0.25
    train = df[df["split"] == "train"]
    real_w = train.loc[train["source_kind"] == "real", "weight"].to_numpy()
    assert report["ess"]["real"] == pytest.approx(real_w.sum() ** 2 / (real_w**2).sum())
    assert report["weights"]["real"]["max"] <= 4.0 and report["weights"]["real"]["min"] >= 1.0
    assert report["weights"]["real"]["max"] > 1.0  # coco has occluded joints: some weigh more
    # Instances with occluded joints weigh more on average (the point of the scheme).
    occ = train["occluded_joints"] > 0
    assert train.loc[occ, "weight"].mean() > train.loc[~occ, "weight"].mean()
    # Enough synthetic for 1:3 here, so no warning.
    assert not epoch["synthetic_short"] and report["warnings"] == []


def test_fewer_synthetic_than_the_ratio_needs_is_sampled_with_replacement_and_said(mixed_store):
    result = build_manifest(mixed_store, REAL, [SYNTH], MixConfig(ratio=(1, 1)))
    epoch = result.report["epoch"]
    synth = epoch["per_kind"]["synthetic"]
    assert synth["draws_per_epoch"] > synth["train_instances"]
    assert epoch["synthetic_short"] and epoch["with_replacement"]["synthetic"]
    assert "sampled with replacement" in result.report["warnings"][0]


def test_same_inputs_same_manifest_and_split_stable_when_a_source_is_added(mixed_store, mix):
    again = build_manifest(mixed_store, REAL, [SYNTH], MixConfig(ratio=(1, 3), seed=3))
    assert again.manifest.equals(mix.manifest)
    alone = build_manifest(mixed_store, ["coco-train"], [], MixConfig(ratio=(0, 1))).manifest.to_pandas()
    both = mix.manifest.to_pandas().set_index("instance_id")
    assert (both.loc[alone["instance_id"], "split"].to_numpy() == alone["split"].to_numpy()).all()


def test_real_only_mix_feeds_the_sampler(mixed_store, tmp_path):
    result = build_manifest(mixed_store, REAL, [], MixConfig(ratio=(0, 1), weights="uniform"))
    assert set(result.manifest.column("source_kind").to_pylist()) == {"real"}
    assert set(result.manifest.column("weight").to_pylist()) == {1.0}
    paths = write_mix(result, tmp_path / "mix")
    sampler = MixedRatioSampler(paths["manifest"], ratio=(0, 1), num_replicas=2, rank=1)
    train = pd.read_parquet(paths["manifest"]).query("split == 'train'")
    assert len(sampler) == -(-len(train) // 2) and max(sampler) < len(train)


def test_no_real_data_and_bad_sources_are_clear_errors(mixed_store, tmp_path):
    with pytest.raises(PosepipeError, match="no real data"):
        build_manifest(mixed_store, [], [SYNTH])
    with pytest.raises(PosepipeError, match="'nope' is not in the store"):
        build_manifest(mixed_store, ["nope"], [], MixConfig(ratio=(0, 1)))
    with pytest.raises(PosepipeError, match="both real and synthetic"):
        build_manifest(mixed_store, REAL, ["coco-val"])
    with pytest.raises(PosepipeError, match="no synthetic source was given"):
        build_manifest(mixed_store, REAL, [])
    # A real source that holds no people at all.
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": [schema.PERSON_CATEGORY]}))
    ingest_coco(mixed_store, empty, tmp_path, "empty-real")
    with pytest.raises(PosepipeError, match="no real data: the real source.s. empty-real hold no instances"):
        build_manifest(mixed_store, ["empty-real"], [SYNTH])


def test_params_yaml_mix_section_is_valid_and_checked(tmp_path):
    import yaml

    from tests.conftest import REPO

    section = yaml.safe_load((REPO / "params.yaml").read_text())["mix"]
    config = MixConfig.from_params(section)
    assert config.ratio == (1, 3) and config.weights in ("visibility", "uniform")
    assert MixConfig.from_params(section, ratio="1:1", seed=None).ratio == (1, 1)
    with pytest.raises(PosepipeError, match="mix.rato is not a mix setting"):
        MixConfig.from_params({"rato": "1:3"})
    with pytest.raises(PosepipeError, match="mix.weights.gain is not a weight parameter"):
        MixConfig.from_params({"weights": {"scheme": "visibility", "gain": 2}})


def test_cli_writes_manifest_and_reports(mixed_store, tmp_path, capsys):
    out = tmp_path / "out"
    params = tmp_path / "params.yaml"
    params.write_text("mix:\n  ratio: '1:2'\n  seed: 9\n  weights:\n    scheme: visibility\n    cap: 3.0\n")
    assert _run(["mix", "--store", str(mixed_store.root), "--real", "coco-train,coco-val", "--synth", SYNTH,
                 "--out", str(out), "--params", str(params), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    assert report["store"] == str(mixed_store.root)
    assert report["params"]["ratio"] == "1:2" and report["params"]["seed"] == 9
    assert report["params"]["weight_params"]["cap"] == 3.0 and report["weights"]["real"]["max"] <= 3.0
    assert printed["instances_read"] == report["instances_read"]
    manifest = pq.read_table(out / "manifest.parquet")
    assert manifest.schema.field("weight").type == "double"
    assert {"instance_id", "image_id", "source", "source_kind", "weight", "split"} <= set(manifest.column_names)
    assert "# Training mix" in (out / "report.md").read_text()


def test_cli_user_errors_are_one_line_exit_2(mixed_store, tmp_path, capsys):
    assert _run(["mix", "--store", str(mixed_store.root), "--real", "coco-train", "--out", str(tmp_path / "o"),
                 "--ratio", "1:3", "--params", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("posepipe: error: --params") and "\n" not in err
    assert _run(["mix", "--store", str(mixed_store.root), "--real", "coco-train", "--out", str(tmp_path / "o"),
                 "--ratio", "one:three"]) == 2
    assert "SYNTHETIC:REAL" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
