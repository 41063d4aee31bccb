"""Retention of run history: delete finished runs older than a cut-off, in batches,
keeping the newest runs of every schedule however old they are."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import transaction
from django.utils import timezone
from django_celery_results.models import TaskResult

from scheduler_app.states import TERMINAL_STATES


def protected_runs(keep_last: int, cutoff: dt.datetime) -> set[int]:
    """Primary keys of the newest `keep_last` runs of each schedule that the cut-off would
    otherwise delete (a schedule that runs often has its newest runs after the cut-off)."""
    if keep_last <= 0:
        return set()
    names = TaskResult.objects.exclude(periodic_task_name=None).values_list("periodic_task_name", flat=True)
    keep: set[int] = set()
    for name in names.distinct().order_by():
        newest = TaskResult.objects.filter(periodic_task_name=name).order_by("-date_done", "-pk")[:keep_last]
        keep.update(pk for pk, done in newest.values_list("pk", "date_done") if done < cutoff)
    return keep


def cleanup_old_runs(
    max_age: dt.timedelta, *, keep_last: int = 10, batch_size: int = 50_000, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Delete runs in a terminal state that finished before now - max_age.

    The newest `keep_last` runs of each schedule stay, so a rarely running schedule never
    loses its history. Batches walk the primary key upwards: each is one DELETE of a
    primary-key range (the spared runs in it excluded), its own short transaction, so no
    lock is held for long and memory stays bounded whatever the table's size. Running
    runs (PENDING, STARTED, RETRY, PROGRESS, WAITING) are never touched. Idempotent: a
    second call finds nothing more.
    """
    cutoff = (now or timezone.now()) - max_age
    expired = TaskResult.objects.filter(status__in=TERMINAL_STATES, date_done__lt=cutoff)
    keep = protected_runs(keep_last, cutoff)
    deleted = batches = 0
    low: int = 0
    while True:
        high = expired.filter(pk__gt=low).order_by("pk").values_list("pk", flat=True)[batch_size - 1 : batch_size]
        bound = next(iter(high), None)  # the batch's last primary key; None: the rest fits in one batch
        batch = expired.filter(pk__gt=low, **({"pk__lte": bound} if bound else {}))
        spared = [pk for pk in keep if pk > low and (bound is None or pk <= bound)]
        with transaction.atomic():
            count, _ = batch.exclude(pk__in=spared).delete()
        deleted, batches = deleted + count, batches + 1
        if bound is None:
            return {"deleted": deleted, "kept_newest": len(keep), "batches": batches, "cutoff": cutoff.isoformat()}
        low = bound
