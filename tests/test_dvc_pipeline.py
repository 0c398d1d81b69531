"""The shipped dvc.yaml: every stage is a posepipe command whose arguments the CLI accepts."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
import typer

from posepipe.flows.cli import app
from tests.conftest import REPO

STAGES = {"ingest@0", "ingest@1", "synth", "mix", "train", "export", "experiment"}


@pytest.fixture(scope="module")
def dry_run() -> str:
    out = subprocess.run([sys.executable, "-m", "dvc", "repro", "--dry", "-f"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _commands(text: str) -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("Running stage '"):
            current = line.split("'")[1]
            stages[current] = []
        elif line.startswith("> ") and current:
            stages[current].append(line[2:])
    return stages


def _rest(ctx) -> list[str]:
    """Arguments a group context leaves for its subcommand (click names the first part differently by version)."""
    protected = getattr(ctx, "protected_args", None)
    if protected is None:
        protected = getattr(ctx, "_protected_args", [])
    return [*protected, *ctx.args]


def test_pipeline_has_every_stage(dry_run):
    assert set(_commands(dry_run)) == STAGES


def test_every_stage_command_parses(dry_run):
    """Parse each command with the real CLI (without running it): a renamed flag fails here."""
    command = typer.main.get_command(app)
    for stage, lines in _commands(dry_run).items():
        for line in lines:
            args = shlex.split(line)
            assert args[0] == "posepipe", (stage, line)
            ctx = command.make_context("posepipe", args[1:])
            node, rest = command, _rest(ctx)
            while hasattr(node, "resolve_command"):  # a group: walk down to the leaf command
                name, node, rest = node.resolve_command(ctx, rest)
                ctx = node.make_context(name, rest, parent=ctx)  # raises a usage error on bad options
                rest = _rest(ctx)
            assert ctx.command.name in line, (stage, line)
