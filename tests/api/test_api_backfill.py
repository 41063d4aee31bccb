"""POST /api/schedules/{id}/backfill/, GET /api/backfills/ and /{id}/, POST /api/backfills/{id}/cancel/."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client, override_settings
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from rest_framework.authtoken.models import Token

from scheduler_app.models import AuditEntry, Backfill, BackfillSlot
from tests.backfill_clock import HOUR, NOW

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("backfill_clock")]


def client_of(user: User) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")


@pytest.fixture
def api() -> Client:
    return client_of(User.objects.create_superuser("boss", password="x"))


@pytest.fixture
def task() -> PeriodicTask:
    every = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
    task = PeriodicTask.objects.create(name="hourly", task="maintenance.purge_expired_sessions", interval=every)
    PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=NOW - 30 * HOUR)
    task.refresh_from_db()
    return task


def post(client: Client, url: str, data: Any = None) -> Any:
    return client.post(url, json.dumps(data or {}), content_type="application/json")


def body(**extra: Any) -> dict[str, Any]:
    return {"from": (NOW - 3 * HOUR).isoformat(), "to": (NOW - HOUR).isoformat(), **extra}


def test_it_answers_a_dry_run_with_the_slots_and_writes_nothing(api: Client, task: PeriodicTask) -> None:
    answer = post(api, f"/api/schedules/{task.pk}/backfill/", body(dry_run=True, newest_first=True))
    assert answer.status_code == 200, answer.content
    data = answer.json()
    assert (data["count"], data["to_run"], data["skipped"]) == (3, 3, 0)
    assert [dt.datetime.fromisoformat(s["slot"]) for s in data["slots"]] == [NOW - HOUR, NOW - 2 * HOUR, NOW - 3 * HOUR]
    assert data["slots"][0]["scheduled_for"] == data["slots"][0]["slot"]
    assert Backfill.objects.count() == AuditEntry.objects.count() == 0


def test_it_starts_a_backfill_and_shows_it_with_its_progress_and_slots(api: Client, task: PeriodicTask) -> None:
    answer = post(api, f"/api/schedules/{task.pk}/backfill/", body(max_concurrent=3))
    assert answer.status_code == 201, answer.content
    created = answer.json()
    assert (created["state"], created["max_concurrent"], created["requested_by_name"], created["via"]) == (
        "running", 3, "boss", "api")  # fmt: skip
    assert created["progress"] == {"total": 3, "done": 0, "running": 0, "waiting": 3, "skipped": 0, "cancelled": 0}
    sent = body(max_concurrent=3)
    read = [dt.datetime.fromisoformat(created[key].replace("Z", "+00:00")) for key in ("from", "to")]
    assert read == [dt.datetime.fromisoformat(sent[key]) for key in ("from", "to")], "read under the names it was sent"
    entry = AuditEntry.objects.get(action="backfill")
    assert (entry.via, entry.actor_name, entry.changes["backfill"]) == ("api", "boss", created["id"])
    listed = api.get("/api/backfills/").json()
    assert [b["id"] for b in listed["results"]] == [created["id"]]
    detail = api.get(f"/api/backfills/{created['id']}/").json()
    assert [s["state"] for s in detail["slots"]] == ["waiting"] * 3 and detail["slots"][0]["run"] == ""


def test_it_cancels_a_backfill_and_refuses_a_second_cancel(api: Client, task: PeriodicTask) -> None:
    created = post(api, f"/api/schedules/{task.pk}/backfill/", body()).json()
    BackfillSlot.objects.filter(backfill_id=created["id"], position=0).update(state="sent", task_id="x")
    answer = post(api, f"/api/backfills/{created['id']}/cancel/")
    assert answer.status_code == 200, answer.content
    assert answer.json()["state"] == "cancelled" and answer.json()["progress"]["cancelled"] == 2
    again = post(api, f"/api/backfills/{created['id']}/cancel/")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]


@pytest.mark.parametrize(
    ("given", "field", "says"),
    [
        (body(colour="red"), "colour", "unknown field"),
        (body(max_concurrent=0), "max_concurrent", "greater than or equal to 1"),
        ({"to": (NOW - HOUR).isoformat()}, "from", "required"),
        (body(to=(NOW + HOUR).isoformat()), "detail", "in the future"),
        (body(to=(NOW - 4 * HOUR).isoformat()), "detail", "must be later than from"),
    ],
)
def test_it_refuses_a_bad_body_with_a_400_naming_what_is_wrong(api: Client, task: PeriodicTask, given: dict[str, Any],
                                                               field: str, says: str) -> None:  # fmt: skip
    answer = post(api, f"/api/schedules/{task.pk}/backfill/", given)
    assert answer.status_code == 400, answer.content
    assert says in json.dumps(answer.json()[field]), answer.json()
    assert Backfill.objects.count() == 0


def test_it_refuses_a_range_beyond_the_limit(api: Client, task: PeriodicTask) -> None:
    with override_settings(BACKFILL_MAX_SLOTS=2):
        answer = post(api, f"/api/schedules/{task.pk}/backfill/", body())
    assert answer.status_code == 400 and "holds 3 slots" in answer.json()["detail"][0], answer.content
    assert post(api, "/api/schedules/999999/backfill/", body()).status_code == 404


def test_it_needs_the_backfill_permission_to_start_and_cancel(task: PeriodicTask) -> None:
    viewer = User.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_periodictask", "view_backfill"]))
    client = client_of(viewer)
    assert post(client, f"/api/schedules/{task.pk}/backfill/", body()).status_code == 403
    assert client.get("/api/backfills/").status_code == 200
    viewer.user_permissions.add(Permission.objects.get(codename="run_backfill"))
    viewer = User.objects.get(pk=viewer.pk)  # permissions cached on the instance
    assert post(client, f"/api/schedules/{task.pk}/backfill/", body()).status_code == 201
