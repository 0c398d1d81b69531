"""Store locking: writers of different sources side by side, one writer per source, readers never
wait for a whole ingest, gc never runs beside a writer. Real COCO ingests, held open mid-transaction
by their own progress hook; a reader in another process. A thread that must wait for a lock is
seen waiting (its flock request in /proc/locks), not assumed to after a fixed time."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from posepipe.datasets.coco import ingest_coco
from posepipe.datasets.gc import collect_garbage
from posepipe.datasets.store import PoseStore
from tests.waiting import LONG, flock_held_exclusively, flock_waiters, wait_until

WAIT = LONG  # seconds: only ever reached when something is wrong


def _locks(store: PoseStore) -> Path:
    return store.root / ".locks"


def _waits_on(lock: Path, thread: threading.Thread, out: dict, what: str) -> None:
    """Until ``thread`` is blocked on ``lock`` (it must not finish, or fail, first)."""
    wait_until(what, lambda: flock_waiters(lock) or not thread.is_alive(), WAIT)
    assert thread.is_alive() and "error" not in out, f"{what}: it did not wait ({out})"


@pytest.fixture(scope="module")
def mini(shared_data) -> tuple[Path, Path, Path]:
    src = shared_data / "coco-mini"
    return (src / "annotations/person_keypoints_train2017.json", src / "annotations/person_keypoints_val2017.json",
            src / "train2017")


class HeldIngest:
    """A real ``ingest_coco`` in a thread, stopped inside its transaction once it has read and
    appended every image (its progress hook waits), until the ``with`` block ends."""

    def __init__(self, store: PoseStore, annotations: Path, images: Path, source: str):
        self.inside, self.go = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.report = None
        self.thread = threading.Thread(target=self._run, args=(store, annotations, images, source), daemon=True)

    def track(self, items, total, description):
        yield from items
        if description.startswith("images"):
            self.inside.set()
            self.go.wait(WAIT)

    def _run(self, store, annotations, images, source) -> None:
        try:
            self.report = ingest_coco(store, annotations, images, source, progress=self, helper_process=False)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
            self.error = exc

    def __enter__(self) -> "HeldIngest":
        self.thread.start()
        assert self.inside.wait(WAIT), "the ingest never reached its images"
        return self

    def __exit__(self, *exc) -> None:
        self.go.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_writers_of_different_sources_run_side_by_side(tmp_path, mini):
    train, val, images = mini
    store = PoseStore(tmp_path / "store")
    val_images = images.parent / "val2017"
    with HeldIngest(store, train, images, "a") as held:
        other, out = _in_thread(lambda: ingest_coco(PoseStore(store.root), val, val_images, "b"))
        other.join(WAIT)
        assert not other.is_alive() and "error" not in out, out.get("error")
        assert held.thread.is_alive()  # "b" committed while "a" was mid-transaction
        assert PoseStore(store.root).sources() == ["b"]
    assert held.report.images_accepted > 0 and PoseStore(store.root).sources() == ["a", "b"]


def test_readers_in_another_process_do_not_wait_for_an_open_ingest(tmp_path, mini):
    train, val, images = mini
    store = PoseStore(tmp_path / "store")
    ingest_coco(store, val, images.parent / "val2017", "v")
    before = store.instances().num_rows
    read = [sys.executable, "-c", "import sys; from posepipe.datasets.store import PoseStore; "
                                  "print(PoseStore(sys.argv[1]).instances().num_rows)", str(store.root)]
    with HeldIngest(store, train, images, "t") as held:
        proc = subprocess.run(read, capture_output=True, text=True, timeout=WAIT)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert int(proc.stdout) == before  # the committed state, without the open ingest's rows
        assert held.thread.is_alive()
    proc = subprocess.run(read, capture_output=True, text=True, timeout=WAIT)
    assert int(proc.stdout) == before + held.report.annotations_accepted


def test_writers_of_one_source_take_turns(tmp_path, mini):
    train, val, images = mini
    store = PoseStore(tmp_path / "store")
    with HeldIngest(store, train, images, "s"):
        second, out = _in_thread(lambda: ingest_coco(PoseStore(store.root), val, images.parent / "val2017", "s"))
        # Waiting for the first writer's transaction, not beside it.
        _waits_on(_locks(store) / "source-s.lock", second, out, "the second writer to wait for the source")
    second.join(WAIT)
    assert not second.is_alive() and "error" not in out, out.get("error")
    # Both files' rows are there: the second writer read the first one's commit, not the state before it.
    files = set(PoseStore(store.root).batches(["s"]).column("source_file").to_pylist())
    assert len(files) == 2


def test_gc_waits_for_a_writer_and_keeps_its_new_shard(tmp_path, mini):
    train, _, images = mini
    store = PoseStore(tmp_path / "store")
    with HeldIngest(store, train, images, "a") as held:
        gc, out = _in_thread(lambda: collect_garbage(PoseStore(store.root)))
        # The ingest's images are appended but not yet referenced by a commit: gc waits.
        _waits_on(_locks(store) / "write.lock", gc, out, "gc to wait for the writer")
    gc.join(WAIT)
    assert not gc.is_alive() and "error" not in out, out.get("error")
    assert out["value"].deleted == [] and held.report.images_accepted > 0
    rows = PoseStore(store.root).images(["a"]).to_pylist()
    assert len(rows) == held.report.images_accepted
    for row in rows:
        data = store.read_image(row["shard"], row["offset"], row["num_bytes"])
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
    assert json.loads((store.root / "STORE.json").read_text())["schema_version"]


def test_a_source_name_as_long_as_its_folder_may_be_still_gets_a_lock(tmp_path):
    store = PoseStore(tmp_path / "store")
    with store.transaction("a" * 240):
        pass  # its lock file would be 252 characters: it is named by hash
    assert len(list((store.root / ".locks").glob("source-*.lock"))) == 1


def test_a_waiting_gc_is_not_starved_by_new_writers(tmp_path, mini):
    train, val, images = mini
    store = PoseStore(tmp_path / "store")
    with HeldIngest(store, train, images, "a"):
        gc, gc_out = _in_thread(lambda: collect_garbage(PoseStore(store.root)))
        _waits_on(_locks(store) / "write.lock", gc, gc_out, "gc to wait for the open ingest")
        assert flock_held_exclusively(_locks(store) / "gate.lock")  # the gate it closed while waiting
        late, late_out = _in_thread(lambda: ingest_coco(PoseStore(store.root), val, images.parent / "val2017", "b"))
        # A writer arriving now waits behind the gc (at its gate), instead of overlapping the first.
        _waits_on(_locks(store) / "gate.lock", late, late_out, "the late writer to wait at gc's gate")
    for thread, out in ((gc, gc_out), (late, late_out)):
        thread.join(WAIT)
        assert not thread.is_alive() and "error" not in out, out.get("error")
    assert PoseStore(store.root).sources() == ["a", "b"]
