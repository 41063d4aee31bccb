"""Retention of run history: delete finished runs older than a cut-off, in batches."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import transaction
from django.utils import timezone
from django_celery_results.models import TaskResult

from scheduler_app.states import TERMINAL_STATES


def cleanup_old_runs(
    max_age: dt.timedelta, *, batch_size: int = 5000, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Delete runs in a terminal state that finished before now - max_age.

    Each batch is its own short transaction, selected by primary key, so no lock is held
    for long and memory stays bounded whatever the table's size. Running runs (PENDING,
    STARTED, RETRY, PROGRESS) are never touched. Idempotent: a second call finds nothing.
    """
    cutoff = (now or timezone.now()) - max_age
    expired = TaskResult.objects.filter(status__in=TERMINAL_STATES, date_done__lt=cutoff)
    deleted = batches = 0
    while ids := list(expired.order_by("pk").values_list("pk", flat=True)[:batch_size]):
        with transaction.atomic():
            count, _ = expired.filter(pk__in=ids).delete()
        deleted += count
        batches += 1
    return {"deleted": deleted, "batches": batches, "cutoff": cutoff.isoformat()}
