"""Files arriving in an intake folder while it is read: half-written copies, slow writers, renames,
in-place rewrites, files that vanish, never settle or cannot be read, and a scan beside another.

Real files and a real store. Where time matters the clock is injected (``FakeTime``: a sleep that
moves the clock and lets the world move on), so nothing depends on how fast this machine is; one
test uses real time with a writer thread, with generous margins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from posepipe.annotation.intake import ingest_labelme
from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.store import PoseStore
from tests.test_labelme_versions import coco_people, labelme_doc
from tests.test_settle import FakeTime
from tests.waiting import LONG, flock_waiters, wait_until

SOURCE = "labelme/drop"
OLD = time.time() - 3600  # written an hour ago


def people_files(shared_data: Path, n: int) -> list[tuple[bytes, bytes, str, int]]:
    """n LabelMe files of distinct real pictures: (json bytes, image bytes, image name, people)."""
    out = []
    for k, (im, people) in enumerate(coco_people(shared_data, limit=n)):
        image = (shared_data / "coco-mini/val2017" / im["file_name"]).read_bytes()
        name = f"p{k}.jpg"
        out.append((json.dumps(labelme_doc("labelme7", im, people, image, name)).encode(), image, name, len(people)))
    return out


def write_old(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.utime(path, (OLD, OLD))


def no_nap(t: FakeTime) -> None:
    raise AssertionError("waited, though every file was old")


@pytest.fixture
def drop(tmp_path) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir()
    return folder


def _state(store: PoseStore) -> tuple[int, list[str], list[str]]:
    """(people, reject reasons, files with a batch row) of the source."""
    if SOURCE not in store.sources():
        return 0, [], []
    return (store.instances([SOURCE]).num_rows, [r["reason"] for r in store.rejects([SOURCE]).to_pylist()],
            sorted(Path(b["source_file"]).name for b in store.batches([SOURCE]).to_pylist()))


def test_a_file_copied_slowly_is_never_read_half_written(store, drop, shared_data):
    """A copy that pauses half way (a network share): the default intake waits for it to end
    instead of reading half a file and quarantining it. (The pause, 1 s, is well inside the
    default settle interval: a copy paused for longer looks finished; nothing can tell.)"""
    doc, image, name, n = people_files(shared_data, 1)[0]
    write_old(drop / name, image)
    half, go = threading.Event(), threading.Event()

    def copy_slowly():
        with open(drop / "a.json", "wb") as fh:  # one open file, as a copying tool holds it
            fh.write(doc[: len(doc) // 2])
            fh.flush()
            half.set()
            go.wait(LONG)  # the pause (1 s), the rest
            fh.write(doc[len(doc) // 2:])

    writer = threading.Thread(target=copy_slowly)
    writer.start()
    assert half.wait(LONG)
    threading.Timer(1.0, go.set).start()
    first = ingest_labelme(store, drop, SOURCE)  # waits for the copy to end and settle
    writer.join(LONG)
    assert first.files_accepted == 1 and first.files_rejected == 0, first.summary()
    assert ingest_labelme(store, drop, SOURCE).files_unchanged == 1
    assert _state(store) == (n, [], ["a.json"])
    assert (drop / "a.json").read_bytes() == doc and not (drop / "_quarantine").exists()


def test_a_half_written_file_is_waited_for_and_read_whole(store, drop, shared_data):
    doc, image, name, n = people_files(shared_data, 1)[0]
    write_old(drop / name, image)
    target = drop / "a.json"
    target.write_bytes(doc[: len(doc) // 2])

    def finish(t):
        if len(t.naps) == 1:  # the copy goes on while the intake waits
            with open(target, "ab") as fh:
                fh.write(doc[len(doc) // 2:])

    t = FakeTime(time.time(), finish)
    report = ingest_labelme(store, drop, SOURCE, settle=5, clock=t.clock, sleep=t.sleep)
    assert report.files_read == report.files_accepted == 1 and report.files_rejected == 0
    assert _state(store) == (n, [], ["a.json"])
    assert target.read_bytes() == doc and not (drop / "_quarantine").exists()


def test_a_file_that_never_settles_is_skipped_reported_and_taken_once_it_does(store, drop, shared_data):
    (doc, image, name, n), (doc2, image2, name2, n2) = people_files(shared_data, 2)
    write_old(drop / name, image)
    write_old(drop / name2, image2)
    write_old(drop / "done.json", doc2)
    target = drop / "a.json"
    written = [len(doc) // 4]
    target.write_bytes(doc[: written[0]])

    def trickle(t):  # written for ever (for as long as this intake looks)
        with open(target, "ab") as fh:
            fh.write(doc[written[0]: written[0] + 8])
        written[0] += 8

    t = FakeTime(time.time(), trickle)
    report = ingest_labelme(store, drop, SOURCE, settle=5, clock=t.clock, sleep=t.sleep)
    report.check_balance()
    assert sum(t.naps) <= 2 * 5 + 1.0  # gave up: still changing after the settle interval
    assert (report.files_read, report.files_accepted, report.files_skipped) == (1, 1, 1)
    skipped = [f for f in report.files if f.status == "skipped"]
    assert [(f.relative, f.reason) for f in skipped] == [("a.json", "still_being_written")]
    assert "still being written" in skipped[0].message and "a later" in report.summary()
    assert report.to_dict()["files_skipped"] == 1
    assert _state(store) == (n2, [], ["done.json"]) and target.exists()  # not read, not rejected, not moved

    target.write_bytes(doc)  # the copy ends
    t = FakeTime(time.time())
    report = ingest_labelme(store, drop, SOURCE, settle=5, clock=t.clock, sleep=t.sleep)
    assert (report.files_accepted, report.files_unchanged, report.files_skipped) == (1, 1, 0)
    assert _state(store) == (n + n2, [], ["a.json", "done.json"])


def test_an_image_still_being_written_holds_its_json_back(store, drop, shared_data):
    doc, image, name, n = people_files(shared_data, 1)[0]
    write_old(drop / "a.json", doc)  # the json is there long since; its image is being copied
    (drop / name).write_bytes(image[: len(image) // 2])

    def finish_image(t):
        if len(t.naps) in (1, 2):
            with open(drop / name, "ab") as fh:
                fh.write(image[len(image) // 2: 3 * len(image) // 4] if len(t.naps) == 1 else image[3 * len(image) // 4:])

    t = FakeTime(time.time(), finish_image)
    report = ingest_labelme(store, drop, SOURCE, settle=5, clock=t.clock, sleep=t.sleep)
    assert report.files_accepted == 1 and report.files_rejected == 0, report.summary()
    assert _state(store) == (n, [], ["a.json"])
    assert store.images([SOURCE]).column("num_bytes").to_pylist() == [len(image)]


def test_a_json_whose_image_keeps_changing_is_skipped_not_rejected(store, drop, shared_data):
    doc, image, name, n = people_files(shared_data, 1)[0]
    write_old(drop / "a.json", doc)
    written = [len(image) // 2]
    (drop / name).write_bytes(image[: written[0]])

    def trickle(t):
        with open(drop / name, "ab") as fh:
            fh.write(image[written[0]: written[0] + 16])
        written[0] += 16

    t = FakeTime(time.time(), trickle)
    report = ingest_labelme(store, drop, SOURCE, settle=5, clock=t.clock, sleep=t.sleep)
    assert (report.files_read, report.files_skipped) == (0, 1), report.summary()
    (skipped,) = [f for f in report.files if f.status == "skipped"]
    assert skipped.reason == "image_still_being_written" and name in skipped.message
    assert _state(store) == (0, [], [])

    (drop / name).write_bytes(image)
    os.utime(drop / name, (OLD, OLD))  # the finished copy, long ago
    t = FakeTime(time.time(), no_nap)
    report = ingest_labelme(store, drop, SOURCE, settle=5, clock=t.clock, sleep=t.sleep)
    assert report.files_accepted == 1 and _state(store) == (n, [], ["a.json"])


def test_a_file_that_arrives_by_rename_is_taken_at_once(store, drop, tmp_path, shared_data):
    doc, image, name, n = people_files(shared_data, 1)[0]
    staging = tmp_path / "staging"
    staging.mkdir()
    write_old(staging / "a.json", doc)  # written elsewhere, then renamed in (rename keeps the mtime)
    write_old(staging / name, image)
    os.rename(staging / name, drop / name)
    os.rename(staging / "a.json", drop / "a.json")
    t = FakeTime(time.time(), no_nap)
    report = ingest_labelme(store, drop, SOURCE, settle=5, clock=t.clock, sleep=t.sleep)
    assert report.files_accepted == 1 and t.naps == [] and _state(store) == (n, [], ["a.json"])


def test_an_in_place_rewrite_is_waited_for_and_replaces_the_file(store, drop, shared_data):
    (doc, image, name, n), (doc2, image2, name2, n2) = people_files(shared_data, 2)
    write_old(drop / name, image)
    write_old(drop / name2, image2)
    write_old(drop / "a.json", doc)
    t = FakeTime(time.time(), no_nap)
    assert ingest_labelme(store, drop, SOURCE, settle=5, clock=t.clock, sleep=t.sleep).files_accepted == 1
    assert _state(store) == (n, [], ["a.json"])

    # The annotator's tool rewrites a.json in place (truncate, then write), for another picture;
    # the scan looks while only part of it is there.
    with open(drop / "a.json", "wb") as fh:
        fh.write(doc2[:100])

    def finish(t):
        if len(t.naps) == 1:
            with open(drop / "a.json", "ab") as fh:
                fh.write(doc2[100:])

    t = FakeTime(time.time(), finish)
    report = ingest_labelme(store, drop, SOURCE, settle=5, clock=t.clock, sleep=t.sleep)
    assert report.files_accepted == 1 and report.files_rejected == 0, report.summary()
    assert _state(store) == (n2, [], ["a.json"])
    assert store.images([SOURCE]).column("file_name").to_pylist() == [name2]


@pytest.mark.parametrize("mode", ["move", "copy"])
def test_a_rejected_file_is_read_again_when_its_content_changes(store, drop, shared_data, mode):
    doc, image, name, n = people_files(shared_data, 1)[0]
    write_old(drop / name, image)
    bad = doc.replace(b'"left_', b'"left-elbw-', 1)
    write_old(drop / "a.json", bad)
    first = ingest_labelme(store, drop, SOURCE, quarantine_mode=mode, settle=5)
    assert first.files_rejected == 1 and _state(store) == (0, ["unknown_label"], ["a.json"])
    assert (drop / "_quarantine" / "a.json").exists() and (drop / "a.json").exists() == (mode == "copy")
    # The annotator fixes the file and drops it back (or, in copy mode, fixes it in place).
    write_old(drop / "a.json", doc)
    again = ingest_labelme(store, drop, SOURCE, quarantine_mode=mode, settle=5)
    assert again.files_accepted == 1 and _state(store) == (n, [], ["a.json"])


def test_an_unreadable_file_stays_put_and_its_real_outcome_replaces_the_reject(store, drop, tmp_path,
                                                                               shared_data):
    doc, image, name, n = people_files(shared_data, 1)[0]
    write_old(drop / name, image)
    (drop / "a.json").symlink_to("a.json")  # cannot be opened (a loop), even by root
    first = ingest_labelme(store, drop, SOURCE, settle=5)
    assert [f.reason for f in first.files if f.status == "rejected"] == ["file_unreadable"]
    assert first.files[0].quarantined_to is None and (drop / "a.json").is_symlink()  # left where it is
    assert _state(store) == (0, ["file_unreadable"], ["a.json"])
    # Still unreadable: nothing new to record.
    assert ingest_labelme(store, drop, SOURCE, settle=5).files_unchanged == 1
    # The file completes (here: the finished copy is renamed over the name).
    write_old(tmp_path / "done.json", doc)
    os.replace(tmp_path / "done.json", drop / "a.json")
    last = ingest_labelme(store, drop, SOURCE, settle=5)
    assert last.files_accepted == 1 and _state(store) == (n, [], ["a.json"])


def test_an_empty_file_that_completes_is_read_again(store, drop, shared_data):
    """A file rejected while empty (a copy that stalled before its first byte, past the interval)
    is read again once its content arrives: its rejection is not stale."""
    doc, image, name, n = people_files(shared_data, 1)[0]
    write_old(drop / name, image)
    write_old(drop / "a.json", b"")
    first = ingest_labelme(store, drop, SOURCE, quarantine_mode="copy", settle=5)
    assert first.files_rejected == 1
    write_old(drop / "a.json", doc)
    assert ingest_labelme(store, drop, SOURCE, quarantine_mode="copy", settle=5).files_accepted == 1
    assert _state(store) == (n, [], ["a.json"])


class Vanish:
    """A progress hook that deletes a file once the one before it has been examined."""

    def __init__(self, path: Path):
        self.path = path

    def track(self, items, total, description):
        for k, item in enumerate(items):
            yield item
            if k == 0:
                self.path.unlink()


def test_a_file_that_vanishes_before_it_is_read_is_skipped(store, drop, shared_data):
    (doc, image, name, n), (doc2, image2, name2, _) = people_files(shared_data, 2)
    for data, path in ((image, name), (image2, name2), (doc, "a.json"), (doc2, "b.json")):
        write_old(drop / path, data)
    report = ingest_labelme(store, drop, SOURCE, settle=5, progress=Vanish(drop / "b.json"), workers=1)
    report.check_balance()
    assert (report.files_read, report.files_accepted, report.files_skipped) == (1, 1, 1)
    assert [f.reason for f in report.files if f.status == "skipped"] == ["vanished"]
    assert _state(store) == (n, [], ["a.json"])


def test_a_scan_beside_this_one_cannot_move_a_file_from_under_it(store, drop, shared_data):
    """Two scans of one folder (overlapping schedule runs): the second lists the folder only once
    the first has finished, so a file the first quarantined is not read as unreadable."""
    (doc, image, name, n), (doc2, image2, name2, _) = people_files(shared_data, 2)
    for data, path in ((image, name), (image2, name2), (doc, "a.json"), (doc2, "b.json")):
        write_old(drop / path, data)
    lock = store.root / ".locks" / "source-labelme%2Fdrop.lock"
    out: dict = {}
    with store.transaction(SOURCE):  # the first scan, inside its transaction
        assert lock.exists()
        def second_scan():
            try:
                out["report"] = ingest_labelme(PoseStore(store.root), drop, SOURCE, settle=5)
            except BaseException as exc:  # noqa: BLE001 - reported below
                out["error"] = exc

        scan = threading.Thread(target=second_scan)
        scan.start()
        wait_until("the second scan to wait for the first", lambda: flock_waiters(lock) or not scan.is_alive())
        assert scan.is_alive(), out
        # The first scan rejects b.json and moves it to the quarantine before it ends.
        (drop / "_quarantine").mkdir()
        os.replace(drop / "b.json", drop / "_quarantine" / "b.json")
    scan.join(LONG)
    assert not scan.is_alive() and "error" not in out, out.get("error")
    report = out["report"]
    assert report.files_read == 1 and report.reasons == {}, report.summary()
    assert _state(store) == (n, [], ["a.json"])


def test_a_folder_that_is_gone_is_one_clear_error(store, tmp_path):
    with pytest.raises(PosepipeError, match="does not exist"):
        ingest_labelme(store, tmp_path / "nope", SOURCE)


CLI = [sys.executable, "-m", "posepipe.flows"]


def test_cli_settle_option_and_skipped_files_in_json(store, drop, shared_data):
    doc, image, name, n = people_files(shared_data, 1)[0]
    write_old(drop / name, image)
    base = CLI + ["ingest", "labelme", str(drop), "--source", SOURCE, "--store", str(store.root)]
    bad = subprocess.run(base + ["--settle", "-1"], capture_output=True, text=True, timeout=LONG)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--settle" in bad.stderr
    helped = subprocess.run(CLI + ["ingest", "labelme", "--help"], capture_output=True, text=True, timeout=LONG)
    assert "--settle" in helped.stdout

    stop = threading.Event()
    target = drop / "a.json"
    target.write_bytes(doc[:200])

    def write_for_ever():  # a copy that never ends while the command runs
        k = 200
        while not stop.is_set():
            with open(target, "ab") as fh:
                fh.write(doc[k:k + 1] or b" ")
            k += 1
            stop.wait(0.05)

    writer = threading.Thread(target=write_for_ever)
    writer.start()
    try:
        run = subprocess.run(base + ["--settle", "3", "--json"], capture_output=True, text=True, timeout=LONG)
    finally:
        stop.set()
        writer.join(LONG)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)
    assert (out["files_read"], out["files_skipped"]) == (0, 1)
    assert [(f["relative"], f["status"], f["reason"]) for f in out["files"]] == [
        ("a.json", "skipped", "still_being_written")]
    human = subprocess.run(base + ["--settle", "0"], capture_output=True, text=True, timeout=LONG)
    assert human.returncode == 0 and "a.json" in human.stderr, human.stderr  # --settle 0: taken as it is
