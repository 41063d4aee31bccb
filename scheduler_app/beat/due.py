"""The heap of due slots: a tick looks at its top only.

Items are (due epoch, sequence, entry pk, entry version). An entry that is reloaded or
moved gets a new version, and its older items are dropped when they surface, so nothing
is ever searched for and removed. Only the leader keeps the heap up to date; a new leader
rebuilds it from its entries (`Scheduler._take_over`).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Mapping

from scheduler_app.beat.entries import Entry


class DueHeap:
    def __init__(self, leading: Callable[[], bool]) -> None:
        self._items: list[tuple[float, int, int, int]] = []
        self._seq = itertools.count()
        self._leading = leading

    def __len__(self) -> int:
        return len(self._items)

    def next_version(self) -> int:
        """A new version for an entry (the same counter orders ties in the heap)."""
        return next(self._seq)

    def push(self, entry: Entry) -> None:
        due_at = entry.due_at
        if due_at is not None and self._leading():
            heapq.heappush(self._items, (due_at.timestamp(), next(self._seq), entry.pk, entry.version))

    def rebuild(self, entries: Iterable[Entry]) -> None:
        due = ((e.due_at, e.pk, e.version) for e in entries)
        self._items = [(at.timestamp(), next(self._seq), pk, version) for at, pk, version in due if at is not None]
        heapq.heapify(self._items)

    def first_due(self) -> float | None:
        """The epoch of the earliest item (perhaps a stale one), or None when empty."""
        return self._items[0][0] if self._items else None

    def pop_due(self, now: float, entries: Mapping[int, Entry]) -> list[Entry]:
        """Every entry due at `now`, in due order; stale items are dropped."""
        due = []
        while self._items and self._items[0][0] <= now:
            _, _, pk, version = heapq.heappop(self._items)
            entry = entries.get(pk)
            if entry is not None and entry.version == version:
                due.append(entry)
        return due
