"""What the in-process beat tests share: schedules on a queue no worker reads, a started
scheduler, and the messages beat published (fixtures in tests/beat/conftest.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from celery import current_app
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from scheduler_app.beat import Scheduler

QUEUE = "beat-tests"  # no test worker consumes it


def interval(seconds: int) -> IntervalSchedule:
    return IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)[0]


def schedule(name: str, seconds: int = 30, *, ago: float | None = None, **fields: Any) -> PeriodicTask:
    """A schedule on the tests' own queue, last run `ago` seconds ago."""
    last = timezone.now() - dt.timedelta(seconds=ago) if ago is not None else fields.pop("last_run_at", None)
    fields.setdefault("interval", interval(seconds))
    return PeriodicTask.objects.create(
        name=name, task="maintenance.purge_expired_sessions", queue=QUEUE, last_run_at=last, **fields
    )


def started(**options: Any) -> Scheduler:
    beat = Scheduler(app=current_app, **options)
    beat.tick()  # the first tick takes the lease
    return beat


def names(published: list[dict[str, Any]]) -> list[str]:
    return sorted(header["schedule"] for header in published)
