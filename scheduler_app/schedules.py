"""Reads about schedules: a schedule in words and its next run time.

Shared by `list_schedules`, the admin and the API, so all three say the same thing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from cron_descriptor import get_description
from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from scheduler_app.beat import calendars, hashing, rules, slots
from scheduler_app.catalog import Every
from scheduler_app.models import BusinessCalendar
from scheduler_app.runs.policy import task_policy

UTC = dt.UTC


@dataclass(frozen=True)
class NextRun:
    at: dt.datetime | None  # in UTC, when it is sent; None when the schedule will not run again
    zone: str
    reason: str = ""  # why there is no next run ("disabled", "one-off already run")
    slot: dt.datetime | None = None  # the nominal slot, where its jitter or calendars move it
    note: str = ""  # "jitter +37s", "moved: Christmas Day, DE"

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
        if hashing.has_hash(expr):
            chosen = hashing.chosen_by_hash(expr, task.name)
            return f"{get_description(hashing.resolve(expr, task.name))} ({cron.timezone}; {chosen})"
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
    table = table or table_of(task)
    slot = slots.first_slot(table, last_run_at=task.last_run_at, start_time=task.start_time, created=task.date_changed)
    late = (
        slot is not None and (now - rules.send_at(table, slot)).total_seconds() > settings.BEAT_CATCH_UP_GRACE_SECONDS
    )
    if slot is not None and late and not clocked(table):  # a clocked slot runs, however late (its rules too)
        if catch_up_of(task) == "skip":  # beat sends none of the backlog: on to the next slot
            slot = table.slot_following(slot, now)
        else:  # `once`: one run now, as the backlog's latest slot; beat carries on after that one
            slot = slots.latest_until(table, slot, now)
    once = task.one_off or clocked(table)  # sent once, then disabled
    times = [] if slot is None else [slot, *slots.upcoming(table, slot, 0 if once else count - 1)]
    moments = [(at, rules.send_at(table, at)) for at in times]
    runs = [(at, sent) for at, sent in moments if not task.expires or sent < task.expires]
    return [next_run_of(table, at, max(sent, now)) for at, sent in runs]  # a due slot goes now


def next_run_of(table: slots.Timetable, slot: dt.datetime, at: dt.datetime) -> NextRun:
    if not isinstance(table, rules.Ruled):
        return NextRun(at.astimezone(UTC), table.zone)
    return NextRun(at.astimezone(UTC), table.zone, slot=slot, note=table.verdict(slot).note)


def clocked(table: slots.Timetable) -> bool:
    return isinstance(getattr(table, "base", table), slots.Clocked)


def table_of(task: PeriodicTask, row: slots.ScheduleRow | None = None) -> slots.Timetable:
    """The schedule's timetable as beat reads it: its row's, with its own rules (H values,
    jitter, calendars: `beat.rules`). `row`: the schedule row, if not the task's own."""
    base = slots.timetable(row or task.clocked or task.interval or task.crontab or task.solar)
    policy = getattr(task, "policy", None) if task.pk else None
    found = calendars_of(list(policy.calendars.all())) if policy is not None else None
    return rules.for_policy(base, task.name, policy, found)


_CALENDARS: dict[tuple[Any, ...], calendars.Calendar] = {}


def calendars_of(rows: list[BusinessCalendar]) -> calendars.Calendars:
    """Beat's calendars of these rows, kept while the rows stay as they are (a holiday
    table is computed once per calendar and year, not once per schedule)."""
    found = []
    for row in rows:
        excluded = tuple((x.first_day, x.last_day, x.label) for x in row.exclusions.all())
        key = (row.pk, row.updated_at, excluded)
        if key not in _CALENDARS:
            if len(_CALENDARS) > 1000:
                _CALENDARS.clear()
            _CALENDARS[key] = calendars.from_row(row)
        found.append(_CALENDARS[key])
    return calendars.Calendars(tuple(found))


EXPLAIN_WALK = 50  # slots looked at per run previewed (a weekend of hourly slots is 48)
EXPLAIN_KEPT = 3  # of a longer stretch of skipped or moved slots: the first ones, a summary, the last


