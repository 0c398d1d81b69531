"""`posepipe schedule ingest` and `posepipe schedule watch` against a real, temporary Prefect server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from posepipe.datasets.store import PoseStore

POSEPIPE = [sys.executable, "-m", "posepipe.flows"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{p.args} exited {p.returncode} while waiting for {what}: {_tail(p)}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _tail(proc) -> str:
    return Path(proc.log).read_text()[-2000:] if getattr(proc, "log", None) else ""


def _start(cmd: list[str], env: dict, log: Path, cwd: Path) -> subprocess.Popen:
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = str(log)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
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
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        _wait("the Prefect server's /api/health", healthy, 120, [proc])
        yield url
    finally:
        _stop(proc)


@pytest.mark.slow
def test_schedules_run_on_a_real_server(prefect_server, shared_data, tmp_path):
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_HOME": str(tmp_path / "home"),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "POSEPIPE_PREFECT_LOG_LEVEL": "INFO"}
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
        def people(store: Path, source: str) -> int:
            st = PoseStore(store)
            return st.instances([source]).num_rows if source in st.sources() else 0

        def files_read(store: Path, source: str) -> int:
            st = PoseStore(store)
            return st.batches([source]).num_rows if source in st.sources() else 0

        sample = shared_data / "labelme-samples" / "x-anylabeling-pose"
        shutil.copy(sample / "human-pose.jpeg", drop / "human-pose.jpeg")
        shutil.copy(sample / "human-pose.json", drop / "a.json")
        _wait("the watch to ingest the first drop", lambda: people(watch_store, "labelme/drop") == 1, 120, [watch])
        # A new file later is picked up by a later scan (same picture: recorded as a duplicate, not lost).
        shutil.copy(sample / "human-pose.json", drop / "b.json")
        _wait("the watch to read the second drop", lambda: files_read(watch_store, "labelme/drop") == 2, 60, [watch])

        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
            with get_client(sync_client=True) as client:
                def deployment():
                    try:
                        return client.read_deployment_by_name("ingest/scheduled")
                    except Exception:  # not registered yet
                        return None

                _wait("the cron deployment", lambda: deployment() is not None, 90, [cron])
                dep = deployment()
                assert [s.schedule.cron for s in dep.schedules] == ["0 2 * * *"]
                assert dep.parameters["params"] == str(params)
                scheduled = client.read_flow_runs()
                assert any(r.deployment_id == dep.id and r.state.is_scheduled() for r in scheduled)
                run = client.create_flow_run_from_deployment(dep.id)
                _wait("the served cron flow to run", lambda: client.read_flow_run(run.id).state.is_final(), 120, [cron])
                assert client.read_flow_run(run.id).state.is_completed(), _tail(cron)
                watch_runs = [r for r in client.read_flow_runs() if r.deployment_id != dep.id
                              and r.state.is_completed()]
                assert len(watch_runs) >= 2  # the interval schedule ran the scan repeatedly
        assert people(cron_store, "coco-val") == 118
        batches = PoseStore(watch_store).batches(["labelme/drop"]).to_pylist()
        assert sorted(Path(b["source_file"]).name for b in batches) == ["a.json", "b.json"]
        assert people(watch_store, "labelme/drop") == 1
        assert [r["reason"] for r in PoseStore(watch_store).rejects(["labelme/drop"]).to_pylist()] == ["duplicate_image"]
    finally:
        _stop(watch)
        _stop(cron)
