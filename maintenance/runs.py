"""Retention of run history: delete finished runs older than a cut-off, in batches,
keeping the newest runs of every schedule however old they are."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from django.db import connection, transaction
from django.db.models import Count, Max, Min, QuerySet
from django.utils import timezone
from django_celery_results.models import TaskResult

from scheduler_app.runs.states import TERMINAL_STATES


def protected_runs(keep_last: int, cutoff: dt.datetime) -> set[int]:
    """Primary keys of the newest `keep_last` runs of each schedule that the cut-off would
    otherwise delete. A schedule with `keep_last` runs since the cut-off needs none, so
    only the rarely running schedules are looked at, one indexed query each."""
    if keep_last <= 0:
        return set()
    recent = TaskResult.objects.filter(date_done__gte=cutoff).exclude(periodic_task_name=None)
    busy = recent.values("periodic_task_name").annotate(n=Count("pk")).filter(n__gte=keep_last)
    rare = schedule_names() - {row["periodic_task_name"] for row in busy}
    keep: set[int] = set()
    for name in rare:
        newest = TaskResult.objects.filter(periodic_task_name=name).order_by("-date_done", "-pk")[:keep_last]
        keep.update(pk for pk, done in newest.values_list("pk", "date_done") if done < cutoff)
    return keep


# PostgreSQL has no skip scan: walk the periodic_task_name index one distinct value at a
# time (a loose index scan), milliseconds for a few thousand names in millions of rows.
DISTINCT_NAMES_SQL = """
WITH RECURSIVE names AS (
    SELECT min(periodic_task_name) AS name FROM django_celery_results_taskresult
    UNION ALL
    SELECT (SELECT min(periodic_task_name) FROM django_celery_results_taskresult WHERE periodic_task_name > name)
    FROM names WHERE name IS NOT NULL
)
SELECT name FROM names WHERE name IS NOT NULL
"""


def schedule_names() -> set[str]:
    """Every schedule name that has runs."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(DISTINCT_NAMES_SQL)
            return {name for (name,) in cursor.fetchall()}
    named = TaskResult.objects.exclude(periodic_task_name=None).values_list("periodic_task_name", flat=True)
    return set(cast("QuerySet[TaskResult, str]", named.distinct().order_by()))  # no None: excluded above


def _without_waiting_for_disk() -> None:
    """A batch lost to a crash is deleted again by the next run: PostgreSQL need not wait
    for its commit to reach the disk (the transaction is still atomic)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


def cleanup_old_runs(
    max_age: dt.timedelta, *, keep_last: int = 10, batch_size: int = 50_000, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Delete runs in a terminal state that finished before now - max_age.

    The newest `keep_last` runs of each schedule stay, so a rarely running schedule never
    loses its history. Batches walk the primary key upwards: each is one DELETE of a range
    of `batch_size` primary keys (the spared runs in it excluded), its own short transaction, so no
    lock is held for long and memory stays bounded whatever the table's size. Running
    runs (PENDING, STARTED, RETRY, PROGRESS, WAITING) are never touched. Idempotent: a
    second call finds nothing more.
    """
    cutoff = (now or timezone.now()) - max_age
    expired = TaskResult.objects.filter(status__in=TERMINAL_STATES, date_done__lt=cutoff)
    keep = protected_runs(keep_last, cutoff)
    span = expired.aggregate(low=Min("pk"), high=Max("pk"))
    deleted = batches = 0
    if span["low"] is not None:
        for low in range(span["low"] - 1, span["high"], batch_size):  # ranges (low, low + batch_size]
            batch = expired.filter(pk__gt=low, pk__lte=low + batch_size)
            spared = [pk for pk in keep if low < pk <= low + batch_size]
            with transaction.atomic():
                _without_waiting_for_disk()
                count, _ = batch.exclude(pk__in=spared).delete()
            deleted, batches = deleted + count, batches + 1
    return {"deleted": deleted, "kept_newest": len(keep), "batches": batches, "cutoff": cutoff.isoformat()}
