"""Edges of a schedule's rules found in review: what the health check, the previews and a
backfill make of a slot whose send moment (its jitter, a calendar move) is still ahead."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, IntervalSchedule, PeriodicTask

from scheduler_app import backfills, schedules
from scheduler_app.models import BusinessCalendar, ScheduleHealth, SchedulePolicy
from scheduler_app.monitoring import health, timeline

pytestmark = pytest.mark.django_db
UTC = dt.UTC
HOUR = dt.timedelta(hours=1)
TASK = "maintenance.purge_expired_sessions"


def schedule(name: str, *, every: int = 1, period: str = IntervalSchedule.HOURS, changed: dt.datetime,
             last: dt.datetime | None = None, calendar: BusinessCalendar | None = None,
             **policy: Any) -> PeriodicTask:  # fmt: skip
    interval = IntervalSchedule.objects.create(every=every, period=period)
    task = PeriodicTask.objects.create(name=name, task=TASK, interval=interval)
    made = SchedulePolicy.objects.create(periodic_task=task, **policy)
    if calendar is not None:
        made.calendars.add(calendar)
    PeriodicTask.objects.filter(pk=task.pk).update(date_changed=changed, last_run_at=last)
    return PeriodicTask.objects.get(pk=task.pk)


def weekdays() -> BusinessCalendar:
    return BusinessCalendar.objects.create(name="weekdays", weekdays="mon,tue,wed,thu,fri")


def test_it_is_not_late_before_a_jittered_send_moment_and_is_after_it() -> None:
    task = schedule("jit-late-probe", changed=dt.datetime(2026, 3, 2, 10, tzinfo=UTC), jitter=3500)  # sent at 11:49
    table = schedules.table_of(task)
    first = dt.datetime(2026, 3, 2, 11, tzinfo=UTC)
    send = table.send_at(first)  # type: ignore[attr-defined]  # rules.Ruled
    assert send - first > dt.timedelta(minutes=40), "the test needs a late send moment"
    before = first + dt.timedelta(minutes=31)  # past the slot and its grace, not its send moment
    assert health.verdict(task, table, None, 0, before).state == ScheduleHealth.OK
    after = send + dt.timedelta(minutes=31)
    found = health.verdict(task, table, None, 0, after)
    assert (found.state, found.expected_at) == (ScheduleHealth.LATE, send)


def test_it_is_not_late_over_a_weekend_for_a_slot_moved_to_monday() -> None:
    task = schedule("moved", every=1, period=IntervalSchedule.DAYS, changed=dt.datetime(2026, 3, 7, 8, tzinfo=UTC),
                    calendar=weekdays(), calendar_rule="move")  # fmt: skip
    PeriodicTask.objects.filter(pk=task.pk).update(start_time=dt.datetime(2026, 3, 7, 12, tzinfo=UTC))
    task = PeriodicTask.objects.get(pk=task.pk)
    sunday = dt.datetime(2026, 3, 8, 18, tzinfo=UTC)
    assert health.verdict(task, schedules.table_of(task), None, 0, sunday).state == ScheduleHealth.OK


def test_the_preview_sends_a_late_one_off_with_rules_as_beat_does() -> None:
    now = dt.datetime(2026, 3, 10, 12, tzinfo=UTC)
    for jitter in (None, 30):
        moment = ClockedSchedule.objects.create(clocked_time=now - dt.timedelta(minutes=10))
        task = PeriodicTask.objects.create(name=f"once {jitter}", task=TASK, clocked=moment, one_off=True)
        SchedulePolicy.objects.create(periodic_task=task, jitter=jitter)
        PeriodicTask.objects.filter(pk=task.pk).update(date_changed=now - 2 * HOUR)
        runs = schedules.next_runs(PeriodicTask.objects.get(pk=task.pk), 3, now)
        assert [run.at for run in runs] == [now], (jitter, runs)  # beat sends a clocked slot however late


def test_a_backfill_leaves_beat_the_slots_it_has_still_to_send_or_just_sent() -> None:
    now = dt.datetime(2026, 3, 10, 12, tzinfo=UTC)
    task = schedule("jitter-backfill", changed=now - 30 * HOUR, last=now - HOUR, jitter=3000)
    with time_machine.travel(now, tick=False):
        plan = backfills.plan(task, now - 2 * HOUR, now)
        reasons = {p.slot: p.skipped_because for p in plan.slots}
        assert reasons[now - 2 * HOUR] == ""  # sent long enough ago to have its run recorded: it had none
        assert reasons[now - HOUR].startswith("sent by beat within the last hour")
        assert reasons[now].startswith("beat's to send")  # its jittered moment is still ahead
        rerun = {p.slot: p.skipped_because for p in backfills.plan(task, now - 2 * HOUR, now, rerun=True).slots}
        assert rerun[now - HOUR] == "" and rerun[now].startswith("beat's to send")  # never beat's own, rerun or not


def test_a_backfill_leaves_beat_a_slot_a_calendar_moved_past_now() -> None:
    friday = dt.datetime(2026, 3, 6, 12, tzinfo=UTC)
    task = schedule("moved-backfill", every=1, period=IntervalSchedule.DAYS, changed=friday, last=friday,
                    calendar=weekdays(), calendar_rule="move")  # fmt: skip
    sunday = dt.datetime(2026, 3, 8, 13, tzinfo=UTC)
    with time_machine.travel(sunday, tick=False):
        plan = backfills.plan(task, friday, sunday)
    moved = [p for p in plan.slots if p.at > sunday]
    assert moved and all(p.skipped_because.startswith("beat's to send") for p in moved)


def test_a_freeze_of_minute_slots_is_jumped_at_once_by_the_health_check_and_the_timeline() -> None:
    freeze = BusinessCalendar.objects.create(name="freeze")
    freeze.exclusions.create(first_day=dt.date(2026, 12, 14), last_day=dt.date(2026, 12, 27), label="Release freeze")
    task = schedule("minutely", every=1, period=IntervalSchedule.MINUTES, calendar=freeze,
                    changed=dt.datetime(2026, 12, 13, 23, tzinfo=UTC))  # fmt: skip
    now = dt.datetime(2026, 12, 20, 12, tzinfo=UTC)
    table = schedules.table_of(task)
    assert health.expected_slot(task, table, now) == dt.datetime(2026, 12, 13, 23, 59, tzinfo=UTC)
    cells = timeline.ruled_past_slots(task, table, now, 5)  # type: ignore[arg-type]  # rules.Ruled
    assert cells == [dt.datetime(2026, 12, 13, 23, 55 + i, tzinfo=UTC) for i in range(5)]


def page_queries(client: Client, count: int, calendar: BusinessCalendar | None) -> tuple[int, int]:
    PeriodicTask.objects.all().delete()
    for n in range(count):
        schedule(f"s{n:03d}", changed=timezone.now() - HOUR, calendar=calendar, jitter=30 if calendar else None)
    with CaptureQueriesContext(connection) as admin_page:
        assert client.get("/admin/django_celery_beat/periodictask/").status_code == 200
    with CaptureQueriesContext(connection) as api_page:
        assert client.get("/api/schedules/?page_size=100").status_code == 200
    return len(admin_page), len(api_page)


def test_the_schedules_lists_read_calendars_in_a_few_queries_whatever_the_page_size(client: Client) -> None:
    """A page of schedules with jitter and a calendar costs what the same page without them
    costs, plus the few queries that read every row's calendars at once."""
    calendar = weekdays()
    calendar.exclusions.create(first_day=dt.date(2026, 12, 24), label="Christmas Eve")
    client.force_login(User.objects.create_superuser("root", password="x"))
    plain = [page_queries(client, count, None) for count in (5, 25)]
    ruled = [page_queries(client, count, calendar) for count in (5, 25)]
    extra = [(r[0] - p[0], r[1] - p[1]) for r, p in zip(ruled, plain, strict=True)]
    assert all(0 <= more <= 3 for pair in extra for more in pair), (plain, ruled)  # a fixed few, not 20 more at 25 rows
