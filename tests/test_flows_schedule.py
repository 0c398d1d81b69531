"""`posepipe schedule ingest` and `posepipe schedule watch` against a real, temporary Prefect server.

Every wait here is on a condition (the store, the API, the log) with a generous deadline that is
only reached when something is wrong: a loaded machine makes these tests slower, never red."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from posepipe.datasets.store import PoseStore
from tests.test_labelme_arrival import people_files, write_old

POSEPIPE = [sys.executable, "-m", "posepipe.flows"]
LONG = 600  # seconds: the most any condition here is waited for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float = LONG, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{p.args} exited {p.returncode} while waiting for {what}: {_tail(p)}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: "
                         + " | ".join(_tail(p) for p in procs))


def _tail(proc) -> str:
    return Path(proc.log).read_text()[-3000:] if getattr(proc, "log", None) else ""


def _start(cmd: list[str], env: dict, log: Path, cwd: Path) -> subprocess.Popen:
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = str(log)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C (serve pauses its deployments and exits), then, only if it hangs, SIGKILL; the whole
    process group either way, so no flow-run subprocess outlives the test."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
           "PREFECT_API_URL": ""}
    proc = _start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                  env, home / "server.log", home)
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        _wait("the Prefect server's /api/health", healthy, LONG, [proc])
        yield url
    finally:
        _stop(proc)


@pytest.fixture
def client(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as c:
            yield c


def _env(prefect_server: str, tmp_path: Path) -> dict:
    return {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_HOME": str(tmp_path / "home"),
            "PREFECT_RUNNER_POLL_FREQUENCY": "1", "POSEPIPE_PREFECT_LOG_LEVEL": "INFO"}


def _deployment(client, name: str):
    try:
        return client.read_deployment_by_name(name)
    except Exception:  # not registered yet
        return None


def _runs(client, deployment_id, *states: str) -> list:
    """Flow runs of one deployment (in the given state types), read with a filter: the server
    pages unfiltered listings, and a watch every second makes many runs."""
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType

    state = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(s) for s in states])) if states else None
    return client.read_flow_runs(flow_run_filter=FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]), state=state), limit=200)


def _people(store: Path, source: str) -> int:
    st = PoseStore(store)
    return st.instances([source]).num_rows if source in st.sources() else 0


def _batches(store: Path, source: str) -> dict[str, str]:
    """file name -> content hash it was last read with."""
    st = PoseStore(store)
    if source not in st.sources():
        return {}
    return {Path(b["source_file"]).name: b["file_sha256"] for b in st.batches([source]).to_pylist()}


@pytest.mark.slow
def test_schedules_run_on_a_real_server(prefect_server, client, shared_data, tmp_path):
    env = _env(prefect_server, tmp_path)
    # Watch: an annotator drop folder scanned every 2 s.
    drop = tmp_path / "drop"
    drop.mkdir()
    watch_store = tmp_path / "watch-store"
    watch = _start([*POSEPIPE, "schedule", "watch", str(drop), "--every", "2", "--store", str(watch_store),
                    "--source", "labelme/drop"], env, tmp_path / "watch.log", tmp_path)
    # Cron: the configured ingest at 02:00 every day; triggered once here through its deployment.
    mini = shared_data / "coco-mini"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"ingest": {"coco": [{
        "source": "coco-val", "annotations": str(mini / "annotations/person_keypoints_val2017.json"),
        "images": str(mini / "val2017")}]}}))
    cron_store = tmp_path / "cron-store"
    cron = _start([*POSEPIPE, "schedule", "ingest", "--cron", "0 2 * * *", "--params", str(params),
                   "--store", str(cron_store)], env, tmp_path / "cron.log", tmp_path)
    try:
        sample = shared_data / "labelme-samples" / "x-anylabeling-pose"
        shutil.copy(sample / "human-pose.jpeg", drop / "human-pose.jpeg")
        shutil.copy(sample / "human-pose.json", drop / "a.json")
        _wait("the watch to ingest the first drop", lambda: _people(watch_store, "labelme/drop") == 1, LONG, [watch])
        # A new file later is picked up by a later scan (same picture: recorded as a duplicate, not lost).
        shutil.copy(sample / "human-pose.json", drop / "b.json")
        _wait("the watch to read the second drop", lambda: len(_batches(watch_store, "labelme/drop")) == 2, LONG,
              [watch])

        _wait("the cron deployment", lambda: _deployment(client, "ingest/scheduled") is not None, LONG, [cron])
        dep = _deployment(client, "ingest/scheduled")
        assert [s.schedule.cron for s in dep.schedules] == ["0 2 * * *"]
        assert dep.parameters["params"] == str(params)
        # The server's scheduler creates the upcoming runs of the cron schedule (once a second here).
        _wait("the scheduler to plan a cron run", lambda: _runs(client, dep.id, "SCHEDULED"), LONG, [cron])
        run = client.create_flow_run_from_deployment(dep.id)
        _wait("the served cron flow to run", lambda: client.read_flow_run(run.id).state.is_final(), LONG, [cron])
        assert client.read_flow_run(run.id).state.is_completed(), _tail(cron)
        watch_dep = _deployment(client, "ingest/watch-drop")
        # The interval schedule ran the scan repeatedly (one at a time).
        _wait("two completed scans", lambda: len(_runs(client, watch_dep.id, "COMPLETED")) >= 2, LONG, [watch])
        assert watch_dep.global_concurrency_limit.limit == 1
        assert watch_dep.concurrency_options.collision_strategy == "CANCEL_NEW"
    finally:
        _stop(watch)
        _stop(cron)
    assert _people(cron_store, "coco-val") == 118
    assert sorted(_batches(watch_store, "labelme/drop")) == ["a.json", "b.json"]
    assert _people(watch_store, "labelme/drop") == 1
    assert [r["reason"] for r in PoseStore(watch_store).rejects(["labelme/drop"]).to_pylist()] == ["duplicate_image"]


SETTLE = 6  # the watch's settle interval (s); every pause below is well inside it
PAUSE = 2  # a writer's pauses: longer than the scan interval (1 s)


def _write_slowly(path: Path, data: bytes, seen_partial, start: int) -> threading.Thread:
    """A copy through a share that stalls: ``start`` bytes, then a few bytes after each pause, for
    as long as it takes a scan to see the file unfinished (``seen_partial()``), then the rest.
    The pauses are the stalls being simulated, not waits for a result."""
    def run():
        with open(path, "wb") as fh:
            k = start
            fh.write(data[:k])
            fh.flush()
            deadline = time.monotonic() + LONG
            while not seen_partial() and k < len(data) - 16 and time.monotonic() < deadline:
                time.sleep(PAUSE)
                fh.write(data[k:k + 16])
                fh.flush()
                k += 16
            fh.write(data[k:])

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _said(log: str, text: str):
    """A check: whether the watch's log says ``text`` more often than it did when this was called."""
    before = Path(log).read_text().count(text)
    return lambda: Path(log).read_text().count(text) > before


