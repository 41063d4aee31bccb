"""Run now, retry and revoke from the console with a real worker and broker: a run revoked
while no worker listened never runs; a running run is ended; a retry runs again, linked."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
from django.contrib.auth.models import User
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

import tests.tasks  # noqa: F401  (registers tests.sleeper in this process, as the web process would)
from scheduler_app import services
from scheduler_app.connection import redis_client
from scheduler_app.runs.history import run_context
from tests.processes import wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)
TASKS = ("--include", "tests.tasks")


@pytest.fixture
def operator() -> User:
    return User.objects.create_user("ops", password="x", is_staff=True)


def sleeper_schedule(key: str, seconds: float) -> PeriodicTask:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.DAYS)
    kwargs = json.dumps({"key": key, "seconds": seconds, "steps": 20})
    return PeriodicTask.objects.create(name=key, task="tests.sleeper", interval=every, kwargs=kwargs, enabled=False)


def stopped(child: psutil.Process) -> bool:
    try:
        return not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def state(task_id: str) -> str:
    return TaskResult.objects.get(task_id=task_id).status


def runs(key: str) -> int:
    return int(redis_client().get(f"{key}:runs") or 0)


def test_it_never_runs_a_run_revoked_while_no_worker_listened(tmp_path: Path, key: str, operator: User) -> None:
    run_id = services.run_now(sleeper_schedule(key, 0.2), by=operator)
    services.revoke_run(TaskResult.objects.get(task_id=run_id), by=operator)
    marker = services.run_now(sleeper_schedule(f"{key}-after", 0.2), by=operator)  # queued behind it

    with worker(tmp_path, *TASKS, concurrency=1):
        wait_for(lambda: state(marker) == "SUCCESS", 60, "the run queued after it to finish")
    assert state(run_id) == "REVOKED"
    assert runs(key) == 0
    assert run_context(TaskResult.objects.get(task_id=run_id))["revoked_by"] == "ops"


def test_it_ends_a_running_run_and_retries_it_as_a_new_linked_run(tmp_path: Path, key: str, operator: User) -> None:
    with worker(tmp_path, *TASKS, concurrency=1) as process:
        run_id = services.run_now(sleeper_schedule(key, 8), by=operator)
        wait_for(lambda: state(run_id) == "PROGRESS", 60, "the run to report progress")
        [child] = psutil.Process(process.proc.pid).children()  # the one pool process: it runs the sleeper
        services.revoke_run(TaskResult.objects.get(task_id=run_id), by=operator)
        wait_for(lambda: runs(key) == 1 and state(run_id) == "REVOKED", 30, "the run to end as REVOKED")
        # Not only the row: the process running it was stopped, well before its 8 s were up.
        wait_for(
            lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 5, "the run's process to stop"
        )
        process.wait_for_output(f"Terminating {run_id}", 5)
        assert "step 20 of 20" not in (TaskResult.objects.get(task_id=run_id).meta or "")

        PeriodicTask.objects.filter(name=key).update(kwargs=json.dumps({"key": key, "seconds": 0.2, "steps": 2}))
        retried = services.retry_run(TaskResult.objects.get(task_id=run_id), by=operator)
        wait_for(lambda: state(retried) == "SUCCESS", 60, "the retry to finish")
    again = TaskResult.objects.get(task_id=retried)
    assert run_context(again)["retry_of"] == run_id and run_context(again)["trigger"] == "retry"
    assert services.recorded_arguments(again.task_kwargs, "kwargs")["seconds"] == 8  # the run's, not the schedule's
    assert state(run_id) == "REVOKED"
