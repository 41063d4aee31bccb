"""Schedule versions (issue 18): every change through every door leaves one version, whole (the
schedule and its policy), with who, when, the door and the fields changed; a restore gives back
exactly the old schedule and policy (compared field by field) and is itself a new version; a
restore that cannot be done as it stands (a calendar, a pool or an owner gone, a name taken) is
refused saying why and writes nothing. The API's doors, the admin's and the commands'."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from scheduler_app import audit, versions
from scheduler_app.models import AuditEntry, BusinessCalendar, Pool, ScheduleVersion
from tests.admin.test_console_admin import form_data
from tests.api.test_api import token_client
from tests.roles_kit import person

pytestmark = pytest.mark.django_db
CLEANUP = "maintenance.cleanup_old_runs"  # it takes keyword arguments
DAILY = {"name": "warehouse export", "task": CLEANUP, "kind": "crontab", "minute": "0", "hour": "9",
         "timezone": "Europe/Berlin", "kwargs": {"max_age_hours": 48}}  # fmt: skip


@pytest.fixture
def api() -> Client:
    return token_client(User.objects.create_superuser("boss", password="x"))


def send(client: Client, method: str, url: str, data: Any = None) -> Any:
    return getattr(client, method)(url, json.dumps(data or {}), content_type="application/json")


def kept(task_id: int) -> list[tuple[int, str, str, str]]:
    return list(ScheduleVersion.objects.filter(periodic_task_id=task_id).order_by("number")
                .values_list("number", "action", "via", "actor_name"))  # fmt: skip


def made(api: Client, **extra: Any) -> int:
    answer = send(api, "post", "/api/schedules/", {**DAILY, **extra})
    assert answer.status_code == 201, answer.content
    return int(answer.json()["id"])


def test_each_write_through_the_api_leaves_one_version_with_who_the_door_and_what_changed(api: Client) -> None:
    pk = made(api, policy={"max_retries": 2})
    assert send(api, "patch", f"/api/schedules/{pk}/", {"hour": "10", "policy": {"max_retries": 5}}).status_code == 200
    assert send(api, "post", f"/api/schedules/{pk}/pause/", {"note": "freeze"}).status_code == 200
    assert send(api, "post", f"/api/schedules/{pk}/resume/").status_code == 200
    assert send(api, "post", f"/api/schedules/{pk}/run/").status_code == 202  # not a change: no version
    assert kept(pk) == [(1, "create", "api", "boss"), (2, "update", "api", "boss"), (3, "pause", "api", "boss"),
                        (4, "resume", "api", "boss")]  # fmt: skip
    listed = api.get(f"/api/schedules/{pk}/versions/").json()
    assert [v["number"] for v in listed] == [4, 3, 2, 1]
    changed = listed[2]["changes"]
    assert set(changed) == {"schedule.hour", "schedule.words", "policy.max_retries"}  # the words follow the hour
    assert (changed["schedule.hour"], changed["policy.max_retries"]) == (["9", "10"], [2, 5])
    assert listed[1]["changes"] == {"enabled": [True, False]}
    one = api.get(f"/api/schedules/{pk}/versions/1/").json()
    assert one["snapshot"]["schedule"]["hour"] == "9" and one["snapshot"]["kwargs"] == {"max_age_hours": 48}
    assert {d["field"]: (d["then"], d["now"]) for d in one["differs_now"]}["policy.max_retries"] == (2, 5)
    assert api.get(f"/api/schedules/{pk}/versions/9/").status_code == 404


def test_a_restore_gives_back_exactly_the_old_schedule_and_policy_and_is_a_new_version(api: Client) -> None:
    BusinessCalendar.objects.create(name="Berlin office")
    Pool.objects.create(name="exports", size=2)
    User.objects.create_user("ada")
    pk = made(api, description="first", headers={"team": "finance"}, priority=3, expire_seconds=600,
              policy={"overlap": "skip", "max_retries": 1, "jitter": 30, "calendars": ["Berlin office"],
                      "calendar_rule": "move", "pool": "exports", "pool_full": "skip", "owner": "ada",
                      "late_after": 120})  # fmt: skip
    task = PeriodicTask.objects.get(pk=pk)
    first = audit.snapshot(task)
    change = {"name": "warehouse export v2", "kind": "interval", "every": 2, "period": "hours", "description": "",
              "kwargs": {}, "priority": 7, "expire_seconds": None,
              "policy": {"overlap": "allow", "max_retries": 4, "jitter": None, "calendars": [], "calendar_rule": "",
                         "pool": None, "pool_full": "", "owner": None, "late_after": None}}  # fmt: skip
    assert send(api, "patch", f"/api/schedules/{pk}/", change).status_code == 200
    assert audit.snapshot(task) != first
    answer = send(api, "post", f"/api/schedules/{pk}/versions/1/restore/")
    assert answer.status_code == 200, answer.content
    restored = audit.snapshot(PeriodicTask.objects.get(pk=pk))
    for field, value in audit.flat(first).items():  # field by field
        assert audit.flat(restored)[field] == value, field
    assert kept(pk)[-1] == (3, "restore", "api", "boss")
    assert ScheduleVersion.objects.get(periodic_task_id=pk, number=3).restored_from == 1
    assert AuditEntry.objects.filter(action="restore", object_id=str(pk)).get().changes["restored_from"] == 1
    assert api.get(f"/api/schedules/{pk}/versions/1/").json()["differs_now"] == []


@pytest.mark.parametrize("gone", ["calendar", "pool", "owner", "name"])
def test_a_restore_that_cannot_be_done_says_why_and_writes_nothing(api: Client, gone: str) -> None:
    BusinessCalendar.objects.create(name="Berlin office")
    Pool.objects.create(name="exports", size=2)
    User.objects.create_user("ada")
    pk = made(api, policy={"calendars": ["Berlin office"], "pool": "exports", "owner": "ada"})
    cleared = {"name": "renamed", "policy": {"calendars": [], "pool": None, "owner": None}}
    assert send(api, "patch", f"/api/schedules/{pk}/", cleared).status_code == 200
    if gone == "calendar":
        BusinessCalendar.objects.all().delete()
    elif gone == "pool":
        Pool.objects.all().delete()
    elif gone == "owner":
        User.objects.filter(username="ada").delete()
    else:
        made(api)  # another schedule now has the old name
    before = (
        audit.snapshot(PeriodicTask.objects.get(pk=pk)),
        ScheduleVersion.objects.count(),
        AuditEntry.objects.count(),
    )
    answer = send(api, "post", f"/api/schedules/{pk}/versions/1/restore/")
    assert answer.status_code == 409
    words = {"calendar": "calendars Berlin office no longer exist", "pool": "pool 'exports' no longer exists",
             "owner": "owner 'ada' no longer exists", "name": "already exists"}[gone]  # fmt: skip
    assert words in answer.json()["detail"]
    assert (audit.snapshot(PeriodicTask.objects.get(pk=pk)), ScheduleVersion.objects.count(),
            AuditEntry.objects.count()) == before  # fmt: skip


def test_viewers_read_versions_operators_cannot_restore_and_editors_can(api: Client) -> None:
    pk = made(api)
    send(api, "patch", f"/api/schedules/{pk}/", {"hour": "11"})
    viewer, operator, editor = (token_client(person(who)) for who in ("viewer", "operator", "editor"))
    assert viewer.get(f"/api/schedules/{pk}/versions/").status_code == 200
    assert viewer.get(f"/api/schedules/{pk}/versions/1/").status_code == 200
    assert send(operator, "post", f"/api/schedules/{pk}/versions/1/restore/").status_code == 403
    assert kept(pk)[-1][1] == "update"
    assert send(editor, "post", f"/api/schedules/{pk}/versions/1/restore/").status_code == 200
    assert kept(pk)[-1] == (3, "restore", "api", "editor-user")


def test_each_write_through_the_admin_leaves_one_version(client: Client) -> None:
    client.force_login(User.objects.create_superuser("ops", password="x"))
    assert client.post(reverse("admin:django_celery_beat_periodictask_add"), form_data()).status_code == 302
    task = PeriodicTask.objects.get(name="nightly report")
    change = form_data(hour="4", **{"policy-INITIAL_FORMS": "1", "policy-0-periodic_task": str(task.pk)})
    assert (
        client.post(reverse("admin:django_celery_beat_periodictask_change", args=[task.pk]), change).status_code == 302
    )
    do = "admin:scheduler_app_schedule_do"
    assert client.post(reverse(do, args=[task.pk, "pause"]), {"note": "n"}).status_code == 302
    assert client.post(reverse(do, args=[task.pk, "resume"])).status_code == 302
    assert client.post(reverse(do, args=[task.pk, "duplicate"])).status_code == 302
    assert kept(task.pk) == [(1, "create", "admin", "ops"), (2, "update", "admin", "ops"), (3, "pause", "admin", "ops"),
                             (4, "resume", "admin", "ops")]  # fmt: skip
    copy = PeriodicTask.objects.exclude(pk=task.pk).get(task=task.task, name__startswith="nightly report")
    assert kept(copy.pk) == [(1, "duplicate", "admin", "ops")]
    page = client.get(reverse("admin:scheduler_app_schedule_version", args=[task.pk, 1])).content.decode()
    assert "schedule.hour" in page and "Restore version 1" in page
    restored = client.post(reverse("admin:scheduler_app_schedule_restore", args=[task.pk, 1]))
    assert restored.status_code == 302
    assert PeriodicTask.objects.get(pk=task.pk).crontab.hour == "2" and kept(task.pk)[-1][:3] == (5, "restore", "admin")


def test_seeding_keeps_a_version_of_each_schedule_it_makes_or_changes() -> None:
    call_command("seed_default_tasks", stdout=StringIO())
    seeded = ScheduleVersion.objects.filter(via="command", action="create")
    assert seeded.count() == PeriodicTask.objects.count() > 0
    call_command("seed_default_tasks", stdout=StringIO())  # nothing to change: no version
    assert ScheduleVersion.objects.count() == seeded.count()


def test_a_schedule_made_before_versions_gets_its_state_as_found_at_its_first_change(api: Client) -> None:
    pk = made(api)
    ScheduleVersion.objects.all().delete()  # as a schedule made before this release
    assert send(api, "patch", f"/api/schedules/{pk}/", {"hour": "12"}).status_code == 200
    assert kept(pk) == [(1, "as found", "api", "system"), (2, "update", "api", "boss")]
    found = versions.get(PeriodicTask.objects.get(pk=pk), 1)
    assert found is not None and found.snapshot["schedule"]["hour"] == "9"
    assert send(api, "post", f"/api/schedules/{pk}/versions/1/restore/").status_code == 200
    assert PeriodicTask.objects.get(pk=pk).crontab.hour == "9"


@pytest.mark.parametrize("number", ["0", "99", "9" * 30])
def test_a_version_that_does_not_exist_is_a_404_at_both_doors_whatever_its_number(api: Client, number: str) -> None:
    pk = made(api)
    for path in (f"/api/schedules/{pk}/versions/{number}/", f"/admin/django_celery_beat/periodictask/{pk}/versions/"
                 f"{number}/"):  # fmt: skip
        client = api if path.startswith("/api/") else Client()
        if client is not api:
            client.force_login(User.objects.get(username="boss"))
        assert client.get(path).status_code == 404, path
    assert send(api, "post", f"/api/schedules/{pk}/versions/{number}/restore/").status_code == 404
    assert kept(pk) == [(1, "create", "api", "boss")]


def test_a_restore_clears_what_the_version_had_empty_and_pauses_as_the_version_was(api: Client) -> None:
    pk = made(api)
    assert send(api, "post", f"/api/schedules/{pk}/pause/", {"note": "freeze"}).status_code == 200
    changed = {"priority": 5, "queue": "reports", "policy": {"max_retries": 9}}
    assert send(api, "post", f"/api/schedules/{pk}/resume/").status_code == 200
    assert send(api, "patch", f"/api/schedules/{pk}/", changed).status_code == 200
    assert send(api, "post", f"/api/schedules/{pk}/versions/2/restore/").status_code == 200  # the paused one
    task = PeriodicTask.objects.get(pk=pk)
    assert (task.priority, task.queue, task.policy.max_retries) == (None, None, None)
    assert not task.enabled and task.policy.paused_at is not None
    assert task.policy.pause_note == "restored version 2, which was paused"


def test_seeding_keeps_no_as_found_version_from_its_own_diff() -> None:
    call_command("seed_default_tasks", stdout=StringIO())
    task = PeriodicTask.objects.order_by("pk").first()
    assert task is not None
    ScheduleVersion.objects.all().delete()  # as schedules seeded before this release
    audit.record(None, "update", task, via="command", changes={"seeded": "k", "schedule": ["cron 0 2 * * * UTC", "x"]})
    assert kept(task.pk) == [(1, "update", "command", "system")]


@pytest.mark.django_db(transaction=True)
def test_a_pause_outside_any_transaction_keeps_its_version() -> None:
    """The API's pause and resume run in no transaction of their own (nor the test's here):
    keeping the version locks the schedule's row, which PostgreSQL allows only inside one."""
    api = token_client(User.objects.create_superuser("boss", password="x"))
    pk = made(api)
    assert send(api, "post", f"/api/schedules/{pk}/pause/", {"note": "n"}).status_code == 200
    assert send(api, "post", f"/api/schedules/{pk}/resume/").status_code == 200
    assert [row[1] for row in kept(pk)] == ["create", "pause", "resume"]
