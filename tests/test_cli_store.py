"""The posepipe command as a user runs it: exit codes, one-line errors, --json, --help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "posepipe.flows", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or REPO)


@pytest.mark.parametrize("args", [[], ["ingest"], ["ingest", "coco"], ["export", "coco"], ["rejects"], ["stats"]])
def test_every_command_has_help(args):
    out = run(*args, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout


def test_ingest_stats_rejects_export_cycle(tmp_path, shared_data):
    store = tmp_path / "store"
    crowd = shared_data / "pose-samples/crowdpose"
    ok = run("ingest", "coco", crowd / "test_crowdpose.json", "--images", crowd, "--source", "crowd",
             "--store", store, "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["annotations_accepted"] == 5 and report["notes"] == {"area_derived_from_bbox": 5}

    trb = shared_data / "pose-samples/mpii"
    strict = run("ingest", "coco", trb / "test_mpii_trb.json", "--images", trb, "--source", "trb",
                 "--store", store, "--strict")
    assert strict.returncode == 1
    assert "bbox_missing 5" in strict.stderr

    rejects = json.loads(run("rejects", "--store", store, "--json").stdout)
    assert len(rejects) == 5
    for row in rejects:
        assert {"kind", "record_id", "file", "reason", "message"} <= set(row)
        assert row["kind"] == "annotation" and row["reason"] == "bbox_missing"
    assert json.loads(run("rejects", "--store", store, "--source", "crowd", "--json").stdout) == []

    stats = json.loads(run("stats", "--store", store, "--json").stdout)
    for s in stats["sources"].values():
        assert s["annotations_read"] == s["annotations_accepted"] + s["annotations_rejected"]
    assert stats["totals"]["annotations_rejected"] == 5

    out = tmp_path / "out.json"
    exp = run("export", "coco", "--source", "crowd", "--out", out, "--images", tmp_path / "imgs", "--store", store)
    assert exp.returncode == 0, exp.stderr
    assert len(json.loads(out.read_text())["annotations"]) == 5
    assert len(list((tmp_path / "imgs").iterdir())) == 2


def test_user_errors_are_one_line_exit_2(tmp_path):
    cases = [
        ["ingest", "coco", tmp_path / "missing.json", "--images", tmp_path, "--source", "s", "--store", tmp_path / "st"],
        ["export", "coco", "--source", "nope", "--out", tmp_path / "o.json", "--store", tmp_path / "st"],
        ["stats", "--source", "nope", "--store", tmp_path / "st"],
    ]
    for args in cases:
        out = run(*args)
        assert out.returncode == 2, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("posepipe: error:"), out.stderr
        assert "Traceback" not in out.stderr
    (tmp_path / "bad.json").write_text("{not json")
    bad = run("ingest", "coco", tmp_path / "bad.json", "--images", tmp_path, "--source", "s", "--store", tmp_path / "st")
    assert bad.returncode == 2 and "bad.json" in bad.stderr and "Traceback" not in bad.stderr
    usage = run("ingest", "coco", "--no-such-option")
    assert usage.returncode == 2
