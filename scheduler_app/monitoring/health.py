"""Which schedules are late or failing: the platform's dead man's switch.

A schedule is **late** when the slot it should have run by now (the latest slot before
now minus its grace time) has no run that started at or after it: beat did not send it,
or no worker took it. The grace time follows the period: half of it, at least a minute,
at most an hour, unless the schedule's policy sets its own (`late_after`). A schedule is
**failing** when its newest finished runs failed, `alert_after_failures` of them in a row
(default 1; the count of failures in a row is kept). `check_schedules` stores the
verdict, and the next run time, in `ScheduleHealth`, which the console's filters and
dashboard read; the `maintenance.check_schedules` task runs it every minute.

Each change of state (ok, late, failing) writes one `Incident`, in the same transaction
as the new state, and queues its alerts (`scheduler_app.monitoring.alerts`); a schedule that stays
late or failing writes nothing more. Passes never overlap (the task's `overlap="skip"`),
so a transition is seen once.

Each pass reads a chunk of 500 schedules at a time with a fixed number of queries: the
newest start and finish per schedule, and only the runs that finished since the last
pass, from which the count of failures in a row is carried on.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from celery import states as celery_states
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app import schedules
from scheduler_app.beat import rules, slots
from scheduler_app.models import ScheduleHealth, SchedulePolicy
from scheduler_app.monitoring import alerts
from scheduler_app.runs import states

MIN_GRACE = dt.timedelta(minutes=1)
MAX_GRACE = dt.timedelta(hours=1)
FAILURE_LOOKBACK = 10  # runs read for a schedule seen for the first time
CHUNK = 500


@dataclass(frozen=True)
class Verdict:
    state: str
    expected_at: dt.datetime | None = None
    failures: int = 0
    next_at: dt.datetime | None = None


class Timetables(dict[tuple[str, int], slots.Timetable]):
    """One timetable per shared schedule row for a whole pass (a crontab's setup is the costly part)."""

    def of(self, task: PeriodicTask) -> slots.Timetable:
        """The schedule's timetable; its own where it has rules (H, jitter, calendars)."""
        row = task.clocked or task.interval or task.crontab or task.solar
        key = (type(row).__name__, row.pk)
        if key not in self:
            self[key] = slots.timetable(row)
        shared = self[key]
        policy = policy_of(task)
        if isinstance(shared, slots.HashedCron) or (policy and (policy.jitter or policy.calendars.all())):
            return schedules.table_of(task, row)
        return shared


def policy_of(task: PeriodicTask) -> SchedulePolicy | None:
    """The schedule's policy row, read with the schedule (None: it has none)."""
    try:
        return cast(SchedulePolicy, task.policy)  # PeriodicTask is untyped; the one-to-one gives a SchedulePolicy
    except SchedulePolicy.DoesNotExist:
        return None


def grace_for(table: slots.Timetable, now: dt.datetime, task: PeriodicTask | None = None) -> dt.timedelta:
    """The schedule's own `late_after` if its policy sets one; else half its period,
    between a minute and an hour."""
    policy = policy_of(task) if task is not None else None
    if policy is not None and policy.late_after:
        return dt.timedelta(seconds=policy.late_after)
    first = table.slot_after(now)
    second = table.slot_after(first) if first else None
    if first is None or second is None:
        return MAX_GRACE
    return min(max((second - first) / 2, MIN_GRACE), MAX_GRACE)


def expected_slot(task: PeriodicTask, table: slots.Timetable, now: dt.datetime) -> dt.datetime | None:
    """The latest slot that should have started by now (None: none is due yet). Slots from
    before the schedule's last change do not count: an edit or a resume starts afresh.

    The count goes on from the slot beat sent last (`last_run_at`) only when that slot is
    past its grace: a running beat sends every slot on time, so its last one is mostly
    still within the grace, and the slot due is then an earlier one. An interval or a
    crontab finds it from the first slot at once; other timetables walk, so they keep
    going on from the last slot sent."""
    cutoff = now - grace_for(table, now, task)
    first = first_counted(task, table)
    last = task.last_run_at if task.last_run_at and task.last_run_at >= task.date_changed else None
    walks_back = isinstance(getattr(table, "base", table), slots.Interval | slots.Cron)
    start = last if last is not None and (last <= cutoff or not walks_back) else first
    if start is None or start > cutoff or (first is not None and first > cutoff):
        return None
    found = slots.latest_until(table, start, cutoff)
    return None if rules.send_at(table, found) > cutoff else found  # its jitter or a calendar move: not due yet


def first_counted(task: PeriodicTask, table: slots.Timetable) -> dt.datetime | None:
    """The first slot after the schedule's last change. An interval that has run stays on the
    grid of its last run, as beat keeps it (and after a start time, if that is later)."""
    first = slots.first_slot(table, last_run_at=None, start_time=task.start_time, created=task.date_changed)
    grid = getattr(table, "base", table)
    if isinstance(grid, slots.Interval) and task.last_run_at is not None:
        on_grid = grid.on_grid_after(task.last_run_at, task.date_changed)
        if task.start_time is None or on_grid >= task.start_time:
            return on_grid if grid is table else table.admit(on_grid)  # type: ignore[attr-defined]  # rules.Ruled
    return first


def verdict(task: PeriodicTask, table: slots.Timetable, started: dt.datetime | None, failures: int,
            now: dt.datetime) -> Verdict:  # fmt: skip
    slot = expected_slot(task, table, now)
    expected = rules.send_at(table, slot) if slot is not None else None  # its jitter or calendar move in
    upcoming = schedules.next_run(task, now, table=table).at
    if expected is not None and (started is None or started < expected):
        return Verdict(ScheduleHealth.LATE, expected, failures, upcoming)
    failing = failures >= failures_to_alert(task)
    return Verdict(ScheduleHealth.FAILING if failing else ScheduleHealth.OK, None, failures, upcoming)


def failures_to_alert(task: PeriodicTask) -> int:
    """Failed runs in a row that make the schedule failing: its policy's, else 1."""
    policy = policy_of(task)
    return (policy.alert_after_failures if policy else None) or 1


def reaches_pause(task: PeriodicTask, found: Verdict) -> bool:
    """Whether the schedule's failures in a row reached its `pause_after_failures`. Paused,
    it leaves the enabled set, so this holds on one pass only."""
    policy = policy_of(task)
    return bool(policy and policy.pause_after_failures and found.failures >= policy.pause_after_failures)


def carry_failures(previous: int, newest_first: Iterable[str]) -> int:
    """Failures in a row: the new finishes (newest first) on top of the streak they follow."""
    count = 0
    for status in newest_first:
        if status == celery_states.SUCCESS:  # anything else but a failure neither breaks nor adds
            return count
        if status in states.FAILED_STATES:
            count += 1
    return previous + count


def check_schedules(now: dt.datetime | None = None) -> dict[str, int]:
    """Judge every enabled schedule and store what changed. Returns the count per state."""
    now = now or timezone.now()
    counts = dict.fromkeys(ScheduleHealth.STATES, 0)
    tables = Timetables()
    enabled = PeriodicTask.objects.filter(enabled=True).select_related("interval", "crontab", "solar", "clocked")
    enabled = enabled.select_related("policy").prefetch_related("policy__calendars__exclusions")
    for chunk in chunks(enabled.order_by("pk").iterator(chunk_size=CHUNK), CHUNK):
        for found in judge_and_store(chunk, tables, now):
            counts[found.state] += 1
    ScheduleHealth.objects.exclude(periodic_task__enabled=True).delete()
    return counts


def judge_and_store(tasks: list[PeriodicTask], tables: Timetables, now: dt.datetime) -> list[Verdict]:
    known = {row.pk: row for row in ScheduleHealth.objects.filter(pk__in=[task.pk for task in tasks])}
    activity = latest_activity([task.name for task in tasks])
    finishes = finished_since(tasks, known)
    verdicts, fresh, changed, transitions = [], [], [], []
    for task in tasks:
        row = known.get(task.pk)
        failures = carry_failures(row.failures if row else 0, finishes.get(task.name, []))
        try:
            found = verdict(task, tables.of(task), activity.get(task.name), failures, now)
        except (slots.InvalidSchedule, ValueError, OverflowError):  # a broken row: beat does not run it either
            continue
        verdicts.append(found)
        before = row.state if row else ScheduleHealth.OK  # a schedule seen first was on time until now
        if found.state != before or reaches_pause(task, found):
            transitions.append(transition(task, row, found, activity.get(task.name), tables, now))
        if row is None:
            fresh.append(ScheduleHealth(periodic_task_id=task.pk, since=now, checked_at=now, **as_fields(found)))
        elif (row.state, row.expected_at, row.failures, row.next_at) != astuple(found):
            row.since = row.since if row.state == found.state else now
            for field, value in as_fields(found).items():
                setattr(row, field, value)
            changed.append(row)
    with transaction.atomic():  # the new states and their incidents, together
        ScheduleHealth.objects.bulk_update(changed, ["state", "expected_at", "failures", "next_at", "since"])
        insert(fresh)
        ScheduleHealth.objects.filter(pk__in=known).update(checked_at=now)
        alerts.record(transitions, now)
    return verdicts


def transition(task: PeriodicTask, row: ScheduleHealth | None, found: Verdict, started: dt.datetime | None,
               tables: Timetables, now: dt.datetime) -> alerts.Transition:  # fmt: skip
    return alerts.Transition(
        task=task,
        before=row.state if row else ScheduleHealth.OK,
        after=found.state,
        since=row.since if row else None,
        expected_at=found.expected_at,
        grace=grace_for(tables.of(task), now, task),
        failures=found.failures,
        last_started=started,
        pause=reaches_pause(task, found),
    )


def latest_activity(names: list[str]) -> dict[str, dt.datetime]:
    """Per schedule name, when its newest started run started (runs only queued do not count)."""
    rows = (
        TaskResult.objects.filter(periodic_task_name__in=names)
        .values("periodic_task_name")
        .annotate(started=Max("date_started"))
        .values_list("periodic_task_name", "started")
    )
    return {name: started for name, started in rows if started and name is not None}  # never None: filtered by name


def finished_since(tasks: list[PeriodicTask], known: dict[int, ScheduleHealth]) -> dict[str, list[str]]:
    """States of the runs that finished since each schedule's last check, newest first; for a
    schedule checked for the first time, its last FAILURE_LOOKBACK runs since it was last
    changed (a resumed schedule starts afresh, and is not paused again for old failures)."""
    found: defaultdict[str, list[str]] = defaultdict(list)
    seen = [task for task in tasks if task.pk in known]
    if seen:
        since = min(known[task.pk].checked_at for task in seen)
        checked = {task.name: known[task.pk].checked_at for task in seen}
        runs = TaskResult.objects.filter(periodic_task_name__in=checked, date_done__gt=since)
        for name, status, done in runs.order_by("-date_done").values_list("periodic_task_name", "status", "date_done"):
            if name is not None and done > checked[name]:  # name: never None (filtered by name)
                found[name].append(status)
    for task in tasks:
        if task.pk not in known:
            runs = TaskResult.objects.filter(periodic_task_name=task.name, date_created__gte=task.date_changed)
            runs = runs.order_by("-date_created")
            found[task.name] = list(runs.values_list("status", flat=True)[:FAILURE_LOOKBACK])
    return found


def insert(fresh: list[ScheduleHealth]) -> None:
    try:
        with transaction.atomic():  # a savepoint: the pass's transaction goes on after a conflict
            ScheduleHealth.objects.bulk_create(fresh, ignore_conflicts=True)
    except IntegrityError:  # a schedule deleted during the pass
        alive = set(PeriodicTask.objects.filter(pk__in=[row.pk for row in fresh]).values_list("pk", flat=True))
        ScheduleHealth.objects.bulk_create([row for row in fresh if row.pk in alive], ignore_conflicts=True)


def as_fields(found: Verdict) -> dict[str, Any]:
    return {"state": found.state, "expected_at": found.expected_at, "failures": found.failures,
            "next_at": found.next_at}  # fmt: skip


def astuple(found: Verdict) -> tuple[Any, ...]:
    return (found.state, found.expected_at, found.failures, found.next_at)


def chunks(items: Iterable[PeriodicTask], size: int) -> Iterator[list[PeriodicTask]]:
    chunk: list[PeriodicTask] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
