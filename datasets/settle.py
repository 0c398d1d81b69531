"""Whether files are done being written: the settle rule for drop folders and scheduled inputs.

Annotators copy files into drop folders over network shares and sync tools, so a file appears
before it is complete. A file is taken only once it is **stable**:

* its modification time is at least ``settle`` seconds old at first sight: it was written long
  ago, or it arrived by an atomic rename (a rename keeps the source's mtime); or
* its ``(size, mtime_ns)`` has been observed unchanged for ``settle`` seconds of this machine's
  clock. This is the only way for a file seen changing (a size change under an unchanged
  mtime means the mtime is not to be trusted) and for one whose mtime comes from another
  machine's clock running ahead.

Anything else is **unsettled** (seen changing, or too fresh): callers skip it and look again
later; it is never read, so never rejected for being half written. ``settle <= 0`` disables
the rule: every file is stable.

:func:`decide` is the whole rule, a pure function of snapshots, earlier observations and a
clock reading. :class:`Settler` keeps the observations between looks and waits (clock and
sleep injectable, so tests need not sleep).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

DEFAULT_SETTLE_SECONDS = 5.0


@dataclass(frozen=True)
class Snapshot:
    """What a stat says about a file's content: it changes whenever the file is written."""
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "Snapshot":
        return cls(st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Seen:
    """A snapshot, the clock time it was first observed (unchanged since), and whether the file
    was seen changing (then only observed stillness counts: its mtime may not be trusted)."""
    snapshot: Snapshot
    since: float
    changed: bool = False


@dataclass(frozen=True)
class Unsettled:
    snapshot: Snapshot
    ready_at: float  # the earliest clock time it can be stable, if it does not change again
    why: str  # for log lines: "modified 0.4 s ago", "changed while observed", ...


@dataclass
class Verdict:
    stable: dict[str, Snapshot] = field(default_factory=dict)
    unsettled: dict[str, Unsettled] = field(default_factory=dict)


def check_settle(settle: float, option: str = "--settle") -> float:
    """The settle interval as a float, or a one-line error naming the option."""
    from .errors import PosepipeError

    try:
        value = float(settle)
    except (TypeError, ValueError):
        raise PosepipeError(f"{option} must be a number of seconds, got {settle!r}") from None
    if not math.isfinite(value) or value < 0:
        raise PosepipeError(f"{option} must be 0 (off) or a positive number of seconds, got {settle!r}")
    return value


def decide(snapshots: Mapping[str, Snapshot], seen: Mapping[str, Seen], now: float,
           settle: float) -> tuple[Verdict, dict[str, Seen]]:
    """Which files are stable now, and the observations to remember for the next look.

    ``snapshots``: path -> its snapshot now. ``seen``: what earlier looks observed (path -> the
    snapshot and since when). ``now``: the clock, in seconds (the same epoch as mtimes: wall time).
    """
    verdict = Verdict()
    memory: dict[str, Seen] = {}
    for path, snap in snapshots.items():
        if settle <= 0:
            verdict.stable[path] = snap
            continue
        before = seen.get(path)
        if before is None or before.since > now:  # first sight (or the clock stepped back)
            before = Seen(snap, now, False if before is None else before.changed)
        elif before.snapshot != snap:
            before = Seen(snap, now, True)
        mtime = snap.mtime_ns / 1e9
        age = now - mtime
        trust_mtime = not before.changed and age >= 0
        if (trust_mtime and age >= settle) or now - before.since >= settle:
            verdict.stable[path] = snap
            continue
        memory[path] = before
        ready = before.since + settle
        if trust_mtime:
            ready = min(ready, mtime + settle)
            why = f"modified {age:.1f} s ago"
        elif before.changed:
            why = "changed while observed"
        else:
            why = f"modified {-age:.1f} s in the future by this machine's clock (another clock?)"
        verdict.unsettled[path] = Unsettled(snap, ready, why)
    return verdict, memory


class Settler:
    """Looks at files repeatedly, remembering what it saw, and waits for them to settle."""

    def __init__(self, settle: float, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        self.settle = settle
        self.clock, self.sleep = clock, sleep
        self.seen: dict[str, Seen] = {}

    def look(self, snapshots: Mapping[str, Snapshot]) -> Verdict:
        verdict, self.seen = decide(snapshots, self.seen, self.clock(), self.settle)
        return verdict

    def wait(self, scan: Callable[[], Mapping[str, Snapshot]], budget: float | None = None) -> Verdict:
        """Look at ``scan()``, and again while some file is unsettled that stopped changing within
        ``budget`` seconds (default: the settle interval) of the first look, until it is stable.

        So a copy that ends within the budget is waited for (at most budget + settle seconds in
        all), and one still changing after it is given up on: the verdict lists it unsettled."""
        budget = self.settle if budget is None else budget
        deadline = self.clock() + budget + self.settle
        verdict = self.look(scan())
        while verdict.unsettled and self.settle > 0:
            now = self.clock()
            ready = min(u.ready_at for u in verdict.unsettled.values())
            if ready > deadline:  # changed after the budget: it cannot settle in time
                break
            # Short naps: a file that is replaced by an old one (a rename) is taken at once.
            self.sleep(min(max(ready - now, 0.0) + 0.01, 1.0))
            verdict = self.look(scan())
        return verdict


def snapshots(paths: Iterable[str | os.PathLike]) -> dict[str, Snapshot]:
    """path -> snapshot for each path that exists (links followed); vanished ones are left out."""
    out = {}
    for path in paths:
        try:
            out[os.fspath(path)] = Snapshot.of(os.stat(path))
        except FileNotFoundError:
            continue
    return out


def tree_snapshots(root: str | os.PathLike) -> dict[str, Snapshot]:
    """Every file under ``root`` (hidden files and folders skipped) -> its snapshot."""
    out: dict[str, Snapshot] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out.update(snapshots(os.path.join(dirpath, f) for f in filenames if not f.startswith(".")))
    return out


def describe(unsettled: Mapping[str, Unsettled], limit: int = 5) -> str:
    """'a.json (modified 0.4 s ago), b.jpg (...)' for log lines, the first ``limit`` named."""
    names = [f"{path} ({u.why})" for path, u in sorted(unsettled.items())]
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "")
