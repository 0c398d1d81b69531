"""Releases with real git and real DVC in temporary directories."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.mix import MixConfig, build_manifest, write_mix
from posepipe.datasets.store import PoseStore
from posepipe.flows import versioning

PIPELINE = {
    "stages": {
        "ingest": {
            "foreach": "${ingest.coco}",
            "do": {
                "cmd": "posepipe ingest coco ${item.annotations} --images ${item.images} --source ${key} --store ${store}",
                "deps": ["${item.annotations}", "${item.images}"],
                "outs": ["${store}/tables/${key}", "${store}/shards/${key}"],
            },
        },
        "mix": {
            "cmd": ["posepipe mix --params params.yaml --out data/mix --store ${store}",
                    "posepipe stats --store ${store} --out metrics/dataset.json --plot metrics/visibility.json"],
            "deps": ["${store}/tables"],
            "params": ["mix"],
            "outs": ["data/mix"],
            "metrics": [{"metrics/dataset.json": {"cache": False}}],
            "plots": [{"metrics/visibility.json": {"cache": False, "x": "source", "y": "joints"}}],
        },
    }
}


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def _params(shared, sources):
    coco = {}
    for name in sources:
        if name == "coco-val":
            coco[name] = {"annotations": str(shared / "coco-mini/annotations/person_keypoints_val2017.json"),
                          "images": str(shared / "coco-mini/val2017")}
        else:
            coco[name] = {"annotations": str(shared / f"pose-samples/{name}/test_{name}.json"),
                          "images": str(shared / f"pose-samples/{name}")}
    return {"store": "data/store", "ingest": {"coco": coco},
            "mix": {"real": list(sources), "ratio": "0:1", "seed": 0, "split_seed": 0,
                    "val_fraction": 0.2, "test_fraction": 0.1}}


@pytest.fixture(scope="module")
def released(tmp_path_factory, shared_data):
    """A repository with releases A (coco-val) and B (coco-val + ochuman), and its remote."""
    root = tmp_path_factory.mktemp("versioning")
    repo, remote = root / "repo", root / "remote"
    repo.mkdir()
    os.environ["POSEPIPE_DVC_REMOTE"] = str(remote)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "test")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], cwd=repo, check=True)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump(_params(shared_data, ["coco-val"])))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "pipeline")
    card_a = versioning.release("A", repo, log=lambda m: None)
    remote_after_a = {p for p in remote.rglob("*") if p.is_file()}
    (repo / "params.yaml").write_text(yaml.safe_dump(_params(shared_data, ["coco-val", "ochuman"])))
    _git(repo, "commit", "-qam", "add ochuman")
    card_b = versioning.release("B", repo, log=lambda m: None)
    remote_after_b = {p for p in remote.rglob("*") if p.is_file()}
    yield {"repo": repo, "remote": remote, "root": root, "A": card_a, "B": card_b,
           "remote_after_a": remote_after_a, "remote_after_b": remote_after_b}
    os.environ.pop("POSEPIPE_DVC_REMOTE", None)


def test_release_tags_and_cards(released):
    repo = released["repo"]
    assert _git(repo, "tag", "--list", "dataset/*").split() == ["dataset/A", "dataset/B"]
    assert _git(repo, "status", "--porcelain") == ""
    a, b = released["A"], released["B"]
    assert set(a["sources"]) == {"coco-val"} and set(b["sources"]) == {"coco-val", "ochuman"}
    assert b["sources"]["ochuman"]["instances"] == 5
    assert 0 < sum(a["counts"]["coco-val"].values()) <= a["sources"]["coco-val"]["instances"]
    assert (repo / "releases/A.md").read_text().startswith("# Dataset release A")
    shown = json.loads(_git(repo, "show", "dataset/A:releases/A.json"))
    assert shown["files"] == a["files"]


def test_push_of_b_uploads_only_new_shards(released):
    store = released["repo"] / "data/store"
    new = released["remote_after_b"] - released["remote_after_a"]
    assert new, "release B pushed nothing"

    def md5(path: Path) -> str:
        return hashlib.md5(path.read_bytes()).hexdigest()

    old_shards = {md5(p) for p in (store / "shards/coco-val").glob("*.tar")}
    new_shards = {md5(p) for p in (store / "shards/ochuman").glob("*.tar")}
    uploaded = {p.parent.name + p.name for p in new}
    assert not old_shards & uploaded  # coco-val's shards were not sent again
    assert new_shards <= uploaded


def test_fresh_clone_pulls_each_release_exactly(released, tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(released["repo"]), str(clone)], check=True)
    for name in ("A", "B"):
        to = tmp_path / f"pulled-{name}"
        card = versioning.pull(name, to, clone, log=lambda m: None)
        assert card["files"] == released[name]["files"]
        for rel, info in card["files"].items():
            assert (to / rel).stat().st_size == info["bytes"]
        coco = {split: json.loads((to / "coco" / f"{split}.json").read_text()) for split in ("train", "val")}
        total = sum(len(doc["annotations"]) for doc in coco.values())
        test_json = to / "coco" / "test.json"
        if test_json.exists():
            total += len(json.loads(test_json.read_text())["annotations"])
        assert total == sum(sum(c.values()) for c in card["counts"].values())
    assert not (tmp_path / "pulled-A/data/store/tables/ochuman").exists()
    assert (tmp_path / "pulled-B/data/store/tables/ochuman/instances.parquet").exists()


def test_open_release_gives_frame_and_dataset(released, tmp_path):
    from posepipe.datasets import open_release

    frame, dataset = open_release("B", released["repo"], cache_dir=tmp_path / "cache")
    assert set(frame["split"]) <= {"train", "val", "test"}
    assert len(dataset) == int((frame["split"] == "train").sum())
    item = dataset[0]
    assert item["image"].ndim == 3 and item["keypoints"].shape == (17, 3)


def test_diff_reports_what_changed(released):
    d = versioning.diff("A", "B", released["repo"])
    assert d["sources_added"] == ["ochuman"] and d["sources_removed"] == []
    assert "ochuman" in d["instances_by_source_and_split"]
    assert "ingest.coco.ochuman.annotations" in d["params"]
    assert d["visibility"]["b"]["ochuman"]["v2"] > 0


def test_metrics_and_plots_diff_between_releases(released):
    repo = released["repo"]
    out = versioning.dvc(repo, "metrics", "diff", "dataset/A", "dataset/B", "--json").stdout
    changes = json.loads(out)["metrics/dataset.json"]
    assert changes["totals.instances"]["old"] == 118 and changes["totals.instances"]["new"] == 118 + 5
    plots = versioning.dvc(repo, "plots", "diff", "dataset/A", "dataset/B", "--json").stdout
    assert "metrics/visibility.json" in plots


def test_repro_on_unchanged_tree_does_nothing(released):
    out = versioning.dvc(released["repo"], "repro").stdout
    assert "didn't change, skipping" in out or "up to date" in out
    assert "Running stage" not in out


def test_dirty_tree_failed_stage_and_failed_push_leave_no_tag(released):
    repo = released["repo"]
    (repo / "scratch.txt").write_text("uncommitted")
    with pytest.raises(PosepipeError, match="dirty"):
        versioning.release("C", repo, log=lambda m: None)
    (repo / "scratch.txt").unlink()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"]["coco"]["broken"] = {"annotations": str(repo / "missing.json"), "images": str(repo)}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _git(repo, "commit", "-qam", "broken source")
    with pytest.raises(PosepipeError, match="dvc repro"):
        versioning.release("D", repo, log=lambda m: None)
    _git(repo, "reset", "-q", "--hard", "dataset/B")
    versioning.dvc(repo, "remote", "modify", "local", "url", str(repo / "dvc.yaml"))  # a file, not a folder
    _git(repo, "commit", "-qam", "remote points at a file")
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace("0.2", "0.3"))
    _git(repo, "commit", "-qam", "change a param")
    with pytest.raises(PosepipeError, match="push"):
        versioning.release("E", repo, log=lambda m: None)
    assert _git(repo, "tag", "--list", "dataset/*").split() == ["dataset/A", "dataset/B"]


def test_a_run_release_makes_its_folder_a_data_repository(coco_store, tmp_path, monkeypatch):
    """What `posepipe run --release NAME` does: the run's store and manifest, released and pulled back."""
    monkeypatch.setenv("POSEPIPE_DVC_REMOTE", str(tmp_path / "remote"))
    out = tmp_path / "run"
    shutil.copytree(coco_store.root, out / "store")
    store = PoseStore(out / "store")
    write_mix(build_manifest(store, ["coco-train", "coco-val"], [], MixConfig(ratio=(0, 1))), out / "mix")
    (out / "train").mkdir()
    (out / "train" / "scratch.txt").write_text("not part of the release")
    card = versioning.release_run("r1", out, out / "store", out / "mix", {"pipeline": {"x": 1}}, log=lambda m: None)
    assert _git(out, "tag", "--list").split() == ["dataset/r1"]
    assert _git(out, "status", "--porcelain") == ""
    assert card["paths"] == {"store": "store", "manifest": "mix"}
    pulled = versioning.pull("r1", tmp_path / "pulled", out, log=lambda m: None)
    assert pulled["files"] == card["files"]
    assert (tmp_path / "pulled/coco/train.json").exists()
    assert not (tmp_path / "pulled/train").exists()
    # The store's lock files are not data: not hashed, pushed or pulled (a reader of the pulled
    # store makes its own `.lock`).
    assert (out / "store/.locks").is_dir()
    assert not (tmp_path / "pulled/store/.locks").exists()
