"""Reads about schedules: a schedule in words and its next run time.

Shared by `list_schedules`, the admin and the API, so all three say the same thing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from cron_descriptor import get_description
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from scheduler_app.catalog import Every

UTC = dt.UTC


@dataclass(frozen=True)
class NextRun:
    at: dt.datetime | None  # in UTC; None when the schedule will not run again
    zone: str
    reason: str = ""  # why there is no next run ("disabled", "one-off already run")

    def local(self) -> dt.datetime | None:
        return self.at.astimezone(ZoneInfo(self.zone)) if self.at else None


def interval_in_words(every: int, period: str) -> str:
    seconds = interval_seconds(every, period)
    if seconds < 1 or seconds != int(seconds):
        return f"every {seconds:g} seconds"
    count, unit = Every(int(seconds)).as_interval()
    unit = unit.removesuffix("s")
    return f"every {unit}" if count == 1 else f"every {count} {unit}s"


def describe(task: PeriodicTask) -> str:
    if task.interval_id:
        return interval_in_words(task.interval.every, task.interval.period)
    if task.crontab_id:
        cron = task.crontab
        expr = f"{cron.minute} {cron.hour} {cron.day_of_month} {cron.month_of_year} {cron.day_of_week}"
        return f"{get_description(expr)} ({cron.timezone})"
    if task.clocked_id:
        return f"once at {task.clocked.clocked_time.isoformat()}"
    if task.solar_id:
        return str(task.solar)
    return "no schedule"


def zone_of(task: PeriodicTask) -> str:
    if task.crontab_id:
        return str(task.crontab.timezone)
    return timezone.get_default_timezone_name()


def next_run(task: PeriodicTask, now: dt.datetime | None = None) -> NextRun:
    """When beat will next send this schedule (an estimate for never-run intervals)."""
    now = now or timezone.now()
    zone = zone_of(task)
    if not task.enabled:
        return NextRun(None, zone, "disabled")
    if task.one_off and task.total_run_count:
        return NextRun(None, zone, "one-off already run")
    if task.clocked_id:
        return NextRun(max(task.clocked.clocked_time, now).astimezone(UTC), zone)
    start = max(task.start_time, now) if task.start_time else now
    last = task.last_run_at or start
    remaining = task.schedule.remaining_estimate(last)
    return NextRun((max(start, now + remaining)).astimezone(UTC), zone)


def interval_seconds(every: int, period: str) -> float:
    return dt.timedelta(**{period: every}).total_seconds()
