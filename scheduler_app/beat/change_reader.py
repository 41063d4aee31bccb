"""Reading the change log (the database's triggers write it: `beat.triggers`) once a second.

Beat reads the log ids above the last it saw. Ids are handed out before their transactions
commit, so missing ids are looked for again for a while (`GAP_PATIENCE`). Every write of
every table beat reads is logged, a `QuerySet.update()` and raw SQL included, so
django-celery-beat's `PeriodicTasks` timestamp is not needed (nor read).
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.utils import timezone

from scheduler_app.models import ScheduleChange

GAP_PATIENCE = 300.0  # seconds a missing change-log id may still turn up (a transaction not yet committed)
MANY_GAPS = 500  # missing ids looked for in one query (SQLite)
CHANGE_LOG_RETENTION = dt.timedelta(hours=1)  # a beat that was away longer starts with a full load anyway
UTC = dt.UTC
ChangeRow = tuple[int, str, int, dt.datetime]  # (log id, kind, object id, at)


@functools.cache
def changes_query() -> tuple[str, tuple[Any, ...]]:
    """The SQL of `ChangeReader.read`, compiled once (compiling it cost more than running it):
    the ids after one, in order, at most so many."""
    changes = ScheduleChange.objects.filter(id__gt=0).order_by("id").values_list("id", "kind", "object_id", "at")
    sql, params = changes.query.sql_with_params()
    return f"{sql} LIMIT %s", params


def aware(moment: dt.datetime | str) -> dt.datetime:
    """A timestamp read with raw SQL: SQLite gives naive UTC (or text), PostgreSQL aware."""
    if isinstance(moment, str):
        moment = dt.datetime.fromisoformat(moment)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@dataclass(frozen=True)
class Position:
    """Where the log stood before a full load: the load has seen everything up to it."""

    change_id: int

    @classmethod
    def now(cls) -> Position:
        return cls(ScheduleChange.objects.order_by("-id").values_list("id", flat=True).first() or 0)


class ChangeReader:
    def __init__(self) -> None:
        self.change_id = 0
        self._gaps: dict[int, float] = {}  # a missing id -> until when it is looked for

    def restart(self, position: Position) -> None:
        """After a full load: read on from where the log stood before it. The ids still
        missing below it are looked for still: their transactions may commit after the load
        read the tables."""
        self.change_id = position.change_id

    def read(self, most: int) -> list[ChangeRow]:
        """The new change-log rows, at most `most` (and any still missing from earlier), in id order."""
        now = time.monotonic()
        self._gaps = {gap: deadline for gap, deadline in self._gaps.items() if deadline > now}
        sql, params = changes_query()
        with connection.cursor() as cursor:
            cursor.execute(sql, [self.change_id, most])
            found: list[ChangeRow] = [(pk, kind, oid, aware(at)) for pk, kind, oid, at in cursor.fetchall()]
        if self._gaps:
            found += self._late()
        return sorted(found)

    def _late(self) -> list[ChangeRow]:
        """The rows of missing ids that turned up: on PostgreSQL one array parameter however
        many; else lists of MANY_GAPS ids (below SQLite's parameter limit)."""
        gaps = sorted(self._gaps)
        if connection.vendor == "postgresql":
            table = connection.ops.quote_name(ScheduleChange._meta.db_table)
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT id, kind, object_id, at FROM {table} WHERE id = ANY(%s)", [gaps])  # noqa: S608
                return [(pk, kind, oid, aware(at)) for pk, kind, oid, at in cursor.fetchall()]
        rows = ScheduleChange.objects.values_list("id", "kind", "object_id", "at")
        found: list[ChangeRow] = []
        for start in range(0, len(gaps), MANY_GAPS):
            found += rows.filter(id__in=gaps[start : start + MANY_GAPS])
        return found

    def loaded_after(self, before: int, ids: list[int]) -> None:
        """A full load answered these rows (read from after `before`): they are done, and
        the ids missing among them are looked for still (the load may not have seen their
        transactions). The position stays where the load put it."""
        now = time.monotonic()
        seen = set(ids)
        for found in ids:
            self._gaps.pop(found, None)
        for missing in range(before + 1, max(ids, default=before)):
            if missing not in seen:
                self._gaps.setdefault(missing, now + GAP_PATIENCE)

    def track_gaps(self, ids: list[int]) -> None:
        """Change-log ids are handed out before their transactions commit, so a later id
        can be seen before an earlier one: the missing ones are looked for again for a while."""
        now = time.monotonic()
        for found in ids:
            self._gaps.pop(found, None)
        top = max(ids, default=self.change_id)
        seen = set(ids)
        for missing in range(self.change_id + 1, top):
            if missing not in seen:
                self._gaps[missing] = now + GAP_PATIENCE
        self.change_id = max(self.change_id, top)


def prune_change_log() -> None:
    ScheduleChange.objects.filter(at__lt=timezone.now() - CHANGE_LOG_RETENTION).delete()
