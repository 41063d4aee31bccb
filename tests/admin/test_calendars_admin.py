"""Issue 17 in the console through Django's test client: business calendars (the form's
checks, the dates inline, what the page shows, permissions, the audit trail), and the
schedule form's H, jitter and calendars (checked in the API's words, nothing written when
refused), its preview as the page stands, and the stock crontab pages with an H row."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Permission, User
from django.test import Client
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from scheduler_app import forms
from scheduler_app.models import AuditEntry, BusinessCalendar, CalendarExclusion, SchedulePolicy
from tests.admin.test_console_admin import SCHEDULES, form_data

pytestmark = pytest.mark.django_db
CALENDARS = "/admin/scheduler_app/businesscalendar/"
NOW = dt.datetime(2026, 12, 20, 12, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _frozen() -> Iterator[None]:
    """Every test of this file at NOW: the dates it shows are those around Christmas 2026."""
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def admin_client(_frozen: None) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("boss", password="x"))
    return client


def calendar_form(**changes: Any) -> dict[str, Any]:
    data = {
        "name": "Berlin office", "description": "", "timezone": "Europe/Berlin", "weekdays": "mon,tue,wed,thu,fri",
        "day_starts": "", "day_ends": "", "holiday_country": "de", "holiday_subdivision": "",
        "exclusions-TOTAL_FORMS": "1", "exclusions-INITIAL_FORMS": "0", "exclusions-MIN_NUM_FORMS": "0",
        "exclusions-MAX_NUM_FORMS": "1000", "exclusions-0-first_day": "2026-12-28",
        "exclusions-0-last_day": "2026-12-30", "exclusions-0-label": "Year-end freeze",
    }  # fmt: skip
    data.update(changes)
    return data


def test_it_adds_a_calendar_with_its_dates_audited_and_shows_what_it_excludes_and_who_uses_it(
    admin_client: Client,
) -> None:
    response = admin_client.post(CALENDARS + "add/", calendar_form())
    assert response.status_code == 302, response.content.decode()[:3000]
    calendar = BusinessCalendar.objects.get()
    assert calendar.holiday_country == "DE" and calendar.exclusions.get().label == "Year-end freeze"
    task = PeriodicTask.objects.create(name="daily", task="maintenance.log_statistics",
                                       crontab=CrontabSchedule.objects.create(minute="0", hour="9"))  # fmt: skip
    policy = SchedulePolicy.objects.create(periodic_task=task, calendar_rule="move")
    policy.calendars.add(calendar)
    page = admin_client.get(f"{CALENDARS}{calendar.pk}/change/").content.decode()
    assert "2026-12-25" in page and "Christmas Day (DE)" in page and "Year-end freeze" in page
    assert "Every week: days other than mon,tue,wed,thu,fri." in page
    assert f'href="{SCHEDULES}{task.pk}/change/">daily</a> <small>(move excluded slots)' in page
    (entry,) = AuditEntry.objects.filter(object_type="businesscalendar")
    assert (entry.action, entry.via, entry.actor_name) == ("create", "admin", "boss")
    assert entry.changes["exclusions"] == [{"first_day": "2026-12-28", "last_day": "2026-12-30",
                                            "label": "Year-end freeze"}]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"timezone": "Mars/Olympus"}, "Unknown time zone"),
        ({"weekdays": "mon,funday"}, "Unknown day"),
        ({"day_starts": "17:00", "day_ends": "09:00"}, "The day must end after it starts"),
        ({"holiday_subdivision": "XX"}, "Unknown region"),
        ({"exclusions-0-last_day": "2026-12-01"}, "The last day comes before the first"),
        ({"exclusions-0-first_day": "2026-01-01", "exclusions-0-last_day": "2031-01-01"}, "allows no time"),
    ],
)
def test_it_refuses_a_bad_calendar_saying_why_and_writes_nothing(
    admin_client: Client, changes: dict[str, Any], words: str
) -> None:
    response = admin_client.post(CALENDARS + "add/", calendar_form(**changes))
    assert response.status_code == 200 and words in response.content.decode()
    assert not BusinessCalendar.objects.exists() and not CalendarExclusion.objects.exists()
    assert not AuditEntry.objects.exists()


def test_it_lets_a_viewer_read_a_calendar_but_not_change_it() -> None:
    calendar = BusinessCalendar.objects.create(name="plain")
    viewer = User.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_businesscalendar"))
    client = Client()
    client.force_login(viewer)
    assert client.get(f"{CALENDARS}{calendar.pk}/change/").status_code == 200
    assert client.get(CALENDARS + "add/").status_code == 403
    client.post(f"{CALENDARS}{calendar.pk}/change/", calendar_form(name="renamed"))
    assert client.post(f"{CALENDARS}{calendar.pk}/delete/", {"post": "yes"}).status_code == 403
    assert BusinessCalendar.objects.get().name == "plain" and not AuditEntry.objects.exists()


def test_it_saves_jitter_and_calendars_from_the_policy_inline_and_shows_them_on_the_page(
    admin_client: Client,
) -> None:
    calendar = BusinessCalendar.objects.create(name="Berlin", holiday_country="DE")
    data = form_data(**{"policy-0-jitter": "120", "policy-0-calendars": [str(calendar.pk)],
                        "policy-0-calendar_rule": "move", "minute": "H"})  # fmt: skip
    response = admin_client.post(SCHEDULES + "add/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    policy = SchedulePolicy.objects.get(periodic_task__name="nightly report")
    assert (policy.jitter, policy.calendar_rule, list(policy.calendars.all())) == (120, "move", [calendar])
    page = admin_client.get(f"{SCHEDULES}{policy.periodic_task_id}/change/").content.decode()
    assert f'<a href="{CALENDARS}{calendar.pk}/change/">Berlin</a>' in page
    assert "jitter up to 120 s" in page and "moved to the next allowed moment" in page
    minute = forms.resolved_field("H", "nightly report", "minute")
    assert f"minute {minute} chosen by hash of the name" in page


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"minute": "H(0-70)"}, "minute", "the range must lie within 0-59"),
        ({"hour": "H/0"}, "hour", "the step must be 1 to 24"),
        ({"day_of_month": "H(5)"}, "day_of_month", "H is written H, H(a-b), H/n or H(a-b)/n"),
        ({"policy-0-jitter": "86400"}, "jitter", "shortest time between two slots of this schedule (86400 s)"),
        ({"policy-0-jitter": "90000"}, "jitter", "Jitter is at most 86400 seconds (a day), not 90000."),
    ],
)
def test_it_refuses_bad_h_or_jitter_in_the_schedule_form_and_writes_nothing(
    admin_client: Client, changes: dict[str, Any], field: str, words: str
) -> None:
    response = admin_client.post(SCHEDULES + "add/", form_data(**changes))
    assert response.status_code == 200
    assert words in response.content.decode()
    preview = admin_client.get(SCHEDULES + "preview/", form_data(**changes)).json()
    assert not preview["ok"] and words in " ".join(preview["errors"][field])  # the same words, as typed
    assert not PeriodicTask.objects.exists() and not SchedulePolicy.objects.exists()


def test_it_previews_the_page_as_it_stands_with_skipped_and_jittered_slots(admin_client: Client) -> None:
    calendar = BusinessCalendar.objects.create(name="Berlin", timezone="Europe/Berlin", holiday_country="DE")
    page = {"minute": "0", "hour": "9", "policy-0-jitter": "30", "policy-0-calendars": [str(calendar.pk)],
            "policy-0-calendar_rule": "skip"}  # fmt: skip
    data = admin_client.get(SCHEDULES + "preview/", form_data(**page)).json()
    assert data["ok"], data
    by_day = {run["local"][:10]: run for run in data["runs"]}
    assert by_day["2026-12-25"]["skipped"] and by_day["2026-12-25"]["note"] == "skipped: Christmas Day, DE"
    monday = by_day["2026-12-21"]
    assert monday["shown_slot"] == "2026-12-21 09:00:00 CET" and monday["note"].startswith("jitter +")
    assert monday["shown_local"] > monday["shown_slot"] and not monday["skipped"]


def test_it_shows_a_crontab_with_h_on_the_stock_crontab_pages(admin_client: Client) -> None:
    row = CrontabSchedule.objects.create(minute="H", hour="H(0-5)", timezone="UTC")
    listing = admin_client.get("/admin/django_celery_beat/crontabschedule/")
    assert listing.status_code == 200 and "H H(0-5)" in listing.content.decode()
    assert admin_client.get(f"/admin/django_celery_beat/crontabschedule/{row.pk}/change/").status_code == 200
    assert "H" in row.human_readable
