"""README promises of the worker side, each held on real parts: real `celery worker`
processes (prefork pools), the real broker and database, real signals.

- a prefork child killed under a live worker requeues its run at once (*Delivery guarantees*);
- progress is written at most twice a second per run (*Execution policy*);
- `self.retry()` and a transient database error keep the run's id, row and lock (*Execution policy*);
- the start-up health check is one per minute across all workers (*Configuration*).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, cast

import psutil
import pytest
from celery import current_app
from django.db import connection
from django_celery_results.models import TaskResult

from scheduler_app.connection import redis_client
from scheduler_app.runs import ledger, locks, startup
from scheduler_app.runs.history import run_context
from tests.processes import Process, bare_worker, celery, process_env, recorder, wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)
TASKS = ("--include", "tests.tasks")
FINAL = ("SUCCESS", "FAILURE", "SKIPPED", "EXPIRED")
HEALTH_TASK = "maintenance.system_health_check"


def send(task: str, key: str, *, policy: dict[str, Any] | None = None, **kwargs: Any) -> str:
    """Send `task` as a run of the schedule `key` (its overlap lock is `key`'s)."""
    header = {"schedule": key, "trigger": "api", "policy": policy or {}}
    return str(current_app.send_task(task, kwargs={"key": key, **kwargs}, headers={"beatkeeper": header}).id)


def row(task_id: str) -> TaskResult | None:
    return TaskResult.objects.filter(task_id=task_id).first()


def final(task_id: str, timeout: float = 60) -> TaskResult:
    return wait_for(lambda: (r := row(task_id)) and r.status in FINAL and r, timeout, f"run {task_id} to finish")


def runs(key: str) -> int:
    return int(redis_client().get(f"{key}:runs") or 0)


def pids(key: str) -> list[int]:
    return [int(pid) for pid in cast(list[bytes], redis_client().lrange(f"{key}:pids", 0, -1))]


# --- A killed prefork child requeues its run at once -------------------------------------


def test_a_prefork_child_killed_under_a_live_worker_requeues_its_run_at_once(tmp_path: Path, key: str) -> None:
    """The pool process running a run is SIGKILLed; its worker lives on. The run comes back
    on the queue at once (not after the visibility timeout, 300 s here), runs again on the
    same worker and ends SUCCESS in the same row, its history showing the interrupted attempt."""
    visibility = 300
    with worker(tmp_path, *TASKS, concurrency=2, CELERY_VISIBILITY_TIMEOUT=str(visibility)) as proc:
        task_id = send("tests.killed_child", key, seconds=120)
        wait_for(lambda: (r := row(task_id)) and r.status == "PROGRESS", 60, "the first attempt to run")
        (child,) = pids(key)
        assert psutil.Process(child).ppid() == proc.proc.pid  # a pool process of the worker, not the worker
        os.kill(child, signal.SIGKILL)
        killed_at = time.monotonic()

        def again() -> bool:  # handed to a pool process again, or ended without it
            return len(pids(key)) == 2 or ((r := row(task_id)) is not None and r.status in FINAL)

        wait_for(again, 60, "the run to be handed to a pool process again")
        requeued_after = time.monotonic() - killed_at
        assert len(pids(key)) == 2, f"not run again: {row(task_id)}"
        done = final(task_id)
        assert proc.proc.poll() is None  # the worker lived through it
    assert requeued_after < visibility / 10, f"run again {requeued_after:.1f}s after the kill"
    assert pids(key)[1] != child and runs(key) == 2
    assert done.status == "SUCCESS" and json.loads(done.result or "null") == {"runs": 2}
    assert TaskResult.objects.filter(task_name="tests.killed_child").count() == 1  # one run, one row
    context = run_context(done)
    assert context["attempt"] == 2
    assert [attempt["state"] for attempt in context["attempts"]] == ["INTERRUPTED"]
    assert context["attempts"][0]["worker"] == done.worker  # the same (live) worker ran it again


# --- Progress: at most two writes a second per run ------------------------------------------


def ledger_events(task_id: str) -> list[dict[str, Any]]:
    """Every state change the run sent to the ledger's stream, oldest first (no recorder ran:
    the stream still holds them all)."""
    events = []
    for _, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], redis_client().xrange(ledger.STREAM)):
        event = json.loads(fields[b"e"])
        if event["id"] == task_id:
            events.append(event)
    return events


def test_progress_reported_in_a_tight_loop_is_written_at_most_twice_a_second(tmp_path: Path, key: str) -> None:
    """`tests.progress_flood` calls report_progress (not forced) hundreds of times in three
    seconds; the run's PROGRESS writes that reach Redis, counted in the ledger's stream, are
    at most 2 per second of the run plus one and at least half a second apart; some are
    written (the run shows progress), each one report_progress said it wrote."""
    with bare_worker(tmp_path, *TASKS, concurrency=1):
        task_id = send("tests.progress_flood", key, seconds=3.0)
        wait_for(lambda: (found := ledger.latest(task_id)) and found.status == "SUCCESS", 60, "the run to finish")
        found = ledger.latest(task_id)
    events = ledger_events(task_id)
    progress = [event for event in events if event["columns"]["status"] == "PROGRESS"]
    moments = [dt.datetime.fromisoformat(event["at"]) for event in progress]
    end = dt.datetime.fromisoformat(events[-1]["at"])
    assert events[-1]["columns"]["status"] == "SUCCESS"
    assert found is not None and found.date_started is not None
    seconds = (end - found.date_started).total_seconds()
    result = json.loads(events[-1]["columns"]["result"])
    assert result["calls"] > 10 * len(progress)  # the throttle was asked far more often than it wrote
    assert result["writes"] == len(progress)  # what report_progress said it wrote is what reached Redis
    assert 2 <= len(progress) <= 2 * seconds + 1, f"{len(progress)} writes in {seconds:.2f}s"
    gaps = [(b - a).total_seconds() for a, b in zip(moments, moments[1:], strict=False)]
    assert min(gaps) >= 0.45, gaps  # PROGRESS_MIN_INTERVAL (0.5 s), less clock noise
    with recorder(tmp_path):  # and the run is recorded as usual once a recorder runs
        assert final(task_id).status == "SUCCESS"


