"""Waiting in tests: on conditions, polled, with deadlines generous enough to be reached only when
something is wrong (a loaded machine makes a test slower, never red). No fixed sleeps for results."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

LONG = 600  # seconds


def wait_until(what: str, check: Callable[[], T], timeout: float = LONG, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something true (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _flocks(path: Path) -> list[tuple[bool, str]]:
    """(blocked, mode) of every flock on ``path``'s inode, from /proc/locks (waiters are marked ->)."""
    inode = os.stat(path).st_ino
    found = []
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()[1:]
        blocked = parts[:1] == ["->"]
        if blocked:
            parts = parts[1:]
        if len(parts) >= 5 and parts[0] == "FLOCK" and int(parts[4].rsplit(":", 1)[1]) == inode:
            found.append((blocked, parts[2]))
    return found


def flock_waiters(path: Path) -> int:
    """How many flock requests on ``path`` are waiting (some process or thread is blocked on it)."""
    return sum(blocked for blocked, _ in _flocks(path))


def flock_held_exclusively(path: Path) -> bool:
    return any(not blocked and mode == "WRITE" for blocked, mode in _flocks(path))


def process_group_gone(pgid: int) -> bool:
    """Whether no live (non-zombie) process is left in process group ``pgid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, _ppid, pgrp = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            return False
    return True
