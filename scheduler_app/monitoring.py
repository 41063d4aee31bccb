"""Which schedules are late or failing: the platform's dead man's switch.

A schedule is **late** when the slot it should have run by now (the latest slot before
now minus its grace time) has no run started at or after it: beat did not send it, or no
worker took it. The grace time follows the period: half of it, at least a minute, at most
an hour. A schedule is **failing** when its newest finished run failed (the count of
failures in a row is kept). `check_schedules` stores the verdict in `ScheduleHealth`,
which the console's filters and dashboard read; the `maintenance.check_schedules` task
runs it every minute.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from celery import states as celery_states
from django.db.models import Max
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app import slots
from scheduler_app.models import ScheduleHealth

MIN_GRACE = dt.timedelta(minutes=1)
MAX_GRACE = dt.timedelta(hours=1)
FAILURE_LOOKBACK = 10  # finished runs read to count failures in a row
CHUNK = 500
NEUTRAL = {celery_states.PENDING, celery_states.STARTED, celery_states.RETRY, celery_states.REVOKED, "SKIPPED",
           "WAITING", "PROGRESS"}  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    state: str
    expected_at: dt.datetime | None = None
    failures: int = 0


def grace_for(table: slots.Timetable, now: dt.datetime) -> dt.timedelta:
    """Half the schedule's period, between a minute and an hour."""
    first = table.slot_after(now)
    second = table.slot_after(first) if first else None
    if first is None or second is None:
        return MAX_GRACE
    return min(max((second - first) / 2, MIN_GRACE), MAX_GRACE)


def expected_slot(task: PeriodicTask, now: dt.datetime) -> dt.datetime | None:
    """The latest slot that should have started by now (None: none is due yet). Slots from
    before the schedule's last change do not count: an edit or a resume starts afresh."""
    table = slots.timetable(task.clocked or task.interval or task.crontab or task.solar)
    cutoff = now - grace_for(table, now)
    if task.last_run_at and task.last_run_at >= task.date_changed:
        start: dt.datetime | None = task.last_run_at
    else:
        start = slots.first_slot(table, last_run_at=None, start_time=task.start_time, created=task.date_changed)
    if start is None or start > cutoff:
        return None
    return slots.latest_until(table, start, cutoff)


def verdict(task: PeriodicTask, latest_start: dt.datetime | None, failures: int, now: dt.datetime) -> Verdict:
    try:
        expected = expected_slot(task, now)
    except slots.InvalidSchedule:
        expected = None
    if expected is not None and (latest_start is None or latest_start < expected):
        return Verdict(ScheduleHealth.LATE, expected, failures)
    return Verdict(ScheduleHealth.FAILING if failures else ScheduleHealth.OK, None, failures)


def failures_in_a_row(statuses: Iterable[str]) -> int:
    """Failed runs at the top of the newest-first `statuses` (runs not finished are passed over)."""
    count = 0
    for status in statuses:
        if status in NEUTRAL:
            continue
        if status not in (celery_states.FAILURE, "EXPIRED"):
            break
        count += 1
    return count


def check_schedules(now: dt.datetime | None = None) -> dict[str, int]:
    """Judge every enabled schedule and store what changed. Returns the count per state."""
    now = now or timezone.now()
    counts = dict.fromkeys(ScheduleHealth.STATES, 0)
    enabled = PeriodicTask.objects.filter(enabled=True).select_related("interval", "crontab", "solar", "clocked")
    for chunk in chunks(enabled.order_by("pk").iterator(chunk_size=CHUNK), CHUNK):
        for found in judge_and_store(chunk, now):
            counts[found.state] += 1
    ScheduleHealth.objects.exclude(periodic_task__enabled=True).delete()
    return counts


def judge_and_store(tasks: list[PeriodicTask], now: dt.datetime) -> list[Verdict]:
    known = {row.pk: row for row in ScheduleHealth.objects.filter(pk__in=[task.pk for task in tasks])}
    activity = latest_activity([task.name for task in tasks])
    verdicts, fresh = [], []
    for task in tasks:
        started, done = activity.get(task.name, (None, None))
        row = known.get(task.pk)
        # No run started or ended since the last check: the count of failures stands.
        quiet = row is not None and max(started or row.checked_at, done or row.checked_at) < row.checked_at
        failures = row.failures if quiet else failures_in_a_row(recent_statuses(task.name))
        found = verdict(task, started, failures, now)
        verdicts.append(found)
        if row is None:
            fresh.append(ScheduleHealth(periodic_task_id=task.pk, since=now, checked_at=now, **as_fields(found)))
        elif (row.state, row.expected_at, row.failures) != (found.state, found.expected_at, found.failures):
            since = row.since if row.state == found.state else now
            ScheduleHealth.objects.filter(pk=task.pk).update(since=since, **as_fields(found))
    ScheduleHealth.objects.bulk_create(fresh, ignore_conflicts=True)
    ScheduleHealth.objects.filter(pk__in=known).update(checked_at=now)
    return verdicts


def latest_activity(names: list[str]) -> dict[str, tuple[dt.datetime | None, dt.datetime | None]]:
    """Per schedule name: the newest run's creation and the newest finish, in one query."""
    rows = (
        TaskResult.objects.filter(periodic_task_name__in=names)
        .values("periodic_task_name")
        .annotate(created=Max("date_created"), done=Max("date_done"))
        .values_list("periodic_task_name", "created", "done")
    )
    return {name: (created, done) for name, created, done in rows}


def recent_statuses(name: str) -> list[str]:
    runs = TaskResult.objects.filter(periodic_task_name=name).order_by("-date_created")
    return list(runs.values_list("status", flat=True)[:FAILURE_LOOKBACK])


def as_fields(found: Verdict) -> dict[str, Any]:
    return {"state": found.state, "expected_at": found.expected_at, "failures": found.failures}


def chunks(items: Iterable[PeriodicTask], size: int) -> Iterator[list[PeriodicTask]]:
    chunk: list[PeriodicTask] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
