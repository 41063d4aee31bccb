"""list_schedules and the next-run reads it shares with the admin and the API."""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, PeriodicTask

from scheduler_app import catalog
from scheduler_app.schedules import describe, next_run

pytestmark = pytest.mark.django_db
NOON = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def listing() -> str:
    out = StringIO()
    call_command("list_schedules", stdout=out)
    return out.getvalue()


@time_machine.travel(NOON, tick=False)
def test_it_lists_every_schedule_with_words_and_next_run() -> None:
    call_command("seed_default_tasks", stdout=StringIO())
    output = listing()
    assert "System health check  [enabled]" in output
    assert "schedule: every 5 minutes" in output
    assert "next run: 2026-03-02T03:17:00+00:00 UTC = 2026-03-02T03:17:00+00:00 UTC" in output
    assert "next run: 2026-03-01T12:05:00+00:00 UTC" in output
    assert f"{len(catalog.definitions())} schedule(s)" in output


@time_machine.travel(NOON, tick=False)
def test_it_gives_a_crontabs_next_run_in_its_own_zone_and_in_utc() -> None:
    cron = CrontabSchedule.objects.create(minute="30", hour="9", timezone="America/New_York")
    task = PeriodicTask.objects.create(name="ny", task="maintenance.log_statistics", crontab=cron)
    upcoming = next_run(task)
    assert upcoming.at == dt.datetime(2026, 3, 1, 14, 30, tzinfo=dt.UTC)  # 09:30 EST
    local = upcoming.local()
    assert local is not None
    assert local.isoformat() == "2026-03-01T09:30:00-05:00"
    assert describe(task) == "At 09:30 AM (America/New_York)"


@time_machine.travel(NOON, tick=False)
def test_it_says_why_a_schedule_will_not_run() -> None:
    clock = ClockedSchedule.objects.create(clocked_time=NOON - dt.timedelta(hours=1))
    PeriodicTask.objects.create(
        name="once", task="maintenance.log_statistics", clocked=clock, one_off=True, total_run_count=1
    )
    cron = CrontabSchedule.objects.create(minute="0")
    PeriodicTask.objects.create(name="off", task="maintenance.log_statistics", crontab=cron, enabled=False)
    output = listing()
    assert "next run: none (one-off already run)" in output
    assert "next run: none (disabled)" in output


@pytest.mark.parametrize(
    ("every", "period", "words"),
    [
        (300, "seconds", "every 5 minutes"),
        (1, "hours", "every hour"),
        (90, "seconds", "every 90 seconds"),
        (2, "days", "every 2 days"),
        (36, "hours", "every 36 hours"),
    ],
)
def test_it_puts_an_interval_in_the_largest_whole_unit(every: int, period: str, words: str) -> None:
    from scheduler_app.schedules import interval_in_words

    assert interval_in_words(every, period) == words


@time_machine.travel(dt.datetime(2026, 3, 27, 12, 0, tzinfo=dt.UTC), tick=False)
def test_it_lists_the_next_runs_in_the_zone_and_utc_marking_a_daylight_saving_change() -> None:
    cron = CrontabSchedule.objects.create(minute="30", hour="2", timezone="Europe/Berlin")
    PeriodicTask.objects.create(name="nightly", task="maintenance.log_statistics", crontab=cron)
    out = StringIO()
    call_command("list_schedules", "--next", "3", stdout=out)
    lines = [line.strip() for line in out.getvalue().splitlines() if "Europe/Berlin =" in line]
    assert lines == [
        "next runs: 2026-03-28T02:30:00+01:00 Europe/Berlin = 2026-03-28T01:30:00+00:00 UTC",
        "2026-03-29T03:00:00+02:00 Europe/Berlin = 2026-03-29T01:00:00+00:00 UTC"
        "  (daylight saving change before this run)",
        "2026-03-30T02:30:00+02:00 Europe/Berlin = 2026-03-30T00:30:00+00:00 UTC",
    ]
