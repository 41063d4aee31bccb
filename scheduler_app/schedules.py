"""Reads about schedules: a schedule in words and its next run time.

Shared by `list_schedules`, the admin and the API, so all three say the same thing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from cron_descriptor import get_description
from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from scheduler_app.beat import slots
from scheduler_app.catalog import Every
from scheduler_app.runs.policy import task_policy

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
    return slots.default_zone()


def next_run(task: PeriodicTask, now: dt.datetime | None = None, table: slots.Timetable | None = None) -> NextRun:
    """When beat will next send this schedule: the same slot computation as beat's."""
    runs = next_runs(task, 1, now, table)
    return runs[0] if runs else NextRun(None, zone_of(task), why_not(task) or "no further slot")


def why_not(task: PeriodicTask, now: dt.datetime | None = None) -> str:
    if not task.enabled:
        return "disabled"
    if (task.one_off or task.clocked_id) and task.total_run_count:  # a clocked slot runs once, as in beat
        return "one-off already run"
    if task.expires and task.expires <= (now or timezone.now()):
        return "expired"
    return ""


def next_runs(
    task: PeriodicTask, count: int, now: dt.datetime | None = None, table: slots.Timetable | None = None
) -> list[NextRun]:
    """The next `count` runs of an enabled schedule (empty if it will not run again). A
    slot already due, or missed, is given as beat will treat it: sent now, or skipped.
    `table`: the schedule's timetable, if the caller already has it."""
    now = now or timezone.now()
    if why_not(task, now):
        return []
    table = table or slots.timetable(task.clocked or task.interval or task.crontab or task.solar)
    slot = slots.first_slot(table, last_run_at=task.last_run_at, start_time=task.start_time, created=task.date_changed)
    late = slot is not None and (now - slot).total_seconds() > settings.BEAT_CATCH_UP_GRACE_SECONDS
    if slot is not None and late and not isinstance(table, slots.Clocked):  # a clocked slot runs, however late
        if catch_up_of(task) == "skip":  # beat sends none of the backlog: on to the next slot
            slot = table.slot_following(slot, now)
        else:  # `once`: one run now, as the backlog's latest slot; beat carries on after that one
            slot = slots.latest_until(table, slot, now)
    once = task.one_off or isinstance(table, slots.Clocked)  # sent once, then disabled
    times = [] if slot is None else [slot, *slots.upcoming(table, slot, 0 if once else count - 1)]
    runs = [max(at, now) for at in times if not task.expires or at < task.expires]  # a due slot goes now
    return [NextRun(at.astimezone(UTC), table.zone) for at in runs]


def catch_up_of(task: PeriodicTask) -> str:
    policy = getattr(task, "policy", None)
    return (policy and policy.catch_up) or task_policy(task.task).catch_up


def interval_seconds(every: int, period: str) -> float:
    return dt.timedelta(**{period: every}).total_seconds()


def shown_next_run(task: PeriodicTask, now: dt.datetime | None = None) -> NextRun:
    """`next_run` for a page: a row the form would refuse (written by code or another
    admin) says why instead of failing the whole list."""
    try:
        return next_run(task, now)
    except Exception as exc:  # noqa: BLE001  (any broken row: say why, show the rest)
        return NextRun(None, zone_of(task), f"invalid schedule: {exc}")


def shown_description(task: PeriodicTask) -> str:
    """`describe` for a page: cron-descriptor refuses what beat refuses too; say so."""
    try:
        return describe(task)
    except Exception as exc:  # noqa: BLE001
        return f"invalid: {exc}"


UPCOMING_SCHEDULES = 500  # the dashboard's upcoming runs read at most this many enabled schedules


def upcoming(
    now: dt.datetime, within: dt.timedelta = dt.timedelta(hours=24), each: int = 3, limit: int = 15
) -> list[tuple[PeriodicTask, NextRun]]:
    """The enabled schedules' next runs up to `within` from now, soonest first, computed as
    beat computes them (`next_runs`: a slot already due is sent now), at most `each` per
    schedule: a schedule due every minute is neither left out nor fills the list alone."""
    tasks = PeriodicTask.objects.filter(enabled=True).select_related("interval", "crontab", "solar", "clocked",
                                                                     "policy")  # fmt: skip
    found: list[tuple[PeriodicTask, NextRun]] = []
    for task in tasks.order_by("pk")[:UPCOMING_SCHEDULES]:
        try:
            runs = next_runs(task, each, now)
        except Exception:  # noqa: BLE001, S112  (a broken row: the list shows why; here, the others)
            continue
        found += [(task, run) for run in runs if run.at is not None and run.at <= now + within]
    return sorted(found, key=lambda item: (item[1].at, item[0].name))[:limit]
