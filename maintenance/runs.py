"""Retention of run history: delete finished runs older than a cut-off, in batches,
keeping the newest runs of every schedule however old they are."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import transaction
from django.utils import timezone
from django_celery_results.models import TaskResult

from scheduler_app.states import TERMINAL_STATES


def protected_runs(keep_last: int) -> set[int]:
    """Primary keys of the newest `keep_last` runs of each schedule."""
    if keep_last <= 0:
        return set()
    names = TaskResult.objects.exclude(periodic_task_name=None).values_list("periodic_task_name", flat=True)
    keep: set[int] = set()
    for name in names.distinct().order_by():
        newest = TaskResult.objects.filter(periodic_task_name=name).order_by("-date_done", "-pk")
        keep.update(newest.values_list("pk", flat=True)[:keep_last])
    return keep


def cleanup_old_runs(
    max_age: dt.timedelta, *, keep_last: int = 10, batch_size: int = 5000, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Delete runs in a terminal state that finished before now - max_age.

    The newest `keep_last` runs of each schedule stay, so a rarely running schedule never
    loses its history. Batches walk the primary key upwards (keyset pagination), each
    its own short transaction, so no lock is held for long and memory stays bounded
    whatever the table's size. Running runs (PENDING, STARTED, RETRY, PROGRESS, WAITING)
    are never touched. Idempotent: a second call finds nothing more.
    """
    cutoff = (now or timezone.now()) - max_age
    expired = TaskResult.objects.filter(status__in=TERMINAL_STATES, date_done__lt=cutoff).order_by("pk")
    keep = protected_runs(keep_last)
    deleted = batches = 0
    last_pk = 0
    while ids := list(expired.filter(pk__gt=last_pk).values_list("pk", flat=True)[:batch_size]):
        last_pk = ids[-1]
        doomed = [pk for pk in ids if pk not in keep]
        if doomed:
            with transaction.atomic():
                count, _ = TaskResult.objects.filter(pk__in=doomed).delete()
            deleted += count
        batches += 1
    return {"deleted": deleted, "kept_newest": len(keep), "batches": batches, "cutoff": cutoff.isoformat()}
