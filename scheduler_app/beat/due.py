"""The heap of due slots: a tick looks at its top only.

Each item is one int: the due moment in microseconds since the epoch above the entry's
pk (`PK_BITS`), so that a million items cost 40 bytes each rather than a tuple's 120. An
entry remembers the key of its live item (`Entry.heap_key`); an entry that is reloaded or
moved gets a new key, and older items are dropped when they surface, so nothing is ever
searched for and removed. Every beat keeps its heap current, the standbys too: a standby
moves its entries on from the leader's marks as their slots pass (`Planner.learn`), so
that taking over reads the marks of only the slots due meanwhile.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

from scheduler_app.beat.entries import Entry

PK_BITS = 48  # pks below 2**48 (django-celery-beat's are 32-bit)
PK_MASK = (1 << PK_BITS) - 1


def key_of(entry: Entry) -> int | None:
    due_at = entry.due_at
    if due_at is None:
        return None
    return round(due_at.timestamp() * 1_000_000) << PK_BITS | entry.pk


class DueHeap:
    def __init__(self) -> None:
        self._items: list[int] = []

    def __len__(self) -> int:
        return len(self._items)

    def push(self, entry: Entry) -> None:
        key = key_of(entry)
        entry.heap_key = key
        if key is not None:
            heapq.heappush(self._items, key)

    def rebuild(self, entries: Iterable[Entry]) -> None:
        items = []
        for entry in entries:
            entry.heap_key = key = key_of(entry)
            if key is not None:
                items.append(key)
        heapq.heapify(items)
        self._items = items

    def first_due(self) -> float | None:
        """The epoch of the earliest item (perhaps a stale one), or None when empty."""
        return (self._items[0] >> PK_BITS) / 1_000_000 if self._items else None

    def pop_due(self, now: float, entries: Mapping[int, Entry], most: int | None = None) -> list[Entry]:
        """Every entry due at `now` (the `most` earliest), in due order; stale items are dropped."""
        due: list[Entry] = []
        limit = (round(now * 1_000_000) + 1) << PK_BITS  # every key due up to now's microsecond
        most = len(self._items) if most is None else most
        while self._items and self._items[0] < limit and len(due) < most:
            key = heapq.heappop(self._items)
            entry = entries.get(key & PK_MASK)
            if entry is not None and entry.heap_key == key:
                entry.heap_key = None  # a copy of this item (pushed again unchanged) is stale
                due.append(entry)
        return due