@pytest.mark.slow
def test_watch_takes_every_file_whole_however_it_arrives(prefect_server, client, shared_data, tmp_path):
    """Copies, slow writers, renames and in-place rewrites into a watched folder, a file written
    for ever and the folder going away for a while: in the end every person is in the store once,
    every file read with its final content, and nothing rejected or quarantined."""
    source = "labelme/arrivals"
    drop, store, staging = tmp_path / "drop", tmp_path / "store", tmp_path / "staging"
    drop.mkdir()
    staging.mkdir()
    files = people_files(shared_data, 6)  # (json bytes, image bytes, image name, people) of 6 pictures
    watch = _start([*POSEPIPE, "schedule", "watch", str(drop), "--every", "1", "--settle", str(SETTLE),
                    "--store", str(store), "--source", source, "--name", "arrivals"],
                   _env(prefect_server, tmp_path), tmp_path / "watch.log", tmp_path)
    final: dict[str, bytes] = {}  # file name -> the content it ends with
    people = {}

    def settled_to(expected: dict[str, bytes]):
        def check() -> bool:
            have = _batches(store, source)
            return all(have.get(name) == hashlib.sha256(data).hexdigest() for name, data in expected.items())
        return check

    forever = threading.Event()
    try:
        # Copied in: image, then json (both fresh: waited for until they settle).
        doc, image, name, n = files[0]
        shutil.copy(_staged(staging, name, image), drop / name)
        shutil.copy(_staged(staging, "a.json", doc), drop / "a.json")
        final["a.json"], people["a.json"] = doc, n
        _wait("the copied file", settled_to(final), LONG, [watch])

        # Written slowly (half, pauses longer than the scan interval, until a scan has seen the file
        # unfinished and left it, then the rest), and renamed in.
        doc, image, name, n = files[1]
        write_old(drop / name, image)
        slow_seen = _said(watch.log, "b.json: still being written")
        slow = _write_slowly(drop / "b.json", doc, slow_seen, len(doc) // 2)
        final["b.json"], people["b.json"] = doc, n
        doc, image, name, n = files[2]
        write_old(staging / name, image)
        (staging / "c.json").write_bytes(doc)
        os.rename(staging / name, drop / name)
        os.rename(staging / "c.json", drop / "c.json")
        final["c.json"], people["c.json"] = doc, n
        slow.join(LONG)
        assert slow_seen(), "no scan saw the slow file unfinished"
        _wait("the slow and the renamed file", settled_to(final), LONG, [watch])
        assert PoseStore(store).rejects([source]).num_rows == 0

        # Rewritten in place (truncated, part written, a pause, the rest) for another picture.
        doc, image, name, n = files[3]
        write_old(drop / name, image)
        rewrite_seen = _said(watch.log, "a.json: still being written")
        rewrite = _write_slowly(drop / "a.json", doc, rewrite_seen, 100)
        final["a.json"], people["a.json"] = doc, n
        # Meanwhile a copy that never ends: its scan says so and goes on with the others.
        doc, image, name, n = files[4]
        write_old(drop / name, image)
        endless = threading.Thread(target=_write_for_ever, args=(drop / "e.json", doc, forever))
        endless.start()
        rewrite.join(LONG)
        assert rewrite_seen(), "no scan saw the rewritten file unfinished"
        _wait("the rewritten file", settled_to(final), LONG, [watch])
        _wait("a scan to say the endless file is still being written",
              lambda: "e.json: still being written" in Path(watch.log).read_text(), LONG, [watch])

        # The folder goes away (a share unmounted) and comes back: a warning, nothing lost.
        forever.set()
        endless.join(LONG)
        away = tmp_path / "away"
        os.rename(drop, away)
        _wait("a scan to notice the folder is gone",
              lambda: "nothing scanned this time" in Path(watch.log).read_text(), LONG, [watch])
        assert _people(store, source) == sum(people.values())  # nothing taken for deleted
        (away / "e.json").write_bytes(doc)  # the endless copy ends after all, before the folder is back
        final["e.json"], people["e.json"] = doc, n
        os.rename(away, drop)
        doc, image, name, n = files[5]
        shutil.copy(_staged(staging, name, image), drop / name)
        shutil.copy(_staged(staging, "f.json", doc), drop / "f.json")
        final["f.json"], people["f.json"] = doc, n
        _wait("the files after the folder came back", settled_to(final), LONG, [watch])
    finally:
        forever.set()
        _stop(watch)
    st = PoseStore(store)
    assert _batches(store, source) == {k: hashlib.sha256(v).hexdigest() for k, v in final.items()}
    assert st.instances([source]).num_rows == sum(people.values())  # every person once
    assert st.rejects([source]).num_rows == 0 and not (drop / "_quarantine").exists()
    assert sorted(st.images([source]).column("file_name").to_pylist()) == sorted(
        files[k][2] for k in (1, 2, 3, 4, 5))  # a.json's first picture was replaced by its rewrite


def _staged(staging: Path, name: str, data: bytes) -> Path:
    path = staging / name
    path.write_bytes(data)
    return path


def _write_for_ever(path: Path, data: bytes, stop: threading.Event) -> None:
    """A copy that never completes while the test looks: a byte every 0.05 s."""
    k = len(data) // 3
    with open(path, "wb") as fh:
        fh.write(data[:k])
        while not stop.is_set():
            fh.write(data[k:k + 1])
            fh.flush()
            k = min(k + 1, len(data) - 1)
            stop.wait(0.05)
