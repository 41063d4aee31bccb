"""The API's answers a newcomer follows (issue 15): run arguments as data, the schedule
filter by id or name, the index at /api/ and the browsable docs, arguments checked against
the task's signature, the registered tasks named on a refusal, and a warning for a run
queued while no worker is online. Real database and broker; no worker runs here."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from celery.utils.saferepr import saferepr
from django.contrib.auth.models import User
from django.contrib.staticfiles import finders
from django.test import Client
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult
from rest_framework.authtoken.models import Token

import tests.tasks  # noqa: F401  (registers tests.sleeper in this process, as the web's tasks are)
from scheduler_app.models import AuditEntry

pytestmark = pytest.mark.django_db(transaction=True)
SLEEPER = "tests.sleeper"  # sleeper(key: str, seconds: float = 1.0, steps: int = 10)


@pytest.fixture
def boss() -> User:
    return User.objects.create_superuser("boss", password="x")


@pytest.fixture
def api(boss: User) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=boss).key}")


def post(client: Client, url: str, data: Any = None) -> Any:
    return client.post(url, json.dumps(data or {}), content_type="application/json")


def schedule(name: str, task: str = SLEEPER, kwargs: str = '{"key": "k"}') -> PeriodicTask:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    return PeriodicTask.objects.create(name=name, task=task, interval=every, kwargs=kwargs)


def recorded(args: Any, kwargs: Any, schedule_name: str | None = None) -> TaskResult:
    """A run as Celery records it: each argument list as a JSON string of its repr."""
    return TaskResult.objects.create(
        task_id=str(uuid.uuid4()), task_name=SLEEPER, status="SUCCESS", periodic_task_name=schedule_name,
        task_args=json.dumps(saferepr(args, 1024)), task_kwargs=json.dumps(saferepr(kwargs, 1024)),
    )  # fmt: skip


# --- run arguments as data ----------------------------------------------------------------


def test_a_run_id_of_other_digits_is_a_404_not_a_500(api: Client) -> None:
    response = api.get("/api/runs/\u00b2/")  # "²".isdigit() is true, int("²") fails
    assert response.status_code == 404 and "no run" in response.json()["detail"]


def test_it_answers_a_runs_arguments_as_data_not_as_encoded_text(api: Client) -> None:
    run = recorded(["a", 1, None, True], {"days": 7, "names": ["x", "y"]})
    body = api.get(f"/api/runs/{run.pk}/").json()
    assert body["task_args"] == ["a", 1, None, True]
    assert body["task_kwargs"] == {"days": 7, "names": ["x", "y"]}
    assert body["task_args_truncated"] is False and body["task_kwargs_truncated"] is False


def test_it_answers_arguments_celery_cut_short_as_their_text_and_says_so(api: Client) -> None:
    run = recorded(["x" * 3000], {"note": "y" * 3000})
    body = api.get(f"/api/runs/{run.task_id}/").json()
    assert body["task_args_truncated"] is True and body["task_kwargs_truncated"] is True
    assert isinstance(body["task_args"], str) and body["task_args"].startswith("['xxx")
    assert isinstance(body["task_kwargs"], str) and body["task_kwargs"].startswith("{'note': 'yyy")


# --- ?schedule= by id or name ---------------------------------------------------------------


def test_it_filters_runs_by_a_schedule_id_or_its_name(api: Client) -> None:
    task = schedule("nightly")
    mine, other = recorded([], {}, "nightly"), recorded([], {}, "another")
    by_id = [run["task_id"] for run in api.get(f"/api/runs/?schedule={task.pk}").json()["results"]]
    by_name = [run["task_id"] for run in api.get("/api/runs/?schedule=nightly").json()["results"]]
    assert by_id == by_name == [mine.task_id]
    deleted = [run["task_id"] for run in api.get("/api/runs/?schedule=another").json()["results"]]
    assert deleted == [other.task_id]  # a deleted schedule's runs are still found by its name


def test_it_refuses_an_unknown_schedule_with_a_400_naming_it(api: Client) -> None:
    recorded([], {}, "nightly")
    for unknown in ("9999", "no-such"):
        response = api.get(f"/api/runs/?schedule={unknown}")
        assert response.status_code == 400
        assert f"no schedule '{unknown}'" in response.json()["schedule"][0]


# --- /api/ and its documentation -----------------------------------------------------------


def test_it_answers_an_index_at_api_for_staff_and_refuses_others(api: Client) -> None:
    body = api.get("/api/").json()
    assert body["schedules"]["url"] == "http://testserver/api/schedules/"
    assert {"runs", "tasks", "dead_letters", "calendars", "backfills", "schema", "docs", "redoc"} <= set(body)
    assert body["calendars"]["url"] == "http://testserver/api/calendars/"
    assert Client().get("/api/").status_code == 401
    staff = User.objects.create_user("plain", password="x", is_staff=False)
    assert Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff).key}").get("/api/").status_code == 403
    assert api.get("/api/nowhere/").json()["detail"].endswith("see /api/ (the index) and /api/docs/.")


@pytest.mark.parametrize(("page", "asset"), [
    ("/api/docs/", "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js"),
    ("/api/redoc/", "drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js"),
])  # fmt: skip
def test_it_serves_the_browsable_docs_to_staff_with_their_scripts_from_this_server(
    boss: User, page: str, asset: str
) -> None:
    browser = Client()
    anonymous = browser.get(page)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/admin/login/")
    browser.force_login(boss)
    html = browser.get(page).content.decode()
    assert f"/static/{asset}" in html  # served here (drf-spectacular-sidecar), not from a CDN
    assert "cdn.jsdelivr.net" not in html and "/api/schema/" in html
    assert finders.find(asset) is not None  # collectstatic and whitenoise have the file


# --- arguments against the task's signature ------------------------------------------------


def test_it_refuses_a_schedule_whose_kwargs_the_task_does_not_take(api: Client) -> None:
    body = {"name": "typo", "task": SLEEPER, "kind": "interval", "every": 1, "period": "hours",
            "kwargs": {"key": "k", "secnods": 2}}  # fmt: skip
    response = post(api, "/api/schedules/", body)
    assert response.status_code == 400
    message = response.json()["kwargs"][0]
    assert "unknown keyword argument secnods" in message
    assert "tests.sleeper takes (key: 'str', seconds: 'float' = 1.0, steps: 'int' = 10)" in message
    missing = post(api, "/api/schedules/", {**body, "kwargs": {"seconds": 2}})
    assert "missing required argument key" in missing.json()["kwargs"][0]
    assert not PeriodicTask.objects.filter(name="typo").exists()
    assert post(api, "/api/schedules/", {**body, "kwargs": {"key": "k", "seconds": 2}}).status_code == 201


def test_it_accepts_any_kwargs_for_a_task_taking_var_kwargs(api: Client) -> None:
    body = {"name": "anything", "task": "tests.poison.echo", "kind": "interval", "every": 1, "period": "hours",
            "kwargs": {"whatever": 1}}  # fmt: skip
    import tests.runs.poison_tasks  # noqa: F401, PLC0415  (registers tests.poison.echo(*args, **kwargs))

    assert post(api, "/api/schedules/", body).status_code == 201


def test_it_refuses_run_now_with_kwargs_the_task_does_not_take_and_queues_nothing(api: Client) -> None:
    task = schedule("nightly")
    response = post(api, f"/api/schedules/{task.pk}/run/", {"kwargs": {"key": "k", "sleep": 1}})
    assert response.status_code == 400
    assert "unknown keyword argument sleep" in response.json()["kwargs"][0]
    assert "Nothing was queued" in response.json()["kwargs"][0]
    assert not TaskResult.objects.exists() and not AuditEntry.objects.filter(action="run").exists()


def test_it_lists_the_registered_tasks_when_refusing_an_unregistered_one(api: Client) -> None:
    body = {"name": "curl", "task": "myapp.tasks.nothing", "kind": "interval", "every": 1, "period": "hours"}
    message = post(api, "/api/schedules/", body).json()["task"][0]
    assert message.startswith("No task named 'myapp.tasks.nothing' is registered; the registered tasks are: ")
    assert "maintenance.purge_expired_sessions" in message and SLEEPER in message


# --- run now with no worker online ---------------------------------------------------------


def test_it_queues_a_run_with_no_worker_online_and_warns(api: Client) -> None:
    task = schedule("nightly")
    response = post(api, f"/api/schedules/{task.pk}/run/")
    assert response.status_code == 202
    body = response.json()
    assert TaskResult.objects.get(task_id=body["run"]).status == "PENDING"  # queued all the same
    assert len(body["warnings"]) == 1 and body["warnings"][0].startswith("No worker answered within 1 s")
