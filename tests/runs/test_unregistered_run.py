"""A run of a task no worker knows keeps its context (issue 15, item 3): the worker rejects
it (Celery's NotRegistered) and keeps its message as a dead letter; its FAILURE row still
names the task, the schedule, the trigger and who asked, so the schedule's last run and
the runs list show it. A real worker and recorder, started without the task."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from celery import current_app
from django.contrib.auth.models import User
from django.test import Client
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

import tests.runs.web_only_tasks  # noqa: F401  (registered here, in the web process, and on no worker)
from scheduler_app import selectors, services
from scheduler_app.runs.history import run_context
from tests.processes import wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)
TASK = "tests.web_only.report"


def failed(task_id: str) -> TaskResult:
    def done() -> TaskResult | None:
        return TaskResult.objects.filter(task_id=task_id, status="FAILURE").first()

    return wait_for(done, 60, f"run {task_id} to be recorded FAILURE")


def error_of(row: TaskResult) -> str:
    stored = json.loads(row.result or "{}")
    return f"{stored['exc_type']}: {' '.join(map(str, stored['exc_message']))}"


def test_a_run_now_of_a_task_no_worker_knows_keeps_its_schedule_trigger_and_who(tmp_path: Path, key: str) -> None:
    operator = User.objects.create_superuser("ops", password="x")
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.DAYS)
    task = PeriodicTask.objects.create(name=key, task=TASK, interval=every, kwargs=json.dumps({"key": key}))
    with worker(tmp_path, "--include", "tests.tasks"):
        row = failed(services.run_now(task, by=operator))
    assert (row.task_name, row.periodic_task_name) == (TASK, key)
    assert error_of(row) == f"NotRegistered: {TASK}"
    context = run_context(row)
    assert (context["trigger"], context["by"], context["schedule"]) == ("manual", "ops", key)
    assert context["dead_letter"]  # the message is kept, and the run says where
    assert json.loads(row.task_kwargs or "null") == repr({"key": key})
    # The schedule's last run and the runs list show it.
    assert selectors.run_stats([key])[key].last_state == "FAILURE"
    client = Client()
    client.force_login(operator)
    page = client.get("/admin/scheduler_app/run/", {"schedule": key}).content.decode()
    assert row.task_id[:8] in page and TASK in page and "manual" in page


def test_a_beat_sent_run_of_a_task_no_worker_knows_keeps_its_schedule(tmp_path: Path, key: str) -> None:
    """As beat sends it: no row before the worker's; the schedule in the message's headers."""
    run_id = str(uuid.uuid4())
    header = {"trigger": "beat", "schedule": key, "scheduled_for": "2026-01-01T02:30:00+00:00"}
    with worker(tmp_path, "--include", "tests.tasks"):
        current_app.send_task(TASK, args=[key], task_id=run_id,
                              headers={"beatkeeper": header, "periodic_task_name": key})  # fmt: skip
        row = failed(run_id)
    assert (row.task_name, row.periodic_task_name) == (TASK, key)
    context = run_context(row)
    assert (context["trigger"], context["schedule"], context["scheduled_for"]) == ("beat", key, header["scheduled_for"])
    assert json.loads(row.task_args or "null") == repr([key])
