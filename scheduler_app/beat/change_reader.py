"""Reading the change log (`scheduler_app.beat.changes` writes it) once a second.

Beat reads the log ids above the last it saw, together with django-celery-beat's
`PeriodicTasks` timestamp, in one query. Ids are handed out before their transactions
commit, so missing ids are looked for again for a while (`GAP_PATIENCE`). A bump of the
timestamp that no log row explains is a bulk `QuerySet.update()`: the caller reloads all.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import BigIntegerField, CharField, Value
from django.utils import timezone
from django_celery_beat.models import PeriodicTasks

from scheduler_app.models import ScheduleChange

GAP_PATIENCE = 30.0  # seconds a missing change-log id may still turn up (a transaction not yet committed)
CHANGE_LOG_RETENTION = dt.timedelta(hours=1)  # a beat that was away longer starts with a full load anyway
BUMP = "bump"  # the PeriodicTasks timestamp's row in `ChangeReader.read`
BUMP_WINDOW = dt.timedelta(seconds=1)  # a save's change-log row follows its bump by less
UTC = dt.UTC
ChangeRow = tuple[int, str, int, dt.datetime]  # (log id, kind, object id, at)


@functools.cache
def changes_query() -> tuple[str, tuple[Any, ...]]:
    """The SQL of `ChangeReader.read`, compiled once (compiling it cost more than running it)."""
    changes = ScheduleChange.objects.filter(id__gt=0).values_list("id", "kind", "object_id", "at")
    bump = PeriodicTasks.objects.filter(ident=1).values_list(
        Value(0, BigIntegerField()), Value(BUMP, CharField()), Value(0, BigIntegerField()), "last_update"
    )
    return changes.union(bump, all=True).query.sql_with_params()


def aware(moment: dt.datetime | str) -> dt.datetime:
    """A timestamp read with raw SQL: SQLite gives naive UTC (or text), PostgreSQL aware."""
    if isinstance(moment, str):
        moment = dt.datetime.fromisoformat(moment)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@dataclass(frozen=True)
class Position:
    """Where the log stood before a full load: the load has seen everything up to it."""

    change_id: int
    changes_ts: dt.datetime | None

    @classmethod
    def now(cls) -> Position:
        change_id = ScheduleChange.objects.order_by("-id").values_list("id", flat=True).first() or 0
        return cls(change_id, PeriodicTasks.last_change())


class ChangeReader:
    def __init__(self) -> None:
        self.change_id = 0
        self._gaps: dict[int, float] = {}  # a missing id -> until when it is looked for
        self._changes_ts: dt.datetime | None = None
        self._unexplained: dt.datetime | None = None  # a PeriodicTasks bump waiting for its log row

    def restart(self, position: Position) -> None:
        """After a full load: read on from where the log stood before it."""
        self.change_id, self._changes_ts, self._gaps = position.change_id, position.changes_ts, {}

    def read(self) -> tuple[list[ChangeRow], dt.datetime | None]:
        """The new change-log rows (and any still missing from earlier), and django-celery-
        beat's `PeriodicTasks` timestamp."""
        now = time.monotonic()
        self._gaps = {gap: deadline for gap, deadline in self._gaps.items() if deadline > now}
        sql, params = changes_query()
        with connection.cursor() as cursor:
            cursor.execute(sql, [self.change_id, *params[1:]])
            found: list[ChangeRow] = [(pk, kind, oid, aware(at)) for pk, kind, oid, at in cursor.fetchall()]
        if self._gaps:
            late = ScheduleChange.objects.filter(id__in=list(self._gaps)).values_list("id", "kind", "object_id", "at")
            found += list(late)
        bumped = next((at for _, kind, _, at in found if kind == BUMP), None)
        return sorted(row for row in found if row[1] != BUMP), bumped

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

    def bulk_update_seen(self, bumped: dt.datetime | None, logged: list[dt.datetime]) -> bool:
        """Every `PeriodicTask.save()` bumps django-celery-beat's `PeriodicTasks` timestamp
        just before its change-log row is written; its admin's bulk actions bump it after a
        `QuerySet.update()` that writes no row. A bump that no row explains, still so one
        check later (the row may commit a moment after the bump), is a bulk update."""
        if bumped is None or (self._changes_ts is not None and bumped <= self._changes_ts):
            return False
        if any(bumped <= at <= bumped + BUMP_WINDOW for at in logged):
            self._changes_ts, self._unexplained = bumped, None
            return False
        if self._unexplained != bumped:
            self._unexplained = bumped
            return False
        self._changes_ts, self._unexplained = bumped, None
        return True


def prune_change_log() -> None:
    ScheduleChange.objects.filter(at__lt=timezone.now() - CHANGE_LOG_RETENTION).delete()
