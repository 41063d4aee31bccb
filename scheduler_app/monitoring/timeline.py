"""A schedule's timeline: its last slots, each with what became of it: ran, failed, late,
skipped, missed (no run), still due (no run yet, within the grace time), running, revoked.

The slots are computed with beat's own timetables (`beat.slots`) from the schedule's first
counted slot on (`health.first_counted`: an edit or a resume starts afresh, as the late
check does), and matched with the runs by the `scheduled_for` beat puts in each run's
context. A run is late when it started more than the schedule's lateness grace
(`health.grace_for`) after its slot. A page of schedules costs one query: each schedule's
runs since its oldest shown slot, one `(periodic_task_name, date_created)` index range
each, bounded per schedule (its newest rows by ROW_NUMBER() over the schedule's runs: one
schedule's many manual runs do not crowd out another's).
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from celery import states as celery_states
from cronsim import CronSim, CronSimError
from django.db.models import F, Q, Window
from django.db.models.functions import RowNumber
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app.beat import rules, slots
from scheduler_app.monitoring import health
from scheduler_app.runs import states

SLOTS = 20
MATCH = dt.timedelta(seconds=1)  # a run's scheduled_for within this of a slot is that slot's
EARLY = dt.timedelta(minutes=1)  # a run may be recorded a little before its slot (clocks)
ROWS_PER_SLOT = 4  # rows read per slot of a schedule: its retries and manual runs share them
WORDS = {"ran": "ran", "failed": "failed", "late": "started late", "skipped": "skipped (overlap)",
         "missed": "missed: no run", "due": "due: no run yet", "running": "running or queued",
         "revoked": "revoked"}  # fmt: skip
FAILED = states.FAILED_STATES
RUNNING = frozenset({celery_states.PENDING, celery_states.RECEIVED, celery_states.STARTED, celery_states.RETRY,
                     states.WAITING, states.PROGRESS})  # fmt: skip


@dataclass(frozen=True)
class Run:
    pk: int
    task_id: str
    status: str
    started: dt.datetime | None
    created: dt.datetime


@dataclass(frozen=True)
class Cell:
    slot: dt.datetime  # UTC
    zone: str
    state: str  # a key of WORDS
    run: Run | None = None

    @property
    def local(self) -> dt.datetime:
        return self.slot.astimezone(ZoneInfo(self.zone))

    @property
    def label(self) -> str:
        text = f"{self.local:%Y-%m-%d %H:%M %Z}: {WORDS[self.state]}"
        return text + (f" ({self.run.status}, run {self.run.task_id[:8]})" if self.run else "")


def past_slots(task: PeriodicTask, table: slots.Timetable, now: dt.datetime, count: int = SLOTS) -> list[dt.datetime]:
    """The schedule's last `count` slots at or before `now`, oldest first, none before its
    first counted slot (with rules: the moments they were sent for, `ruled_past_slots`)."""
    if isinstance(table, rules.Ruled):
        return ruled_past_slots(task, table, now, count)
    first = health.first_counted(task, table)
    if first is None or first > now:
        return []
    if isinstance(table, slots.Clocked):
        return [table.at]
    last = slots.latest_until(table, first, now)
    if isinstance(table, slots.Interval):
        step = dt.timedelta(seconds=table.seconds)
        return [last - step * k for k in reversed(range(count)) if last - step * k >= first]
    start = max(first, earliest(table, last, count))
    found: list[dt.datetime] = []
    moment: dt.datetime | None = start - dt.timedelta(minutes=1)
    while moment is not None and len(found) < 10 * count:
        moment = table.slot_after(moment)
        if moment is None or moment > now:
            break
        if moment >= start:
            found.append(moment)
    return found[-count:]


def ruled_past_slots(task: PeriodicTask, table: rules.Ruled, now: dt.datetime, count: int) -> list[dt.datetime]:
    """The send moments (jitter, calendar moves in) of the last `count` slots sent by `now`;
    slots a calendar skipped, or folded into another run, are not among them. Each step is
    `latest_until` before the previous send moment, which jumps an excluded stretch at once."""
    first = health.first_counted(task, table)
    if first is None or table.send_at(first) > now:
        return []
    found: list[dt.datetime] = []
    cutoff = now
    while len(found) < count:
        slot = table.latest_until(first, cutoff)
        at = table.send_at(slot)
        if at > cutoff or (found and at >= found[-1]):
            break
        found.append(at)
        if slot <= first:
            break
        cutoff = at - dt.timedelta(microseconds=1)
    return found[::-1]


def earliest(table: slots.Timetable, last: dt.datetime, count: int) -> dt.datetime:
    """A moment at or before the `count`-th slot back from `last` (a crontab walks back;
    a solar event happens about once a day)."""
    if not isinstance(table, slots.Cron):
        return last - dt.timedelta(days=count + 1)
    try:
        sim = CronSim(table.expression, last.astimezone(ZoneInfo(table.zone)), reverse=True)
    except CronSimError:
        return last
    sim.day_and = True  # as beat's Cron has it
    moment = last
    for _, found in zip(range(count - 1), sim, strict=False):
        moment = found.astimezone(dt.UTC)
    return moment


def timelines(tasks: list[PeriodicTask], now: dt.datetime, count: int = SLOTS) -> dict[int, list[Cell]]:
    """Each schedule's cells, oldest first (an invalid schedule has none): one query."""
    tables = health.Timetables()
    wanted: dict[int, tuple[PeriodicTask, slots.Timetable, list[dt.datetime]]] = {}
    for task in tasks:
        try:
            table = tables.of(task)
            wanted[task.pk] = (task, table, past_slots(task, table, now, count))
        except (slots.InvalidSchedule, ValueError, OverflowError, AttributeError):
            continue
    runs = runs_of({task.name: times[0] for task, _, times in wanted.values() if times}, count)
    return {pk: cells(task, table, times, runs.get(task.name, []), now) for pk, (task, table, times) in wanted.items()}


