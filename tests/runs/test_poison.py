"""A poison message never crash-loops a worker: real `celery worker` processes and the real
broker are fed messages sent directly (bypassing the doors), and set them aside in the
dead letters with a FAILURE row that says why."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import current_app
from django_celery_results.models import TaskResult

from scheduler_app.connection import redis_client
from scheduler_app.runs import dead_letters
from scheduler_app.runs.dead_letters import DeadLetter
from scheduler_app.runs.history import run_context
from tests.processes import wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)
TASKS = ("--include", "tests.tasks,tests.runs.poison_tasks")


def deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


def send(task: str, key: str, *args: Any, **kwargs: Any) -> str:
    header = {"trigger": "api", "schedule": key, "by": "mallory"}
    result = current_app.send_task(task, args=list(args), kwargs=kwargs, headers={"beatkeeper": header})
    return str(result.id)


def final(task_id: str, timeout: float = 60) -> TaskResult:
    def done() -> TaskResult | None:
        row = TaskResult.objects.filter(task_id=task_id).first()
        return row if row is not None and row.status in ("SUCCESS", "FAILURE") else None

    return wait_for(done, timeout, f"run {task_id} to finish")


def letter_of(task_id: str) -> DeadLetter | None:
    return next((letter for letter in dead_letters.page(0, 100) if letter.task_id == task_id), None)


def error_of(row: TaskResult) -> str:
    stored = json.loads(row.result or "{}")
    return f"{stored['exc_type']}: {' '.join(map(str, stored['exc_message']))}"


def test_a_worker_survives_arguments_too_deep_to_hand_to_its_pool(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS) as proc:
        poison = send("tests.poison.echo", key, deep(500))
        row = final(poison)
        # The worker goes on: a normal run after it runs and succeeds.
        after = send("tests.record", key, key, "after")
        assert final(after).status == "SUCCESS"
        assert proc.proc.poll() is None
        assert "Unrecoverable error" not in proc.output
    assert row.status == "FAILURE"
    assert error_of(row).startswith(
        "SetAside: set aside: the worker could not hand it to a process: RecursionError: maximum recursion depth"
    )
    letter = letter_of(poison)
    assert letter is not None
    context = run_context(row)
    assert (context["trigger"], context["schedule"], context["by"]) == ("api", key, "mallory")
    assert context["dead_letter"] == letter.id
    assert letter.task == "tests.poison.echo"
    assert letter.deliveries == 1
    assert letter.queue == "celery"
    assert letter.worker.startswith("test-")
    assert letter.headers["beatkeeper"]["schedule"] == key
    assert letter.reason == error_of(row).removeprefix("SetAside: ")
    args, kwargs, _ = json.loads(letter.body)  # the whole message, as it came
    assert args == [deep(500)] and kwargs == {}
    assert row.worker == letter.worker


def test_a_worker_started_after_poison_messages_is_not_killed_by_them(tmp_path: Path, key: str) -> None:
    """Queued while no worker ran; the worker that starts takes them and lives. With one pool
    process, each failed hand-off must give its pool slot back, or the next run would wait."""
    poisons = [send("tests.poison.echo", key, deep(600)), send("tests.poison.echo", key, kwargs=deep(700))]
    with worker(tmp_path, *TASKS, concurrency=1) as proc:
        assert [final(poison).status for poison in poisons] == ["FAILURE", "FAILURE"]
        assert final(send("tests.record", key, key, "after")).status == "SUCCESS"
        assert proc.proc.poll() is None
    assert dead_letters.count() == 2


def test_a_message_that_kills_its_process_is_set_aside_after_the_maximum_deliveries(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS, concurrency=1, WORKER_MAX_DELIVERIES="3") as proc:
        doomed = send("tests.poison.kills_its_process", key, key)
        row = final(doomed, timeout=90)
        assert final(send("tests.record", key, key, "after")).status == "SUCCESS"
        assert proc.proc.poll() is None
    assert int(redis_client().get(f"{key}:runs") or 0) == 3  # run three times, then not again
    assert row.status == "FAILURE"
    assert "handed to a worker process 3 times without finishing (WORKER_MAX_DELIVERIES=3)" in error_of(row)
    letter = letter_of(doomed)
    assert letter is not None and letter.deliveries == 4
    assert letter.delivery["redelivered"] is True
    context = run_context(row)
    assert context["trigger"] == "api" and context["dead_letter"] == letter.id


def test_a_single_killed_process_still_requeues_its_run_which_runs_again(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS):
        run = send("tests.poison.killed_once", key, key)
        row = final(run, timeout=90)
    assert row.status == "SUCCESS"
    assert int(redis_client().get(f"{key}:runs") or 0) == 2
    assert dead_letters.count() == 0


def test_a_retry_is_a_new_message_with_a_count_of_its_own(tmp_path: Path, key: str) -> None:
    """tests.flaky fails (a transient error) and retries with the same run id: each attempt is
    a new message, so three attempts never add up to a poison message."""
    with worker(tmp_path, *TASKS, WORKER_MAX_DELIVERIES="1"):
        run = str(current_app.send_task("tests.flaky", kwargs={"key": key, "failures": 2}).id)
        row = final(run, timeout=90)
    assert row.status == "SUCCESS"
    assert dead_letters.count() == 0


def test_an_unregistered_task_is_kept_in_the_dead_letters(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS) as proc:
        name = f"tests.no_such_task_{uuid.uuid4().hex[:6]}"
        run = send(name, key)
        row = final(run)
        assert proc.proc.poll() is None
    assert row.status == "FAILURE"
    letter = letter_of(run)
    assert letter is not None and letter.task == name
    assert "is registered" in letter.reason


def test_a_message_the_worker_cannot_read_into_a_request_is_set_aside(tmp_path: Path, key: str) -> None:
    """A task message without an `id` header (from some other sender): Celery's request
    raises KeyError in the main process, which would stop the worker."""
    with worker(tmp_path, *TASKS) as proc:
        with current_app.producer_or_acquire() as producer:
            producer.publish([[key], {}, {}], routing_key="celery", serializer="json",
                             headers={"task": "tests.poison.echo", "lang": "py"})  # fmt: skip
        found = wait_for(lambda: dead_letters.page(0, 10), 60, "the message to be set aside")
        assert final(send("tests.record", key, key, "after")).status == "SUCCESS"
        assert proc.proc.poll() is None
    assert found[0].task == "tests.poison.echo" and found[0].task_id == ""
    assert found[0].reason.startswith("set aside: the worker could not read it: KeyError")
    assert json.loads(found[0].body)[0] == [key]
