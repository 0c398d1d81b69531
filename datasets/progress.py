"""A progress hook the domain code calls without knowing who draws it (rich in the CLI)."""

from __future__ import annotations

from typing import Iterable, Iterator, Protocol, TypeVar

T = TypeVar("T")


class Progress(Protocol):
    def track(self, items: Iterable[T], total: int, description: str) -> Iterator[T]: ...


class NoProgress:
    def track(self, items: Iterable[T], total: int, description: str) -> Iterator[T]:
        return iter(items)
