"""The settle rule on its own: which files are stable, from (size, mtime_ns) snapshots and a clock.
No sleeping: the clock is a number the test moves."""

from __future__ import annotations

import pytest

from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.settle import Seen, Settler, Snapshot, check_settle, decide, describe

NOW = 1_000_000.0
S = 5.0


def snap(size: int, mtime: float) -> Snapshot:
    return Snapshot(size, int(mtime * 1e9))


def test_a_file_older_than_the_interval_is_stable_at_first_sight():
    # Written long ago, or arrived by an atomic rename (which keeps the source's mtime).
    verdict, memory = decide({"a": snap(10, NOW - 3600), "b": snap(10, NOW - S)}, {}, NOW, S)
    assert set(verdict.stable) == {"a", "b"} and not verdict.unsettled and memory == {}


def test_a_fresh_file_waits_until_its_mtime_is_old_enough():
    files = {"a": snap(10, NOW - 1)}
    verdict, memory = decide(files, {}, NOW, S)
    assert list(verdict.unsettled) == ["a"] and verdict.unsettled["a"].ready_at == pytest.approx(NOW - 1 + S)
    assert "modified 1.0 s ago" in verdict.unsettled["a"].why
    verdict, memory = decide(files, memory, NOW + 3.9, S)
    assert list(verdict.unsettled) == ["a"]
    verdict, memory = decide(files, memory, NOW + 4.0, S)
    assert list(verdict.stable) == ["a"] and memory == {}


def test_a_file_seen_changing_starts_again():
    verdict, memory = decide({"a": snap(10, NOW - 4)}, {}, NOW, S)
    assert "a" in verdict.unsettled
    # It grew: same mtime second but a new size is a change too.
    verdict, memory = decide({"a": snap(20, NOW - 4)}, memory, NOW + 2, S)
    assert "a" in verdict.unsettled and verdict.unsettled["a"].why == "changed while observed"
    assert memory["a"] == Seen(snap(20, NOW - 4), NOW + 2, True)
    verdict, memory = decide({"a": snap(20, NOW - 4)}, memory, NOW + 6.9, S)
    assert "a" in verdict.unsettled  # still: its old mtime is not trusted once it was seen changing
    verdict, memory = decide({"a": snap(20, NOW - 4)}, memory, NOW + 7, S)
    assert list(verdict.stable) == ["a"] and memory == {}


def test_a_file_from_a_clock_running_ahead_settles_by_observation():
    files = {"a": snap(10, NOW + 3600)}  # an hour in the future: its age says nothing
    verdict, memory = decide(files, {}, NOW, S)
    assert "in the future" in verdict.unsettled["a"].why and verdict.unsettled["a"].ready_at == NOW + S
    verdict, memory = decide(files, memory, NOW + S - 0.1, S)
    assert "a" in verdict.unsettled
    verdict, _ = decide(files, memory, NOW + S, S)  # unchanged for the whole interval
    assert list(verdict.stable) == ["a"]


def test_a_clock_step_back_does_not_count_as_observed_time():
    memory = {"a": Seen(snap(10, NOW + 3600), NOW + 100)}  # seen "later" than now
    verdict, memory = decide({"a": snap(10, NOW + 3600)}, memory, NOW, S)
    assert "a" in verdict.unsettled and memory["a"].since == NOW


def test_settle_zero_takes_everything():
    verdict, memory = decide({"a": snap(1, NOW), "b": snap(1, NOW + 50)}, {}, NOW, 0.0)
    assert set(verdict.stable) == {"a", "b"} and memory == {}


class FakeTime:
    """A clock and a sleep that moves it; ``on_sleep`` runs after each nap (the world moving on)."""

    def __init__(self, start: float, on_sleep=None):
        self.now, self.naps, self.on_sleep = start, [], on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.naps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(self)


def test_wait_returns_at_once_when_everything_is_old():
    t = FakeTime(NOW)
    verdict = Settler(S, clock=t.clock, sleep=t.sleep).wait(lambda: {"a": snap(1, NOW - 60)})
    assert list(verdict.stable) == ["a"] and t.naps == []


def test_wait_sleeps_until_a_fresh_file_settles():
    t = FakeTime(NOW)
    verdict = Settler(S, clock=t.clock, sleep=t.sleep).wait(lambda: {"a": snap(1, NOW - 2)})
    assert list(verdict.stable) == ["a"] and NOW + 3 <= t.now <= NOW + 3.5


def test_a_file_that_never_settles_is_given_up_on_within_the_budget():
    state = {"size": 1}

    def grow(t):  # written for ever: a new size and mtime after every nap
        state["size"] += 1

    t = FakeTime(NOW, grow)
    verdict = Settler(S, clock=t.clock, sleep=t.sleep).wait(
        lambda: {"a": snap(state["size"], t.now), "b": snap(1, NOW - 60)})
    assert list(verdict.stable) == ["b"] and list(verdict.unsettled) == ["a"]
    assert NOW + S <= t.now <= NOW + 2 * S + 1.0  # bounded: changes after the budget are not waited for
    assert describe(verdict.unsettled).startswith("a (changed while observed")


def test_a_copy_that_ends_within_the_budget_is_waited_for():
    state = {"size": 1, "mtime": NOW}

    def copy(t):  # the copy goes on for 4 s of the 5 s budget, then ends
        if t.now < NOW + 4:
            state["size"] += 1
            state["mtime"] = t.now

    t = FakeTime(NOW, copy)
    verdict = Settler(S, clock=t.clock, sleep=t.sleep).wait(lambda: {"a": snap(state["size"], state["mtime"])})
    assert list(verdict.stable) == ["a"] and NOW + 3 + S <= t.now <= NOW + 4 + S + 1.1


@pytest.mark.parametrize("value", [-1, "abc", float("nan"), float("inf")])
def test_bad_settle_values_are_one_line_errors(value):
    with pytest.raises(PosepipeError, match="--settle must be"):
        check_settle(value)


def test_good_settle_values():
    assert check_settle("2.5") == 2.5 and check_settle(0) == 0.0
