"""The console's writes (scheduler_app.services) against the real database and broker:
run now keeps every option, pause/resume say who and why, duplicate, retry, revoke."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import current_app
from django.contrib.auth.models import User
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult
from kombu import Exchange, Queue

from scheduler_app import services
from scheduler_app.connection import redis_client
from scheduler_app.models import ScheduleChange, SchedulePolicy
from scheduler_app.runs.history import HEADER, run_context
from tests.processes import ROOT, process_env

pytestmark = pytest.mark.django_db(transaction=True)
TASK = "maintenance.purge_expired_sessions"


@pytest.fixture
def operator() -> User:
    return User.objects.create_user("ops", password="x", is_staff=True)


@pytest.fixture
def queue() -> Iterator[str]:
    """A queue no worker reads, so the test can read the message as the broker holds it."""
    name = f"console-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis_client()
    for key in [*client.scan_iter(match=f"{name}*"), *client.scan_iter(match=f"_kombu.binding.{name}*")]:
        client.delete(key)


def queued_messages(queue: str) -> list[dict[str, Any]]:
    client = redis_client()
    keys = [key for key in client.scan_iter(match=f"{queue}*") if client.type(key) == b"list"]
    return [json.loads(raw) for key in keys for raw in client.lrange(key, 0, -1)]


def bind(queue: str, *, exchange: str, routing_key: str) -> None:
    """Declare `queue` bound to `exchange` under `routing_key` (a direct exchange drops what no binding takes)."""
    with current_app.connection_for_write() as connection:
        Queue(queue, Exchange(exchange, type="direct"), routing_key=routing_key).bind(connection).declare()


def schedule(**fields: Any) -> PeriodicTask:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    return PeriodicTask.objects.create(name=f"s-{uuid.uuid4().hex[:6]}", interval=every, **{"task": TASK, **fields})


def test_it_runs_a_schedule_now_with_its_queue_priority_expiry_and_headers(operator: User, queue: str) -> None:
    task = schedule(queue=queue, exchange=queue, routing_key=f"{queue}.manual", priority=2, expire_seconds=600,
                    headers='{"team": "ops"}', kwargs='{"x": 1}')  # fmt: skip
    SchedulePolicy.objects.create(periodic_task=task, time_limit=40, soft_time_limit=30)

    bind(queue, exchange=queue, routing_key=f"{queue}.manual")  # so a message sent that way lands in the queue
    before = timezone.now()
    run_id = services.run_now(task, by=operator)
    after = timezone.now()

    [message] = queued_messages(queue)
    headers = message["headers"]
    assert headers["id"] == run_id and headers["task"] == TASK
    assert message["properties"]["priority"] == 2
    delivery = message["properties"]["delivery_info"]
    assert (delivery["exchange"], delivery["routing_key"]) == (queue, f"{queue}.manual")
    expires = dt.datetime.fromisoformat(headers["expires"])  # expire_seconds from the moment it was queued
    assert before + dt.timedelta(seconds=600) <= expires <= after + dt.timedelta(seconds=600)
    assert headers["team"] == "ops" and headers["periodic_task_name"] == task.name
    assert headers["timelimit"] == [40, 30]  # [hard, soft]
    context = headers[HEADER]
    assert (context["trigger"], context["by"], context["schedule"]) == ("manual", "ops", task.name)
    row = TaskResult.objects.get(task_id=run_id)
    assert row.status == "PENDING" and row.periodic_task_name == task.name
    assert run_context(row)["trigger"] == "manual" and run_context(row)["by"] == "ops"


def test_it_runs_now_with_overridden_arguments_for_that_run_only(operator: User, queue: str) -> None:
    task = schedule(queue=queue, task="maintenance.cleanup_old_runs", kwargs='{"keep_last": 1}')
    services.run_now(task, by=operator, trigger="api", kwargs={"keep_last": 2})
    [message] = queued_messages(queue)
    assert message["headers"]["kwargsrepr"] == "{'keep_last': 2}"
    task.refresh_from_db()
    assert task.kwargs == '{"keep_last": 1}'


def test_it_refuses_to_run_an_expired_schedule_with_a_clear_message(operator: User) -> None:
    task = schedule(expires=timezone.now() - dt.timedelta(minutes=1))
    with pytest.raises(services.ServiceError, match="expired at .*clear or move its expiry"):
        services.run_now(task, by=operator)
    assert not TaskResult.objects.exists()


def test_it_refuses_an_unregistered_task_and_records_nothing(operator: User) -> None:
    task = schedule()
    PeriodicTask.objects.filter(pk=task.pk).update(task="nobody.knows_this")
    task.refresh_from_db()
    with pytest.raises(services.ServiceError, match="no task named 'nobody.knows_this' is registered"):
        services.run_now(task, by=operator)
    assert not TaskResult.objects.exists()


def test_it_says_the_broker_is_down_and_leaves_no_pending_run(operator: User) -> None:
    """A web process whose Redis is down (a real process, pointed at a closed port)."""
    task = schedule()
    code = (
        "import django; django.setup()\n"
        "from django.contrib.auth.models import User\n"
        "from django_celery_beat.models import PeriodicTask\n"
        "from scheduler_app import services\n"
        f"task = PeriodicTask.objects.get(pk={task.pk})\n"
        "try:\n"
        "    services.run_now(task, by=User.objects.get(username='ops'))\n"
        "except services.ServiceError as exc:\n"
        "    print('ERROR:', exc)\n"
    )
    env = process_env(REDIS_URL="redis://127.0.0.1:9/0")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "ERROR: the broker did not answer" in done.stdout, done.stderr[-2000:]
    assert "the run was not queued. Check that Redis is up." in done.stdout
    assert not TaskResult.objects.exists()


def test_it_pauses_with_who_when_and_note_and_resumes(operator: User) -> None:
    task = schedule()
    before = ScheduleChange.objects.count()
    services.pause(task, by=operator, note="  vendor API down until Monday ")
    task.refresh_from_db()
    policy = SchedulePolicy.objects.get(periodic_task=task)
    assert task.enabled is False
    assert (policy.paused_by, policy.pause_note) == (operator, "vendor API down until Monday")
    paused_at = policy.paused_at
    assert paused_at is not None
    assert timezone.now() - paused_at < dt.timedelta(seconds=5)
    assert ScheduleChange.objects.count() > before  # beat sees it through the change log

    services.resume(task, by=operator)
    task = PeriodicTask.objects.get(pk=task.pk)  # re-read (mypy keeps narrowing `enabled` across refresh_from_db())
    policy.refresh_from_db()
    assert task.enabled is True and policy.paused_at is None and policy.pause_note == ""


def test_it_duplicates_a_schedule_with_its_policy_as_a_disabled_copy(operator: User) -> None:
    cron = CrontabSchedule.objects.create(minute="5", hour="4", timezone="Europe/Berlin")
    task = PeriodicTask.objects.create(name="nightly", task=TASK, crontab=cron, kwargs='{"a": 1}', priority=3)
    SchedulePolicy.objects.create(periodic_task=task, overlap="skip", catalog_key="x", max_retries=7)

    copy = services.duplicate(task, by=operator)
    again = services.duplicate(task, by=operator)

    assert (copy.name, again.name) == ("nightly (copy)", "nightly (copy) 2")
    assert copy.enabled is False and copy.crontab_id == cron.pk and copy.kwargs == '{"a": 1}' and copy.priority == 3
    policy = SchedulePolicy.objects.get(periodic_task=copy)
    assert (policy.overlap, policy.max_retries, policy.catalog_key, policy.owner) == ("skip", 7, "", operator)
    assert SchedulePolicy.objects.get(periodic_task=task).catalog_key == "x"


def finished_run(status: str = "FAILURE", **fields: Any) -> TaskResult:
    values = {
        "task_name": TASK,
        "task_args": json.dumps(repr([1, "two"])),
        "task_kwargs": json.dumps(repr({"flag": True, "none": None})),
        **fields,
    }
    return TaskResult.objects.create(task_id=str(uuid.uuid4()), status=status, date_done=timezone.now(), **values)


def test_it_retries_a_run_with_the_same_arguments_linked_to_the_old_one(operator: User, queue: str) -> None:
    task = schedule(queue=queue, priority=1)
    old = finished_run(periodic_task_name=task.name)

    new_id = services.retry_run(old, by=operator)

    [message] = queued_messages(queue)
    assert message["headers"]["argsrepr"] == "[1, 'two']"
    assert message["headers"]["kwargsrepr"] == "{'flag': True, 'none': None}"
    assert message["properties"]["priority"] == 1
    assert message["headers"][HEADER]["retry_of"] == old.task_id
    new = TaskResult.objects.get(task_id=new_id)
    assert run_context(new)["retry_of"] == old.task_id and run_context(new)["trigger"] == "retry"


def test_it_refuses_to_retry_a_run_still_running_or_recorded_shortened(operator: User) -> None:
    with pytest.raises(services.ServiceError, match="not finished"):
        services.retry_run(finished_run("STARTED"), by=operator)
    cut = finished_run(task_args=json.dumps("[1, 2, ...]"))
    with pytest.raises(services.ServiceError, match="recorded shortened"):
        services.retry_run(cut, by=operator)
    nameless = finished_run(task_name=None)  # a row written by something else than a worker
    with pytest.raises(services.ServiceError, match="no task name recorded"):
        services.retry_run(nameless, by=operator)


def test_it_revokes_a_queued_run_and_refuses_a_finished_one(operator: User, queue: str) -> None:
    task = schedule(queue=queue)
    run = TaskResult.objects.get(task_id=services.run_now(task, by=operator))
    services.revoke_run(run, by=operator)
    run.refresh_from_db()
    assert run.status == "REVOKED" and run_context(run)["revoked_by"] == "ops"
    with pytest.raises(services.ServiceError, match="already REVOKED"):
        services.revoke_run(run, by=operator)