# --- A retry keeps the run's id, row and lock --------------------------------------------------


@pytest.mark.parametrize(
    ("task", "kwargs", "error"),
    [("tests.retries_itself", {"countdown": 6}, None), ("tests.database_blip", {}, "OperationalError")],
    ids=["self.retry()", "transient database error"],
)
def test_a_retry_keeps_the_runs_id_row_and_lock(
    tmp_path: Path, key: str, task: str, kwargs: dict[str, Any], error: str | None
) -> None:
    """A run that calls `self.retry()`, and one whose query fails with the database's
    OperationalError (PostgreSQL: statement timeout; SQLite: database locked), come back
    as the same run: the same id and one row, attempt 2 with the first attempt counted in
    its context. Between the attempts the schedule's overlap lock stays the run's: another
    run of the schedule is SKIPPED, naming it as the holder."""
    with worker(tmp_path, *TASKS, concurrency=2) as proc:
        first = send(task, key, policy={"retry_backoff": 6}, **kwargs)  # a gap of 6 s between the attempts
        wait_for(lambda: runs(key) >= 1, 60, "the first attempt")
        assert redis_client().get(locks.lock_key(key)) == first.encode()
        ended = wait_for(
            lambda: (r := row(first)) and r.status in ("RETRY", *FINAL) and r, 30, "the first attempt's end"
        )
        assert ended.status == "RETRY", ended.traceback
        assert redis_client().get(locks.lock_key(key)) == first.encode()  # kept through the gap
        other = send(task, key, **kwargs)
        skipped = final(other)
        done = final(first)
        wait_for(lambda: redis_client().get(locks.lock_key(key)) is None, 15, "the lock to be released")
    assert skipped.status == "SKIPPED"
    assert json.loads(skipped.result or "null")["holder"] == first
    assert done.date_started is not None and skipped.date_done < done.date_started  # refused in the gap
    assert done.status == "SUCCESS" and json.loads(done.result or "null") == {"attempts": 2}
    assert runs(key) == 2
    assert TaskResult.objects.filter(task_id=first).count() == 1
    assert set(TaskResult.objects.filter(task_name=task).values_list("task_id", flat=True)) == {first, other}
    context = run_context(done)
    assert context["attempt"] == 2 and context["trigger"] == "api" and context["schedule"] == key
    (earlier,) = context["attempts"]
    assert earlier["state"] == "RETRY"
    if error is not None:
        assert earlier["error"].startswith(f"{error}: "), earlier
        vendor_words = "canceling statement" if connection.vendor == "postgresql" else "database is locked"
        assert vendor_words in earlier["error"]
    assert dt.datetime.fromisoformat(earlier["started"]) < done.date_started
    assert "was lost" not in proc.output  # the lock never lapsed between the attempts


# --- One start-up health check per minute across workers ---------------------------------------


@contextmanager
def workers_at_once(tmp_path: Path, count: int, **env: str) -> Iterator[list[Process]]:
    """`count` workers started together (not one after another's ready), then waited for."""
    with ExitStack() as stack:
        procs = []
        for n in range(count):
            name = f"test-{uuid.uuid4().hex[:8]}@%h"
            argv = celery("worker", "--loglevel", "INFO", "--concurrency", "1", "--hostname", name,
                          "--without-mingle", "--without-gossip")  # fmt: skip
            proc = Process(f"worker {n}", argv, process_env(**env), tmp_path / f"worker-{n}.log")
            stack.callback(proc.stop)
            procs.append(proc)
        for proc in procs:
            proc.wait_for_output(" ready.")
        yield procs


def test_workers_starting_together_send_one_start_up_health_check(tmp_path: Path) -> None:
    """Three workers with STARTUP_HEALTH_CHECK=true start at the same moment: exactly one
    claims the minute and sends the check; one health-check run is recorded."""
    client = redis_client()
    client.delete(startup.CLAIM_KEY)  # an earlier test's worker may have claimed this minute
    with recorder(tmp_path), workers_at_once(tmp_path, 3, STARTUP_HEALTH_CHECK="true") as procs:
        # Each worker's start-up signal ran before it logged " ready.": all three have decided.
        senders = [proc.name for proc in procs if "start-up health check sent" in proc.output]
        check = wait_for(
            lambda: TaskResult.objects.filter(task_name=HEALTH_TASK, status__in=FINAL).first(), 90, "the health check"
        )
        wait_for(lambda: client.llen("celery") == 0, 30, "the default queue to be empty")
        assert 0 < client.ttl(startup.CLAIM_KEY) <= startup.CLAIM_SECONDS
    assert len(senders) == 1, senders
    assert check.status == "SUCCESS", check.traceback
    assert TaskResult.objects.filter(task_name=HEALTH_TASK).count() == 1