def explain(task: PeriodicTask, count: int, now: dt.datetime | None = None,
            table: slots.Timetable | None = None) -> list[rules.Verdict]:  # fmt: skip
    """The next `count` runs of the schedule with what becomes of each slot (sent at, jitter,
    skipped or moved by a calendar), the skipped and moved slots before and between them
    too: the preview's rows. A long stretch of them is shortened to its first slots, a
    summary row and its last slot."""
    now = now or timezone.now()
    table = table or table_of(task)
    runs = next_runs(task, count, now, table)
    if not isinstance(table, rules.Ruled) or not runs or not table.calendars:
        return [rules.Verdict(run.slot or run.at, run.at, run.note) for run in runs if run.at]
    first = runs[0].slot or runs[0].at
    assert first is not None  # noqa: S101  (a run has its moment)
    nominal = slots.first_slot(table.base, last_run_at=task.last_run_at, start_time=task.start_time,
                               created=task.date_changed)  # fmt: skip
    start = min(first, max(nominal or first, now))  # the slots a calendar takes before the first run, too
    rows: list[rules.Verdict] = []
    for verdict in table.explain(start - dt.timedelta(microseconds=1), EXPLAIN_WALK * count):
        rows.append(rules.Verdict(first, runs[0].at, verdict.note) if verdict.slot == first else verdict)
        if sum(row.runs for row in rows) >= count:
            break
    return shortened(rows)


def shortened(rows: list[rules.Verdict]) -> list[rules.Verdict]:
    """Each stretch of more than EXPLAIN_KEPT + 1 slots without a run of their own as its
    first EXPLAIN_KEPT - 1, a summary row and its last."""
    out: list[rules.Verdict] = []
    stretch: list[rules.Verdict] = []
    for row in [*rows, None]:
        if row is not None and not row.runs:
            stretch.append(row)
            continue
        if len(stretch) > EXPLAIN_KEPT + 1:
            hidden = stretch[EXPLAIN_KEPT - 1 : -1]
            summary = f"… {len(hidden)} more slots skipped or moved, to {hidden[-1].slot:%Y-%m-%d %H:%M} UTC"
            stretch = [*stretch[: EXPLAIN_KEPT - 1], rules.Verdict(hidden[0].slot, None, summary), stretch[-1]]
        out += stretch
        stretch = []
        if row is not None:
            out.append(row)
    return out


def slots_between(task: PeriodicTask, start: dt.datetime, end: dt.datetime, limit: int,
                  table: slots.Timetable | None = None) -> list[tuple[dt.datetime, dt.datetime]]:  # fmt: skip
    """The schedule's slots from `start` to `end` (both inclusive), each with the moment beat
    sends it for (its jitter or calendars in), as beat would have sent them: at most
    `limit` + 1 of them, so a caller can tell that a range holds more than `limit`."""
    table = table or table_of(task)
    found: list[tuple[dt.datetime, dt.datetime]] = []
    slot = first_from(task, table, start)
    while slot is not None and slot <= end and len(found) <= limit:
        found.append((slot, rules.send_at(table, slot)))
        slot = table.slot_after(slot)
    return found


def first_from(task: PeriodicTask, table: slots.Timetable, moment: dt.datetime) -> dt.datetime | None:
    """The schedule's first slot at or after `moment`, on beat's grid: an interval's from its
    last run, else from its start time or its last change (beat's phase), never from `moment`."""
    before = moment - dt.timedelta(microseconds=1)
    grid = getattr(table, "base", table)
    if not isinstance(grid, slots.Interval):
        return table.slot_after(before)
    first = grid.on_grid_after(task.last_run_at or task.start_time or task.date_changed, before)
    return first if grid is table else table.admit(first)  # type: ignore[attr-defined]  # rules.Ruled


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
    tasks = tasks.prefetch_related("policy__calendars__exclusions")  # their rules, read as beat reads them
    found: list[tuple[PeriodicTask, NextRun]] = []
    for task in tasks.order_by("pk")[:UPCOMING_SCHEDULES]:
        try:
            runs = next_runs(task, each, now)
        except Exception:  # noqa: BLE001, S112  (a broken row: the list shows why; here, the others)
            continue
        found += [(task, run) for run in runs if run.at is not None and run.at <= now + within]
    return sorted(found, key=lambda item: (item[1].at, item[0].name))[:limit]
