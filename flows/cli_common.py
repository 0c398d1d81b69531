"""Shared CLI plumbing: the store option, JSON output, rich progress and error reporting."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

stderr = Console(stderr=True)

StoreOption = typer.Option(
    Path(os.environ.get("POSEPIPE_STORE", "data/store")),
    "--store",
    help="Store root (env POSEPIPE_STORE).",
    show_default=True,
)
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
StrictOption = typer.Option(False, "--strict", help="Exit 1 when any record was rejected.")


class RichProgress:
    """Progress bars on stderr; silent when stderr is not a terminal or output is JSON."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and stderr.is_terminal

    def track(self, items: Iterable[T], total: int, description: str) -> Iterator[T]:
        if not self.enabled or total < 2:
            yield from items
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=stderr, transient=True) as bar:
            task = bar.add_task(description, total=total)
            for item in items:
                yield item
                bar.advance(task)


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def say(message: str) -> None:
    """Human output goes to stderr, so stdout stays clean for --json."""
    stderr.print(message, highlight=False, soft_wrap=True)


def exit_code(code: int) -> None:
    if code:
        raise typer.Exit(code)
