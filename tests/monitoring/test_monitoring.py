"""Late and failing schedules (scheduler_app.monitoring.health), with the clock under control."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import time_machine
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app.models import ScheduleHealth
from scheduler_app.monitoring import health as monitoring

pytestmark = pytest.mark.django_db(transaction=True)
START = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def every_ten_minutes(name: str = "ten") -> PeriodicTask:
    interval, _ = IntervalSchedule.objects.get_or_create(every=10, period=IntervalSchedule.MINUTES)
    return PeriodicTask.objects.create(name=name, task="maintenance.log_statistics", interval=interval)


def ran(name: str, at: dt.datetime, status: str = "SUCCESS") -> None:
    row = TaskResult.objects.create(task_id=str(uuid.uuid4()), periodic_task_name=name, status=status)
    TaskResult.objects.filter(pk=row.pk).update(date_created=at, date_started=at, date_done=at)  # not auto_now


def state_of(task: PeriodicTask) -> ScheduleHealth:
    return ScheduleHealth.objects.get(pk=task.pk)


def test_it_marks_a_schedule_late_once_its_slot_has_not_started_within_the_grace() -> None:
    with time_machine.travel(START, tick=False) as clock:
        task = every_ten_minutes()
        clock.move_to(START + dt.timedelta(minutes=14))  # slot 12:10, grace 5 min: not yet
        assert monitoring.check_schedules()["late"] == 0
        clock.move_to(START + dt.timedelta(minutes=15, seconds=1))
        assert monitoring.check_schedules()["late"] == 1
        health = state_of(task)
        assert health.expected_at == START + dt.timedelta(minutes=10)
        assert health.since == START + dt.timedelta(minutes=15, seconds=1)

        ran(task.name, START + dt.timedelta(minutes=16))
        clock.move_to(START + dt.timedelta(minutes=17))
        assert monitoring.check_schedules() == {"ok": 1, "late": 0, "failing": 0}


def test_it_marks_a_schedule_failing_and_counts_failures_in_a_row() -> None:
    with time_machine.travel(START, tick=False) as clock:
        task = every_ten_minutes()
        for minute, status in ((1, "SUCCESS"), (2, "FAILURE"), (3, "SKIPPED"), (4, "FAILURE")):
            ran(task.name, START + dt.timedelta(minutes=minute), status)
        clock.move_to(START + dt.timedelta(minutes=5))
        monitoring.check_schedules()
        assert (state_of(task).state, state_of(task).failures) == ("failing", 2)

        ran(task.name, START + dt.timedelta(minutes=6))
        clock.move_to(START + dt.timedelta(minutes=7))
        monitoring.check_schedules()
        assert (state_of(task).state, state_of(task).failures) == ("ok", 0)


def test_it_follows_a_crontab_in_its_zone_and_forgets_disabled_schedules() -> None:
    cron = CrontabSchedule.objects.create(minute="0", hour="9", timezone="Europe/Berlin")
    with time_machine.travel(START, tick=False) as clock:  # 14:00 in Berlin
        task = PeriodicTask.objects.create(name="nine", task="maintenance.log_statistics", crontab=cron)
        clock.move_to(START + dt.timedelta(hours=19, minutes=59))  # 09:59 the next morning, grace 1 h
        assert monitoring.check_schedules()["late"] == 0
        clock.move_to(START + dt.timedelta(hours=20, minutes=1))
        assert monitoring.check_schedules()["late"] == 1
        assert state_of(task).expected_at == dt.datetime(2026, 6, 2, 7, 0, tzinfo=dt.UTC)
        task.enabled = False
        task.save()
        monitoring.check_schedules()
        assert not ScheduleHealth.objects.exists()


def test_it_starts_afresh_after_a_schedule_is_changed() -> None:
    with time_machine.travel(START, tick=False) as clock:
        task = every_ten_minutes()
        clock.move_to(START + dt.timedelta(hours=1))
        assert monitoring.check_schedules()["late"] == 1
        task.description = "edited"
        task.save()  # date_changed moves: slots before it no longer count
        assert monitoring.check_schedules()["late"] == 0
        assert timezone.now() == START + dt.timedelta(hours=1)


def test_it_keeps_a_queued_run_from_hiding_lateness_and_stores_the_next_run() -> None:
    with time_machine.travel(START, tick=False) as clock:
        task = every_ten_minutes()
        clock.move_to(START + dt.timedelta(minutes=16))
        queued = TaskResult.objects.create(task_id=str(uuid.uuid4()), periodic_task_name=task.name, status="PENDING")
        assert monitoring.check_schedules()["late"] == 1  # queued is not started
        assert state_of(task).next_at == START + dt.timedelta(minutes=20)  # 12:10 was missed: skipped, as beat will
        TaskResult.objects.filter(pk=queued.pk).update(status="STARTED", date_started=timezone.now())
        assert monitoring.check_schedules()["late"] == 0


def test_it_marks_late_a_schedule_that_beat_sends_on_time_but_no_worker_starts() -> None:
    with time_machine.travel(START, tick=False) as clock:
        task = every_ten_minutes()
        ran(task.name, START + dt.timedelta(minutes=10))
        for minute in (20, 30):  # beat sent 12:20 and 12:30 (last_run_at), nothing started them
            clock.move_to(START + dt.timedelta(minutes=minute, seconds=1))
            PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=START + dt.timedelta(minutes=minute))
        clock.move_to(START + dt.timedelta(minutes=32))
        assert monitoring.check_schedules()["late"] == 1
        assert state_of(task).expected_at == START + dt.timedelta(minutes=20)  # 12:30 is within its grace
        clock.move_to(START + dt.timedelta(minutes=36))
        monitoring.check_schedules()
        assert state_of(task).expected_at == START + dt.timedelta(minutes=30)


def test_a_start_time_already_past_does_not_make_a_new_schedule_late_and_its_slot_does() -> None:
    with time_machine.travel(START, tick=False) as clock:
        task = every_ten_minutes()  # saved at 12:00, to start at 11:03: its slots are at minute x3
        PeriodicTask.objects.filter(pk=task.pk).update(start_time=START - dt.timedelta(minutes=57))
        clock.move_to(START + dt.timedelta(minutes=2))
        assert monitoring.check_schedules()["late"] == 0  # 11:53 and before were before the save
        assert state_of(task).next_at == START + dt.timedelta(minutes=3)  # in phase (else 12:10)
        clock.move_to(START + dt.timedelta(minutes=8, seconds=1))  # 12:03 + the 5 min grace
        assert monitoring.check_schedules()["late"] == 1
        assert state_of(task).expected_at == START + dt.timedelta(minutes=3)


def test_an_interval_that_has_run_is_judged_on_the_grid_beat_keeps() -> None:
    with time_machine.travel(START, tick=False) as clock:
        task = every_ten_minutes()  # saved at 12:00 with a start time of 11:03, but beat runs it at minute x0
        PeriodicTask.objects.filter(pk=task.pk).update(
            start_time=START - dt.timedelta(minutes=57), last_run_at=START + dt.timedelta(minutes=20)
        )
        ran(task.name, START + dt.timedelta(minutes=10))  # 12:10 ran; 12:20 is sent, not started yet
        clock.move_to(START + dt.timedelta(minutes=24))
        assert monitoring.check_schedules()["late"] == 0
        clock.move_to(START + dt.timedelta(minutes=25, seconds=1))  # 12:20 + its 5 min grace
        assert monitoring.check_schedules()["late"] == 1
        assert state_of(task).expected_at == START + dt.timedelta(minutes=20)