def runs_of(since: dict[str, dt.datetime], count: int) -> dict[str, list[tuple[dt.datetime, Run]]]:
    """Per schedule, its runs since its oldest slot with the slot each was scheduled for."""
    if not since:
        return {}
    window = Q()
    for name, first in since.items():
        window |= Q(periodic_task_name=name, date_created__gte=first - EARLY)
    newest = Window(RowNumber(), partition_by=[F("periodic_task_name")], order_by=F("date_created").desc())
    rows = (
        TaskResult.objects.filter(window)
        .annotate(newest=newest)
        .filter(newest__lte=count * ROWS_PER_SLOT)
        .order_by("-date_created")
    )
    found: dict[str, list[tuple[dt.datetime, Run]]] = {}
    fields = ("pk", "task_id", "periodic_task_name", "status", "date_started", "date_created", "meta")
    for pk, task_id, name, status, started, created, meta in rows.values_list(*fields):
        scheduled = scheduled_for(meta)
        if scheduled is not None and name is not None:
            found.setdefault(name, []).append((scheduled, Run(pk, task_id, status, started, created)))
    return found


def scheduled_for(meta: str | None) -> dt.datetime | None:
    try:
        value = json.loads(meta or "{}")
        moment = dt.datetime.fromisoformat(value["scheduled_for"]) if isinstance(value, dict) else None
    except (ValueError, KeyError, TypeError):
        return None
    return moment if moment is not None and moment.tzinfo is not None else None


def cells(task: PeriodicTask, table: slots.Timetable, times: list[dt.datetime],
          runs: list[tuple[dt.datetime, Run]], now: dt.datetime) -> list[Cell]:  # fmt: skip
    grace = health.grace_for(table, now, task)
    chosen: dict[int, Run] = {}
    for scheduled, run in runs:  # newest first: the newest run of a slot stands for it (a retry)
        index = nearest(times, scheduled)
        if index is not None and index not in chosen:
            chosen[index] = run
    return [Cell(slot, table.zone, outcome(slot, chosen.get(i), grace, now), chosen.get(i))
            for i, slot in enumerate(times)]  # fmt: skip


def nearest(times: list[dt.datetime], moment: dt.datetime) -> int | None:
    at = bisect.bisect_left(times, moment)
    for index in (at - 1, at):
        if 0 <= index < len(times) and abs(times[index] - moment) <= MATCH:
            return index
    return None


def outcome(slot: dt.datetime, run: Run | None, grace: dt.timedelta, now: dt.datetime) -> str:
    if run is None:
        return "missed" if now - slot > grace else "due"
    if run.status == states.SKIPPED:
        return "skipped"
    if run.status in FAILED:
        return "failed"
    if run.status in RUNNING:
        return "running"
    if run.status == celery_states.REVOKED:
        return "revoked"
    return "late" if run.started is not None and run.started - slot > grace else "ran"
