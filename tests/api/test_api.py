"""The JSON API against the real database and broker: every endpoint, every permission,
token and session auth, errors per field, and the audit log."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from io import StringIO
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult
from rest_framework.authtoken.models import Token

from scheduler_app.models import AuditEntry, Incident, SchedulePolicy
from scheduler_app.runs.history import run_context
from tests.api.test_api_fuzz import served_schema

pytestmark = pytest.mark.django_db(transaction=True)
TASK = "maintenance.purge_expired_sessions"
CRON = {"name": "nightly", "task": TASK, "kind": "crontab", "minute": "30", "hour": "2", "timezone": "Europe/Berlin"}


def token_client(user: User) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")


@pytest.fixture
def boss() -> User:
    return User.objects.create_superuser("boss", password="x")


@pytest.fixture
def api(boss: User) -> Client:
    return token_client(boss)


def post(client: Client, url: str, data: Any = None) -> Any:
    return client.post(url, json.dumps(data or {}), content_type="application/json")


def patch(client: Client, url: str, data: Any) -> Any:
    return client.patch(url, json.dumps(data), content_type="application/json")


def interval_schedule(name: str = "every hour", **fields: Any) -> PeriodicTask:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    return PeriodicTask.objects.create(name=name, task=TASK, interval=every, **fields)


def finished_run(status: str = "FAILURE", **fields: Any) -> TaskResult:
    return TaskResult.objects.create(task_id=str(uuid.uuid4()), task_name=TASK, status=status,
                                     task_args=json.dumps("[]"), task_kwargs=json.dumps("{}"), **fields)  # fmt: skip


ENDPOINTS = [
    ("get", "/api/schedules/"),
    ("post", "/api/schedules/"),
    ("get", "/api/schedules/{s}/"),
    ("patch", "/api/schedules/{s}/"),
    ("delete", "/api/schedules/{s}/"),
    ("post", "/api/schedules/{s}/pause/"),
    ("post", "/api/schedules/{s}/resume/"),
    ("post", "/api/schedules/{s}/run/"),
    ("get", "/api/schedules/{s}/next-runs/"),
    ("get", "/api/runs/"),
    ("get", "/api/runs/{r}/"),
    ("post", "/api/runs/{r}/retry/"),
    ("post", "/api/runs/{r}/revoke/"),
    ("get", "/api/tasks/"),
    ("get", "/api/schema/"),
]


def call(client: Client, method: str, url: str) -> Any:
    return getattr(client, method)(url, "{}", content_type="application/json") if method != "get" else client.get(url)


def urls() -> list[tuple[str, str]]:
    schedule, run = interval_schedule(f"s-{uuid.uuid4().hex[:6]}"), finished_run()
    return [(method, url.format(s=schedule.pk, r=run.pk)) for method, url in ENDPOINTS]


def test_it_answers_anonymous_calls_with_401_and_changes_nothing() -> None:
    for method, url in urls():
        response = call(Client(), method, url)
        assert response.status_code == 401, (method, url)
        assert response["WWW-Authenticate"] == "Token"
        assert "detail" in response.json()
    assert PeriodicTask.objects.count() == 1 and TaskResult.objects.count() == 1


def test_it_answers_a_user_who_is_not_staff_with_403_even_with_every_permission() -> None:
    user = User.objects.create_user("visitor", password="x")
    user.user_permissions.set(Permission.objects.all())
    client = token_client(user)
    for method, url in urls():
        assert call(client, method, url).status_code == 403, (method, url)


def test_it_follows_model_permissions_per_action() -> None:
    user = User.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_periodictask"))
    client = token_client(user)
    task = interval_schedule()
    assert client.get("/api/schedules/").status_code == 200
    assert client.get(f"/api/schedules/{task.pk}/next-runs/").status_code == 200
    assert post(client, f"/api/schedules/{task.pk}/pause/").status_code == 403
    assert post(client, "/api/schedules/", CRON).status_code == 403
    assert client.get("/api/runs/").status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="change_periodictask"))  # editing is not operating:
    assert post(client, f"/api/schedules/{task.pk}/pause/", {"note": "n"}).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="operate_schedule"))
    assert post(client, f"/api/schedules/{task.pk}/pause/", {"note": "n"}).status_code == 200


def test_it_takes_the_staff_session_and_keeps_csrf_on_writes(boss: User) -> None:
    task = interval_schedule()
    client = Client(enforce_csrf_checks=True)
    client.force_login(boss)
    assert client.get("/api/schedules/").status_code == 200
    refused = post(client, f"/api/schedules/{task.pk}/pause/")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    client.get("/admin/")  # the admin sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    accepted = client.post(f"/api/schedules/{task.pk}/pause/", "{}", content_type="application/json",
                           HTTP_X_CSRFTOKEN=token)  # fmt: skip
    assert accepted.status_code == 200 and accepted.json()["enabled"] is False


def test_it_creates_a_schedule_with_its_policy_and_audits_it(api: Client, boss: User) -> None:
    body = {**CRON, "task": "maintenance.cleanup_old_runs", "kwargs": {"keep_last": 7}, "priority": 3,
            "policy": {"overlap": "skip", "owner": "boss"}}  # fmt: skip
    response = post(api, "/api/schedules/", body)
    assert response.status_code == 201, response.json()
    data = response.json()
    assert data["schedule"]["timezone"] == "Europe/Berlin" and "02:30" in data["schedule"]["words"]
    assert data["kwargs"] == {"keep_last": 7} and data["priority"] == 3
    assert data["policy"]["overlap"] == "skip" and data["policy"]["owner"] == "boss"
    assert data["next_run"]["zone"] == "Europe/Berlin" and data["next_run"]["at"]
    entry = AuditEntry.objects.get(action="create")
    assert (entry.actor, entry.object_id, entry.via) == (boss, str(data["id"]), "api")
    assert entry.changes["name"] == "nightly"


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"minute": "61"}, "minute", "not in 0-59"),
        ({"minute": "*/0"}, "minute", "Allowed: 0-59"),
        ({"timezone": "Mars/Olympus"}, "timezone", "Unknown time zone"),
        ({"args": {"a": 1}}, "args", "Must be a JSON list"),
        ({"kwargs": [1]}, "kwargs", "Must be a JSON object"),
        ({"task": "os.system"}, "task", "No task named 'os.system' is registered; the registered tasks are: "),
        ({"kind": "weekly"}, "kind", "not a valid choice"),
        ({"priority": 11}, "priority", "less than or equal to 9"),
        ({"policy": {"soft_time_limit": 60, "time_limit": 30}}, "policy", "soft_time_limit must be below"),
        ({"policy": {"owner": "nobody"}}, "policy", "does not exist"),
    ],
)
def test_it_explains_a_bad_field_with_400(api: Client, change: dict[str, Any], field: str, message: str) -> None:
    response = post(api, "/api/schedules/", {**CRON, **change})
    assert response.status_code == 400
    assert message in json.dumps(response.json()[field]), response.json()
    assert not PeriodicTask.objects.exists()


def test_it_changes_one_field_and_audits_what_changed(api: Client) -> None:
    created = post(api, "/api/schedules/", CRON).json()
    response = patch(api, f"/api/schedules/{created['id']}/", {"minute": "45"})
    assert response.status_code == 200, response.json()
    assert response.json()["schedule"]["minute"] == "45" and response.json()["schedule"]["hour"] == "2"
    entry = AuditEntry.objects.get(action="update")
    assert entry.changes["schedule"][0]["minute"] == "30" and entry.changes["schedule"][1]["minute"] == "45"
    assert "name" not in entry.changes


def test_it_lists_and_filters_schedules(api: Client) -> None:
    interval_schedule("a", enabled=True)
    interval_schedule("b", enabled=False, queue="slow")
    names = [s["name"] for s in api.get("/api/schedules/?enabled=false").json()["results"]]
    assert names == ["b"]
    assert [s["name"] for s in api.get("/api/schedules/?queue=slow").json()["results"]] == ["b"]
    assert api.get("/api/schedules/?search=a").json()["count"] == 1
    assert api.get("/api/schedules/?health=bogus").status_code == 400


def test_it_pauses_resumes_deletes_and_audits_each(api: Client, boss: User) -> None:
    task = interval_schedule()
    paused = post(api, f"/api/schedules/{task.pk}/pause/", {"note": "vendor down"}).json()
    assert paused["enabled"] is False and paused["paused"]["note"] == "vendor down" and paused["paused"]["by"] == "boss"
    assert post(api, f"/api/schedules/{task.pk}/resume/").json()["enabled"] is True
    assert api.delete(f"/api/schedules/{task.pk}/").status_code == 204
    assert not PeriodicTask.objects.filter(pk=task.pk).exists()
    assert list(AuditEntry.objects.order_by("pk").values_list("action", flat=True)) == ["pause", "resume", "delete"]


def test_it_runs_a_schedule_now_with_overrides(api: Client) -> None:
    task = interval_schedule(kwargs='{"x": 1}')
    PeriodicTask.objects.filter(pk=task.pk).update(task="maintenance.cleanup_old_runs")  # it takes keep_last
    refused = post(api, f"/api/schedules/{task.pk}/run/", {"kwargs": {"x": 2}})
    assert refused.status_code == 400 and "unknown keyword argument x" in refused.json()["kwargs"][0]
    response = post(api, f"/api/schedules/{task.pk}/run/", {"kwargs": {"keep_last": 2}})
    assert response.status_code == 202
    row = TaskResult.objects.get(task_id=response.json()["run"])
    assert run_context(row)["trigger"] == "api" and run_context(row)["by"] == "boss"
    assert row.task_kwargs == json.dumps("{'keep_last': 2}")
    assert post(api, f"/api/schedules/{task.pk}/run/", {"args": "nope"}).status_code == 400


def test_it_refuses_to_run_an_expired_schedule_with_409(api: Client) -> None:
    task = interval_schedule(expires=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    response = post(api, f"/api/schedules/{task.pk}/run/")
    assert response.status_code == 409 and "expired" in response.json()["detail"]


def test_it_previews_next_runs_with_daylight_saving_marked(api: Client) -> None:
    with time_machine.travel(dt.datetime(2026, 3, 26, 12, tzinfo=dt.UTC), tick=False):
        created = post(api, "/api/schedules/", CRON).json()
        data = api.get(f"/api/schedules/{created['id']}/next-runs/?count=4").json()
    assert [run["local"][:16] for run in data["runs"]][2] == "2026-03-29T03:00"  # 02:30 does not exist that night
    assert data["zone"] == "Europe/Berlin" and len(data["runs"]) == 4
    assert [run["dst_change"] for run in data["runs"]] == [False, False, True, False]
    for bad in ("0", "101", "x", "-1"):
        assert api.get(f"/api/schedules/{created['id']}/next-runs/?count={bad}").status_code == 400


def test_it_lists_filters_and_reads_runs(api: Client) -> None:
    failed = finished_run("FAILURE", periodic_task_name="s", meta=json.dumps({"trigger": "manual"}))
    finished_run("SUCCESS", periodic_task_name="t", meta=json.dumps({"trigger": "beat"}))
    running = finished_run("PROGRESS", result=json.dumps({"percent": 40, "message": "half"}))
    assert [r["id"] for r in api.get("/api/runs/?state=FAILURE").json()["results"]] == [failed.pk]
    assert [r["id"] for r in api.get("/api/runs/?trigger=manual").json()["results"]] == [failed.pk]
    assert [r["id"] for r in api.get("/api/runs/?schedule=s").json()["results"]] == [failed.pk]
    assert len(api.get("/api/runs/?since=1h").json()["results"]) == 3
    assert api.get(f"/api/runs/{running.pk}/").json()["progress"] == {"percent": 40, "message": "half"}
    assert api.get("/api/runs/?state=NOPE").status_code == 400
    page = api.get("/api/runs/?page_size=2").json()
    assert len(page["results"]) == 2 and page["next"] and "count" not in page


def test_it_retries_and_revokes_runs(api: Client) -> None:
    old = finished_run("FAILURE")
    response = post(api, f"/api/runs/{old.pk}/retry/")
    assert response.status_code == 202
    new = TaskResult.objects.get(task_id=response.json()["run"])
    assert run_context(new)["retry_of"] == old.task_id
    revoked = post(api, f"/api/runs/{new.pk}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["state"] == "REVOKED"
    assert post(api, f"/api/runs/{new.pk}/revoke/").status_code == 409
    assert post(api, "/api/runs/999999/retry/").status_code == 404
    assert list(AuditEntry.objects.order_by("pk").values_list("action", flat=True)) == ["retry", "revoke"]


def test_it_lists_the_registered_tasks_with_their_defaults(api: Client) -> None:
    tasks = {task["name"]: task for task in api.get("/api/tasks/").json()}
    cleanup = tasks["maintenance.cleanup_old_runs"]
    assert cleanup["doc"].startswith("Delete finished run records")
    assert cleanup["policy"]["overlap"] == "skip"
    assert cleanup["default_schedule"] == {"kind": "every", "seconds": 3600}


def test_it_serves_an_openapi_schema_to_staff_the_one_the_fuzzer_reads(api: Client) -> None:
    schema = api.get("/api/schema/").json()
    assert schema == served_schema()  # tests/api/test_api_fuzz.py fuzzes this one
    assert schema["openapi"].startswith("3.")
    assert "/api/schedules/{id}/next-runs/" in schema["paths"]
    assert "/api/runs/{id}/retry/" in schema["paths"]


def test_it_creates_rotates_and_revokes_tokens_from_the_command(boss: User) -> None:
    out = StringIO()
    call_command("api_token", "boss", stdout=out)
    key = out.getvalue().split(": ")[1].split()[0]
    assert Client(HTTP_AUTHORIZATION=f"Token {key}").get("/api/tasks/").status_code == 200
    call_command("api_token", "boss", "--rotate", stdout=StringIO())
    assert Client(HTTP_AUTHORIZATION=f"Token {key}").get("/api/tasks/").status_code == 401
    call_command("api_token", "boss", "--revoke", stdout=StringIO())
    assert not Token.objects.exists()


def test_it_keeps_a_schedule_policy_row_for_every_schedule_made_by_the_api(api: Client) -> None:
    created = post(api, "/api/schedules/", CRON).json()
    assert SchedulePolicy.objects.filter(periodic_task_id=created["id"]).exists()


def test_it_serves_a_schedules_incident_log_newest_first(api: Client) -> None:
    task = interval_schedule()
    now = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
    for minutes, kind in ((0, "late"), (5, "recovered")):
        at = now + dt.timedelta(minutes=minutes)
        sent = {"email": {"status": "sent"}}
        Incident.objects.create(periodic_task=task, schedule_name=task.name, kind=kind, at=at, deliveries=sent)
    data = api.get(f"/api/schedules/{task.pk}/incidents/").json()
    assert [item["kind"] for item in data] == ["recovered", "late"]
    assert (
        data[0]["schedule"] == {"id": task.pk, "name": task.name} and data[0]["deliveries"]["email"]["status"] == "sent"
    )
    assert api.get(f"/api/schedules/{task.pk}/incidents/?limit=0").status_code == 400


def test_it_answers_a_nul_character_in_a_filter_with_400_not_500(api: Client, boss: User) -> None:
    response = api.get("/api/schedules/?queue=a%00b")
    assert response.status_code == 400 and "NUL character" in response.json()["detail"]
    admin = Client()
    admin.force_login(boss)
    assert admin.get("/admin/scheduler_app/run/?q=a%00b").status_code == 400


def test_it_clears_a_field_given_as_null_and_refuses_odd_numbers(api: Client) -> None:
    task = interval_schedule(queue="slow", priority=3)
    changed = patch(api, f"/api/schedules/{task.pk}/", {"queue": None, "priority": None}).json()
    assert (changed["queue"], changed["priority"]) == (None, None)
    assert (
        api.get(f"/api/schedules/{task.pk}/next-runs/?count=\u00b2").status_code == 400
    )  # "²" is a digit, not a number
    huge = post(api, "/api/schedules/", {**CRON, "kind": "interval", "every": 3_000_000_000, "period": "seconds"})
    assert huge.status_code == 400 and "every" in huge.json()


def test_it_reads_a_run_by_its_run_id_and_one_not_yet_written_from_redis(api: Client) -> None:
    from celery import current_app
    from celery.app.task import Context

    from scheduler_app.connection import redis_client
    from scheduler_app.runs import ledger

    written = finished_run("SUCCESS")
    assert api.get(f"/api/runs/{written.task_id}/").json()["id"] == written.pk  # the id `run/` answers
    queued = post(api, f"/api/runs/{written.pk}/retry/").json()["run"]
    assert api.get(f"/api/runs/{queued}/").json()["state"] == "PENDING"
    # A run the recorder has not written yet: a worker's SUCCESS, in Redis only.
    unwritten = str(uuid.uuid4())
    request = Context(id=unwritten, task="maintenance.log_statistics", meta={"trigger": "beat", "attempt": 1})
    current_app.backend.store_result(unwritten, {"done": True}, "SUCCESS", request=request)
    try:
        shown = api.get(f"/api/runs/{unwritten}/").json()
        assert (shown["id"], shown["state"], shown["task_name"]) == (None, "SUCCESS", "maintenance.log_statistics")
        assert shown["context"]["trigger"] == "beat"
        # The written row with the newer state laid over it: the queued run has finished meanwhile.
        newer = Context(id=queued, task=written.task_name, meta={"trigger": "retry", "attempt": 1})
        current_app.backend.store_result(queued, {"done": True}, "SUCCESS", request=newer)
        assert api.get(f"/api/runs/{queued}/").json()["state"] == "SUCCESS"
        missing = api.get(f"/api/runs/{uuid.uuid4()}/")
        assert missing.status_code == 404 and "run id" in missing.json()["detail"]
    finally:
        redis_client().delete(ledger.RUN_KEY + unwritten, ledger.RUN_KEY + queued, ledger.STREAM)
