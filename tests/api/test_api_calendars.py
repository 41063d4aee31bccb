"""Issue 17 at the API: /api/calendars/ (CRUD, the form's checks, permissions per action, the
audit trail), calendars, jitter and H on a schedule (refused in the admin's words, nothing
written), and the previews that show what beat sends (next-runs, preview, the read)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Permission, User
from django.test import Client
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from scheduler_app import forms
from scheduler_app.models import AuditEntry, BusinessCalendar, CalendarExclusion, SchedulePolicy
from tests.api.test_api import TASK, token_client

pytestmark = pytest.mark.django_db
NOW = dt.datetime(2026, 12, 20, 12, tzinfo=dt.UTC)  # a Sunday, five days before Christmas
FREEZE = {"first_day": "2026-12-28", "last_day": "2026-12-30", "label": "Year-end freeze"}
CALENDAR = {"name": "Berlin office", "timezone": "Europe/Berlin", "weekdays": "mon,tue,wed,thu,fri",
            "holiday_country": "DE", "holiday_subdivision": "BE", "exclusions": [FREEZE]}  # fmt: skip
DAILY = {"name": "daily report", "task": TASK, "kind": "crontab", "minute": "0", "hour": "9",
         "timezone": "Europe/Berlin"}  # fmt: skip


@pytest.fixture
def api() -> Client:
    return token_client(User.objects.create_superuser("boss", password="x"))


def send(client: Client, method: str, url: str, data: Any) -> Any:
    return getattr(client, method)(url, json.dumps(data), content_type="application/json")


def test_it_creates_reads_changes_and_deletes_a_calendar_with_its_dates_in_the_audit_trail(api: Client) -> None:
    with time_machine.travel(NOW, tick=False):
        made = send(api, "post", "/api/calendars/", CALENDAR)
        assert made.status_code == 201, made.content
        body = made.json()
        assert body["weekdays"] == "mon,tue,wed,thu,fri" and body["holiday_country"] == "DE"
        assert body["exclusions"] == [FREEZE]
        upcoming = {item["day"]: item["why"] for item in body["upcoming"]}
        assert "Christmas" in upcoming["2026-12-25"] and upcoming["2026-12-29"] == "Year-end freeze"
        changed = send(api, "patch", f"/api/calendars/{body['id']}/", {"day_starts": "08:00", "exclusions": []})
    assert changed.status_code == 200, changed.content
    assert changed.json()["day_starts"] == "08:00:00" and changed.json()["exclusions"] == []
    assert not CalendarExclusion.objects.exists()
    assert api.delete(f"/api/calendars/{body['id']}/").status_code == 204
    trail = list(AuditEntry.objects.filter(object_type="businesscalendar").order_by("pk"))
    assert [(e.action, e.via) for e in trail] == [("create", "api"), ("update", "api"), ("delete", "api")]
    assert trail[0].changes["exclusions"][0]["label"] == "Year-end freeze"
    assert trail[1].changes["day_starts"] == [None, "08:00:00"] and trail[1].changes["exclusions"][1] == []


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone", "IANA"),
        ({"weekdays": "mon,funday"}, "weekdays", "use mon, tue"),
        ({"day_starts": "18:00", "day_ends": "09:00"}, "day_ends", "end after it starts"),
        ({"holiday_country": "XX"}, "holiday_country", "ISO 3166"),
        ({"holiday_subdivision": "ZZ"}, "holiday_subdivision", "one of"),
        ({"exclusions": [{"first_day": "2026-12-10", "last_day": "2026-12-01"}]}, "exclusions", "comes before"),
        ({"exclusions": [{"first_day": "2026-01-01", "last_day": "2031-01-01"}]}, "non_field_errors", "allows no time"),
        ({"colour": "red"}, "colour", "unknown field"),
    ],
)
def test_it_refuses_a_bad_calendar_naming_the_field_and_writes_nothing(
    api: Client, change: dict[str, Any], field: str, words: str
) -> None:
    with time_machine.travel(NOW, tick=False):
        response = send(api, "post", "/api/calendars/", {**CALENDAR, **change})
    assert response.status_code == 400, response.content
    assert words in json.dumps(response.json()[field])
    assert not BusinessCalendar.objects.exists() and not AuditEntry.objects.exists()


def test_it_asks_for_the_calendar_permission_of_each_action() -> None:
    calendar = BusinessCalendar.objects.create(name="plain")
    clerk = User.objects.create_user("clerk", password="x", is_staff=True)
    client = token_client(clerk)
    assert client.get("/api/calendars/").status_code == 403
    clerk.user_permissions.add(Permission.objects.get(codename="view_businesscalendar"))
    assert client.get(f"/api/calendars/{calendar.pk}/").status_code == 200
    assert send(client, "patch", f"/api/calendars/{calendar.pk}/", {"weekdays": "mon"}).status_code == 403
    assert send(client, "post", "/api/calendars/", {"name": "new"}).status_code == 403
    assert client.delete(f"/api/calendars/{calendar.pk}/").status_code == 403
    clerk.user_permissions.add(Permission.objects.get(codename="change_businesscalendar"))
    assert send(client, "patch", f"/api/calendars/{calendar.pk}/", {"weekdays": "mon"}).status_code == 200
    assert BusinessCalendar.objects.get(pk=calendar.pk).weekdays == "mon"


def test_it_attaches_calendars_by_name_and_shows_skipped_and_moved_slots(api: Client) -> None:
    BusinessCalendar.objects.create(name="Berlin", timezone="Europe/Berlin", holiday_country="DE")
    with time_machine.travel(NOW, tick=False):
        policy = {"calendars": ["Berlin"], "calendar_rule": "skip", "jitter": 60}
        made = send(api, "post", "/api/schedules/", {**DAILY, "policy": policy})
        assert made.status_code == 201, made.content
        task = made.json()
        assert task["policy"]["calendars"] == ["Berlin"] and task["policy"]["jitter"] == 60
        assert task["next_run"]["slot"] == "2026-12-21T08:00:00Z" and task["next_run"]["note"].startswith("jitter +")
        runs = api.get(f"/api/schedules/{task['id']}/next-runs/?count=6").json()["runs"]
        christmas = next(run for run in runs if run["local"].startswith("2026-12-25"))
        assert christmas["skipped"] and christmas["note"] == "skipped: Christmas Day, DE"
        sent = [run for run in runs if not run["skipped"]]
        assert all(run["slot"] and run["utc"] > run["slot"] for run in sent)  # the send moment after its slot
        moved = send(api, "post", f"/api/schedules/{task['id']}/preview/", {"policy": {"calendar_rule": "move"}})
        assert moved.status_code == 200, moved.content
        shown = next(run for run in moved.json()["runs"] if run["note"].startswith("moved: Christmas Day"))
        # on to the first allowed moment (the 26th is a holiday too): 27 December, 00:00 in Berlin, plus its jitter
        assert shown["local"].startswith("2026-12-27T00:00") and not shown["skipped"]
    assert SchedulePolicy.objects.get(periodic_task_id=task["id"]).calendar_rule == "skip"  # a preview saves nothing


def test_it_says_which_values_h_chose_and_previews_them(api: Client) -> None:
    with time_machine.travel(NOW, tick=False):
        made = send(api, "post", "/api/schedules/", {**DAILY, "minute": "H", "hour": "H(8-10)"})
        assert made.status_code == 201, made.content
        schedule = made.json()["schedule"]
        resolved = forms.resolved_field("H", "daily report", "minute")
        assert schedule["minute"] == "H" and schedule["chosen_by_hash"].startswith(f"minute {resolved}, hour ")
        assert "chosen by hash of the name" in schedule["words"]
        preview = send(api, "post", "/api/schedules/preview/", {**DAILY, "name": "other", "minute": "H"}).json()
    other = forms.resolved_field("H", "other", "minute")
    assert preview["chosen_by_hash"] == f"minute {other} chosen by hash of the name"
    assert preview["runs"][0]["local"][14:16] == f"{int(other):02d}"


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        ({"minute": "H(0-70)"}, ("minute",), "within 0-59"),
        ({"minute": "Hourly"}, ("minute",), "H is written H, H(a-b), H/n or H(a-b)/n"),
        ({"hour": "H/30"}, ("hour",), "the step must be 1 to 24"),
        ({"day_of_week": "H,9"}, ("day_of_week",), "Allowed: 0-6"),
        ({"policy": {"jitter": 86_400}}, ("policy", "jitter"), "shortest time between two slots of this schedule"),
        ({"policy": {"jitter": 90_000}}, ("policy", "jitter"), "at most 86400 seconds"),
        ({"policy": {"calendars": ["no such"]}}, ("policy", "calendars"), "does not exist"),
    ],
)
def test_it_refuses_bad_h_or_jitter_naming_the_field_and_writes_nothing(
    api: Client, change: dict[str, Any], path: tuple[str, ...], words: str
) -> None:
    response = send(api, "post", "/api/schedules/", {**DAILY, **change})
    assert response.status_code == 400, response.content
    found: Any = response.json()
    for key in path:
        found = found[key]
    assert words in " ".join(found)
    assert not PeriodicTask.objects.exists() and not CrontabSchedule.objects.filter(minute__contains="H").exists()


def test_it_checks_a_saved_jitter_against_a_changed_schedule(api: Client) -> None:
    made = send(api, "post", "/api/schedules/", {**DAILY, "policy": {"jitter": 7200}}).json()
    refused = send(api, "patch", f"/api/schedules/{made['id']}/", {"hour": "*"})  # hourly: 7200 s is too much
    assert refused.status_code == 400 and "3599 seconds" in " ".join(refused.json()["policy"]["jitter"])
    assert PeriodicTask.objects.get(pk=made["id"]).crontab.hour == "9"


def test_a_change_of_only_jitter_calendars_or_rule_is_in_the_audit_trail(api: Client) -> None:
    made = send(api, "post", "/api/schedules/", DAILY).json()
    BusinessCalendar.objects.create(name="Office", weekdays="mon,tue,wed,thu,fri")
    changed = send(api, "patch", f"/api/schedules/{made['id']}/",
                   {"policy": {"jitter": 60, "calendars": ["Office"], "calendar_rule": "move"}})  # fmt: skip
    assert changed.status_code == 200, changed.json()
    entry = AuditEntry.objects.filter(object_id=str(made["id"]), action="update").latest("at")
    before, after = entry.changes["policy"]
    assert (before["jitter"], before["calendars"], before["calendar_rule"]) == (None, [], "")
    assert (after["jitter"], after["calendars"], after["calendar_rule"]) == (60, ["Office"], "move")


def test_it_refuses_a_calendar_change_that_leaves_a_schedule_using_it_no_allowed_time(api: Client) -> None:
    BusinessCalendar.objects.create(name="Weekdays", weekdays="mon,tue,wed,thu,fri")
    other = BusinessCalendar.objects.create(name="Office hours", day_starts=dt.time(9), day_ends=dt.time(17))
    made = send(api, "post", "/api/schedules/", {**DAILY, "policy": {"calendars": ["Weekdays", "Office hours"]}})
    assert made.status_code == 201, made.content
    before = AuditEntry.objects.count()
    refused = send(api, "patch", f"/api/calendars/{other.pk}/", {"weekdays": "sat,sun"})
    assert refused.status_code == 400, refused.content
    assert "daily report" in json.dumps(refused.json()) and "never run" in json.dumps(refused.json())
    assert BusinessCalendar.objects.get(pk=other.pk).weekdays == "" and AuditEntry.objects.count() == before
    assert send(api, "patch", f"/api/calendars/{other.pk}/", {"weekdays": "fri,sat"}).status_code == 200  # Fridays
