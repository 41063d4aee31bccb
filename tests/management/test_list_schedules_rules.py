"""Issue 17 at the command door: `list_schedules --next` shows each slot as beat sends it
(the send moment, the nominal slot beside it, jitter, a calendar's skipped and moved slots)
and a crontab's H values in words, from the same reads as the admin and the API."""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from scheduler_app import forms
from scheduler_app.models import BusinessCalendar, SchedulePolicy

pytestmark = pytest.mark.django_db
NOW = dt.datetime(2026, 12, 23, 12, tzinfo=dt.UTC)


def listing(count: int) -> str:
    out = StringIO()
    call_command("list_schedules", "--next", str(count), stdout=out)
    return out.getvalue()


def schedule(name: str, minute: str, rule: str = "", jitter: int | None = None) -> PeriodicTask:
    cron, _ = CrontabSchedule.objects.get_or_create(minute=minute, hour="9", timezone="Europe/Berlin")
    task = PeriodicTask.objects.create(name=name, task="maintenance.log_statistics", crontab=cron)
    policy = SchedulePolicy.objects.create(periodic_task=task, calendar_rule=rule, jitter=jitter)
    policy.calendars.add(BusinessCalendar.objects.get_or_create(name="Berlin", holiday_country="DE",
                                                                timezone="Europe/Berlin")[0])  # fmt: skip
    return task


@time_machine.travel(NOW, tick=False)
def test_it_lists_the_send_moment_the_slot_and_what_a_calendar_does_to_each() -> None:
    schedule("skipping", "0", jitter=45)
    schedule("moving", "0", rule="move")
    output = listing(4)
    moving, skipping = output.split("skipping  [enabled]")  # listed by name: moving, then skipping
    assert (
        "2026-12-25T09:00:00+01:00 Europe/Berlin = 2026-12-25T08:00:00+00:00 UTC  skipped: Christmas Day, DE (not sent)"
        in skipping
    )
    assert "(slot 2026-12-24T09:00:00+01:00; jitter +" in skipping
    assert (
        "= 2026-12-26T23:00:00+00:00 UTC  (slot 2026-12-25T09:00:00+01:00; moved: Christmas Day, DE; one run with "
        in moving
    )


@time_machine.travel(NOW, tick=False)
def test_it_says_which_values_h_chose() -> None:
    schedule("hashed", "H")
    minute = forms.resolved_field("H", "hashed", "minute")
    output = listing(1)
    assert f"minute {minute} chosen by hash of the name" in output
    assert f"next run: 2026-12-24T09:{int(minute):02d}:00+01:00 Europe/Berlin" in output
