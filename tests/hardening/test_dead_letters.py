"""The dead letters through the API, the console and /metrics: read, retry (a new run, run
by a real worker), discard; and who may do which. The letters here are the shape the worker
keeps (tests/runs/test_poison.py makes them with real workers)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client, override_settings
from django_celery_results.models import TaskResult
from rest_framework.authtoken.models import Token

from scheduler_app.connection import redis_client
from scheduler_app.models import AuditEntry
from scheduler_app.runs import dead_letters
from scheduler_app.runs.dead_letters import DeadLetter
from scheduler_app.runs.history import run_context
from tests import tasks  # noqa: F401  (registers tests.record here, so the services send it)
from tests.processes import wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)


def letter(key: str, args: Any = None, task: str = "tests.record") -> DeadLetter:
    """A dead letter as a worker keeps it: a protocol 2 task message, whole."""
    task_id = str(uuid.uuid4())
    args = [key, "again"] if args is None else args
    header = {"trigger": "api", "schedule": key, "by": "mallory", "queued_at": "2030-01-01T00:00:00+00:00"}
    found = DeadLetter(
        task=task,
        task_id=task_id,
        reason="set aside: the worker could not hand it to a process: RecursionError: maximum recursion depth",
        worker="test-worker@host",
        deliveries=1,
        body=json.dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]),
        headers={"task": task, "id": task_id, "retries": 0, "argsrepr": repr(args)[:100], "beatkeeper": header},
        properties={"priority": 5, "correlation_id": task_id},
        delivery={"exchange": "", "routing_key": "celery", "redelivered": False},
    )
    dead_letters.add(found)
    return found


def user_with(*perms: str, staff: bool = True) -> User:
    user = User.objects.create_user(f"u-{uuid.uuid4().hex[:6]}", password="x", is_staff=staff)
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    return User.objects.get(pk=user.pk)  # permissions are cached per instance


def api_as(user: User) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")


@pytest.fixture
def api() -> Client:
    return api_as(User.objects.create_superuser("boss", password="x"))


def test_the_api_lists_dead_letters_newest_first_and_shows_each_whole(api: Client, key: str) -> None:
    first, second = letter(key), letter(key, task="tests.poison.echo")
    listed = api.get("/api/dead-letters/").json()
    assert listed["count"] == 2
    assert [row["id"] for row in listed["results"]] == [second.id, first.id]
    row = listed["results"][1]
    assert (row["task"], row["task_id"], row["worker"], row["deliveries"], row["queue"]) == (
        "tests.record", first.task_id, "test-worker@host", 1, "celery")  # fmt: skip
    assert row["reason"].startswith("set aside: the worker could not hand it to a process")
    assert api.get("/api/dead-letters/?limit=1&offset=1").json()["results"][0]["id"] == first.id
    shown = api.get(f"/api/dead-letters/{first.id}/").json()
    assert shown["headers"]["beatkeeper"]["by"] == "mallory"
    assert json.loads(shown["body"])[0] == [key, "again"]
    bad = api.get("/api/dead-letters/?limit=lots")
    assert bad.status_code == 400 and "limit" in bad.json()
    missing = api.get(f"/api/dead-letters/{uuid.uuid4().hex}/")
    assert missing.status_code == 404 and "no dead letter" in missing.json()["detail"]


def test_retry_from_the_api_runs_the_dead_letter_again_as_a_new_linked_run(
    api: Client, tmp_path: Path, key: str
) -> None:
    found = letter(key)
    with worker(tmp_path, "--include", "tests.tasks"):
        response = api.post(f"/api/dead-letters/{found.id}/retry/")
        assert response.status_code == 202, response.content
        run_id = response.json()["run"]
        done = wait_for(lambda: TaskResult.objects.filter(task_id=run_id, status="SUCCESS").first(), 60, "the retry")
    context = run_context(done)
    assert (context["trigger"], context["retry_of"], context["by"]) == ("retry", found.task_id, "boss")
    assert redis_client().lrange(f"{key}:order", 0, -1) == [b"again"]  # the letter's own arguments
    assert dead_letters.get(found.id) is None and dead_letters.count() == 0
    assert api.post(f"/api/dead-letters/{found.id}/retry/").status_code == 404
    entry = AuditEntry.objects.get(action="retry")
    assert (entry.object_type, entry.object_id, entry.changes["run"]) == ("dead letter", found.id, run_id)


def test_a_dead_letter_nested_too_deep_is_refused_on_retry_and_kept(api: Client, key: str) -> None:
    deep: list[Any] = []
    for _ in range(500):
        deep = [deep]
    found = letter(key, args=[deep])
    response = api.post(f"/api/dead-letters/{found.id}/retry/")
    assert response.status_code == 409
    assert "Nothing was queued" in response.json()["detail"]
    assert dead_letters.get(found.id) is not None  # still there, to discard
    assert not TaskResult.objects.exists()  # nothing recorded, nothing queued


def test_discard_from_the_api_drops_the_dead_letter(api: Client, key: str) -> None:
    found, kept = letter(key), letter(key)
    assert api.post(f"/api/dead-letters/{found.id}/discard/").status_code == 204
    assert dead_letters.get(found.id) is None and dead_letters.get(kept.id) is not None
    assert api.post(f"/api/dead-letters/{found.id}/discard/").status_code == 404
    assert AuditEntry.objects.get(action="discard").object_id == found.id


def test_the_api_refuses_dead_letters_to_users_without_the_permissions(key: str) -> None:
    found = letter(key)
    nobody = api_as(user_with())
    assert nobody.get("/api/dead-letters/").status_code == 403
    assert nobody.get(f"/api/dead-letters/{found.id}/").status_code == 403
    viewer = api_as(user_with("scheduler_app.view_run"))
    assert viewer.get("/api/dead-letters/").json()["count"] == 1
    assert viewer.post(f"/api/dead-letters/{found.id}/retry/").status_code == 403
    assert viewer.post(f"/api/dead-letters/{found.id}/discard/").status_code == 403
    not_staff = api_as(user_with("scheduler_app.view_run", "scheduler_app.revoke_run", staff=False))
    assert not_staff.post(f"/api/dead-letters/{found.id}/discard/").status_code == 403
    assert Client().get("/api/dead-letters/").status_code in (401, 403)
    assert dead_letters.get(found.id) is not None  # nothing refused changed anything
    assert not TaskResult.objects.exists()
    discarder = api_as(user_with("scheduler_app.view_run", "scheduler_app.revoke_run"))
    assert discarder.post(f"/api/dead-letters/{found.id}/retry/").status_code == 403
    assert discarder.post(f"/api/dead-letters/{found.id}/discard/").status_code == 204


def console(user: User) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def csrf_post(client: Client, url: str) -> Any:
    page = client.get(url)
    token = page.context["csrf_token"]
    return client.post(url, {"csrfmiddlewaretoken": str(token)})


def test_the_console_lists_dead_letters_and_retries_one_after_a_confirmation(key: str) -> None:
    found = letter(key)
    boss = console(User.objects.create_superuser("boss", password="x"))
    assert 'id="bk-dead-letters-link"' in boss.get("/admin/").content.decode()
    page = boss.get("/admin/dead-letters/").content.decode()
    assert found.task_id in page and "RecursionError" in page and "test-worker@host" in page and "celery" in page
    assert "mallory" in boss.get(f"/admin/dead-letters/{found.id}/").content.decode()
    confirm = boss.get(f"/admin/dead-letters/{found.id}/retry/")
    assert confirm.status_code == 200 and "Yes, retry it" in confirm.content.decode()
    assert dead_letters.get(found.id) is not None  # a GET only asks
    assert boss.post(f"/admin/dead-letters/{found.id}/retry/").status_code == 403  # no CSRF token
    done = csrf_post(boss, f"/admin/dead-letters/{found.id}/retry/")
    assert done.status_code == 302 and done["Location"] == "/admin/dead-letters/"
    new = TaskResult.objects.get()
    assert run_context(new)["retry_of"] == found.task_id and new.status == "PENDING"
    assert dead_letters.get(found.id) is None
    entry = AuditEntry.objects.get(action="retry", object_type="dead letter")
    assert (entry.via, entry.object_id, entry.changes["run"]) == ("admin", found.id, new.task_id)


def test_the_console_discards_only_with_the_permission(key: str) -> None:
    found = letter(key)
    viewer = console(user_with("scheduler_app.view_run"))
    page = viewer.get("/admin/dead-letters/").content.decode()
    assert found.task_id in page and "Discard</a>" not in page
    assert viewer.get(f"/admin/dead-letters/{found.id}/discard/").status_code == 403
    assert console(user_with()).get("/admin/dead-letters/").status_code == 403
    assert dead_letters.get(found.id) is not None
    discarder = console(user_with("scheduler_app.view_run", "scheduler_app.revoke_run"))
    done = csrf_post(discarder, f"/admin/dead-letters/{found.id}/discard/")
    assert done.status_code == 302 and dead_letters.get(found.id) is None
    assert discarder.get(f"/admin/dead-letters/{found.id}/").status_code == 404
    entry = AuditEntry.objects.get(action="discard", object_type="dead letter")
    assert (entry.via, entry.object_id, entry.changes["run"]) == ("admin", found.id, found.task_id)


def test_the_store_keeps_at_most_the_cap_dropping_the_oldest(key: str, settings: Any) -> None:
    settings.DEAD_LETTERS_MAX = 3
    made = [letter(key) for _ in range(5)]
    assert dead_letters.count() == 3
    assert [found.id for found in dead_letters.page()] == [made[4].id, made[3].id, made[2].id]
    assert dead_letters.get(made[0].id) is None
    assert redis_client().hlen(dead_letters.ENTRIES) == 3


@override_settings(METRICS_TOKEN="", METRICS_ALLOWED_IPS=["127.0.0.0/8"])
def test_metrics_count_the_dead_letters(key: str) -> None:
    letter(key)
    letter(key)
    text = Client().get("/metrics").content.decode()
    assert "beatkeeper_dead_letters 2.0" in text
