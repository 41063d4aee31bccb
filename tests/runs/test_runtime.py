"""The execution policy on real workers: overlap, lock renewal and expiry, retries, time
limits, progress, failures, redelivery after SIGKILL, no duplicate of live runs, expiry,
priority. Real `celery worker` processes, the real broker, real signals."""

from __future__ import annotations

import datetime as dt
import json
import signal
from pathlib import Path
from typing import Any, TypedDict, cast

import pytest
from celery import current_app
from celery.result import AsyncResult
from django_celery_results.models import TaskResult

from scheduler_app.connection import redis_client
from scheduler_app.runs import locks
from scheduler_app.runs.history import run_context
from tests.processes import Process, wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)
TASKS = ("--include", "tests.tasks")
FINAL = ("SUCCESS", "FAILURE", "SKIPPED", "EXPIRED")


class FastRedelivery(TypedDict):
    """A worker's environment for quick redelivery (a TypedDict: `**` of it fills no `concurrency`)."""

    CELERY_VISIBILITY_TIMEOUT: str


def send(task: str, key: str, *, policy: dict[str, Any] | None = None, **options: Any) -> str:
    header = {"schedule": key, "trigger": "api", "policy": policy or {}}
    kwargs = options.pop("kwargs", {})
    result = current_app.send_task(task, kwargs={"key": key, **kwargs}, headers={"beatkeeper": header}, **options)
    return str(result.id)


def row(task_id: str) -> TaskResult | None:
    return TaskResult.objects.filter(task_id=task_id).first()


def final(task_id: str, timeout: float = 60) -> TaskResult:
    return wait_for(lambda: (r := row(task_id)) and r.status in FINAL and r, timeout, f"run {task_id} to finish")


def running(task_id: str, percent: float = 0, timeout: float = 60) -> TaskResult:
    def progressed() -> TaskResult | None:
        r = row(task_id)
        if r and r.status == "PROGRESS":
            assert r.result is not None  # the progress update_state stored
            if json.loads(r.result)["percent"] >= percent:
                return r
        return None

    return wait_for(progressed, timeout, f"run {task_id} to pass {percent}%")


def progressing(task_id: str, percent: float = 0, timeout: float = 60) -> None:
    """As `running`, read where the worker writes it: the backend's Redis side, which
    AsyncResult reads first, without the recorder's lag (the row can show a short run's
    progress late, or never). For a test that must act while the run still runs."""

    def progressed() -> bool:
        found: AsyncResult[Any] = AsyncResult(task_id)
        info = found.info if isinstance(found.info, dict) else {}
        return str(found.state) == "PROGRESS" and float(info.get("percent", -1)) >= percent

    wait_for(progressed, timeout, f"run {task_id} to pass {percent}%", interval=0.05)


def holding(key: str, timeout: float = 60) -> None:
    """Until a run of `key` holds its overlap lock (read in Redis, as the next run will)."""
    wait_for(lambda: redis_client().exists(locks.lock_key(key)), timeout, f"a run of {key} to hold the lock", 0.05)


def runs(key: str) -> int:
    return int(redis_client().get(f"{key}:runs") or 0)


def kill(proc: Process) -> None:
    """SIGKILL the whole worker: its main process and its pool."""
    import os

    os.killpg(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait()


# --- overlap ---------------------------------------------------------------------------


def test_it_skips_a_run_while_the_previous_one_holds_the_lock(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS), worker(tmp_path, *TASKS):
        first = send("tests.sleeper", key, kwargs={"seconds": 4})
        holding(key)
        second = send("tests.sleeper", key)
        skipped = final(second)
        assert skipped.status == "SKIPPED"
        assert skipped.result is not None
        assert json.loads(skipped.result)["reason"] == "the previous run still holds the lock"
        assert json.loads(skipped.result)["holder"] == first
        assert final(first).status == "SUCCESS"
    assert runs(key) == 1
    assert redis_client().get(locks.lock_key(key)) is None  # released at the end of the run


def test_it_queues_at_most_one_run_behind_the_running_one(tmp_path: Path, key: str) -> None:
    wait = {"overlap": "wait"}
    with worker(tmp_path, *TASKS), worker(tmp_path, *TASKS):
        first = send("tests.sleeper", key, policy=wait, kwargs={"seconds": 4})
        holding(key)
        second = send("tests.sleeper", key, policy=wait, kwargs={"seconds": 0.5})
        # its state as the worker wrote it (the row shows it only once the recorder wrote it)
        wait_for(lambda: str(AsyncResult(second).state) == "WAITING", 30, "the second run to wait", interval=0.05)
        third = send("tests.sleeper", key, policy=wait)
        assert final(third).status == "SKIPPED"
        third_row = row(third)
        assert third_row is not None and third_row.result is not None
        assert json.loads(third_row.result)["reason"] == "a run already waits"
        done_first, done_second = final(first), final(second)
    assert (done_first.status, done_second.status) == ("SUCCESS", "SUCCESS")
    assert done_second.date_started is not None
    assert done_second.date_started >= done_first.date_done
    assert runs(key) == 2


def test_it_renews_the_lock_while_a_run_outlives_its_ttl(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS), worker(tmp_path, *TASKS):
        first = send("tests.sleeper", key, policy={"lock_ttl": 3}, kwargs={"seconds": 8})
        progressing(first, percent=70)  # more than two TTLs in
        assert 0 < redis_client().pttl(locks.lock_key(key)) <= 3000
        assert final(send("tests.sleeper", key)).status == "SKIPPED"
        assert final(first).status == "SUCCESS"


def test_it_lets_the_lock_of_a_killed_worker_expire(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS) as doomed:
        running(send("tests.sleeper", key, policy={"lock_ttl": 3}, kwargs={"seconds": 60}))
        kill(doomed)
    wait_for(lambda: redis_client().get(locks.lock_key(key)) is None, 10, "the dead worker's lock to expire")
    with worker(tmp_path, *TASKS):
        assert final(send("tests.sleeper", key, kwargs={"seconds": 0.2})).status == "SUCCESS"


# --- retries, time limits, failures, progress -------------------------------------------


def test_it_retries_with_backoff_and_keeps_the_runs_identity(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS):
        task_id = send("tests.flaky", key, kwargs={"failures": 2})
        done = final(task_id)
    assert done.status == "SUCCESS" and done.result is not None and json.loads(done.result) == {"attempts": 3}
    context = run_context(done)
    assert context["attempt"] == 3
    assert [a["state"] for a in context["attempts"]] == ["RETRY", "RETRY"]
    assert [a["error"] for a in context["attempts"]] == [
        "ConnectionError: attempt 1 failed",
        "ConnectionError: attempt 2 failed",
    ]
    assert done.date_started is not None
    starts = [dt.datetime.fromisoformat(a["started"]) for a in context["attempts"]] + [done.date_started]
    gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0  # 0.5 s, then doubled


def test_a_redis_connection_error_in_the_task_is_transient_and_retried(tmp_path: Path, key: str) -> None:
    """redis-py's ConnectionError is not the builtin one: a task's own Redis call during a
    Redis restart must be retried like any connection error, not end the run FAILURE."""
    with worker(tmp_path, *TASKS):
        done = final(send("tests.flaky", key, kwargs={"failures": 1, "error": "redis"}))
    assert done.status == "SUCCESS" and json.loads(done.result or "null") == {"attempts": 2}
    assert [a["error"] for a in run_context(done)["attempts"]] == ["ConnectionError: attempt 1 failed"]


def test_a_retrying_run_keeps_its_lock_between_attempts_and_releases_it_once(tmp_path: Path, key: str) -> None:
    policy = {"overlap": "skip", "lock_ttl": 3, "retry_backoff": 2, "retry_jitter": False}
    with worker(tmp_path, *TASKS) as proc:
        first = send("tests.flaky", key, policy=policy, kwargs={"failures": 1})
        wait_for(lambda: runs(key) >= 1, 30, "the first attempt")
        second = send("tests.flaky", key, policy=policy, kwargs={"failures": 0})
        assert final(second).status == "SKIPPED"  # the retry gap still belongs to the first run
        assert final(first).status == "SUCCESS"
        wait_for(lambda: redis_client().get(locks.lock_key(key)) is None, 10, "the lock to be released")
    assert "was lost" not in proc.output  # no renewer outlived the attempt that started it


def test_it_gives_up_after_max_retries_with_the_last_error(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS):
        done = final(send("tests.flaky", key, policy={"max_retries": 1, "retry_backoff": 0.1}, kwargs={"failures": 5}))
    assert done.status == "FAILURE"
    assert done.traceback is not None
    assert "attempt 2 failed" in done.traceback
    assert runs(key) == 2


def test_it_stops_a_run_at_its_soft_time_limit_so_it_can_tidy_up(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS):
        done = final(send("tests.soft_limited", key))
    assert done.status == "FAILURE"
    assert done.traceback is not None
    assert "SoftTimeLimitExceeded" in done.traceback
    assert redis_client().get(f"{key}:tidied") == b"yes"
    assert redis_client().get(locks.lock_key(key)) is None


def test_it_kills_a_run_at_its_hard_time_limit_and_the_worker_goes_on(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS):
        done = final(send("tests.hard_limited", key))
        assert done.status == "FAILURE"
        assert done.result is not None
        assert "TimeLimitExceeded" in done.result
        assert final(send("tests.sleeper", key, kwargs={"seconds": 0.1})).status == "SUCCESS"
    assert runs(key) == 2  # the killed run was not redelivered


@pytest.mark.parametrize(
    ("task", "error"),
    [("tests.raises", "ValueError: bad input for"), ("tests.unserializable", "which cannot be stored as JSON")],
)
def test_it_records_a_failing_run_releases_its_lock_and_keeps_the_worker(
    tmp_path: Path, key: str, task: str, error: str
) -> None:
    with worker(tmp_path, *TASKS):
        done = final(send(task, key))
        assert done.status == "FAILURE"
        assert done.traceback is not None
        assert error in done.traceback
        assert redis_client().get(locks.lock_key(key)) is None
        assert final(send("tests.sleeper", key, kwargs={"seconds": 0.1})).status == "SUCCESS"


def test_it_shows_progress_to_another_process_while_the_run_goes_on(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS):
        task_id = send("tests.sleeper", key, kwargs={"seconds": 3})
        seen = running(task_id, percent=30)
        assert seen.result is not None
        progress = json.loads(seen.result)
        assert progress["message"].startswith("step ") and 30 <= progress["percent"] < 100
        state: str = AsyncResult(task_id).state  # a custom one here, which celery-types' Literal lacks
        assert state == "PROGRESS"
        assert final(task_id).status == "SUCCESS"


# --- reliability ----------------------------------------------------------------------


def test_it_redelivers_the_run_of_a_sigkilled_worker_and_shows_both_attempts(tmp_path: Path, key: str) -> None:
    fast: FastRedelivery = {"CELERY_VISIBILITY_TIMEOUT": "5"}
    with worker(tmp_path, *TASKS, **fast) as doomed:
        task_id = send("tests.sleeper", key, kwargs={"seconds": 4})
        progressing(task_id)
        kill(doomed)
    with worker(tmp_path, *TASKS, **fast):
        done = final(task_id, timeout=60)
    assert done.status == "SUCCESS"
    context = run_context(done)
    assert context["attempt"] == 2
    assert [a["state"] for a in context["attempts"]] == ["INTERRUPTED"]
    assert runs(key) == 2


def test_it_never_delivers_a_live_long_run_twice(tmp_path: Path, key: str) -> None:
    fast: FastRedelivery = {"CELERY_VISIBILITY_TIMEOUT": "5"}
    with worker(tmp_path, *TASKS, **fast), worker(tmp_path, *TASKS, **fast):
        long_run = send("tests.sleeper", key, policy={"overlap": "allow"}, kwargs={"seconds": 14})
        far_eta = send("tests.record", key, kwargs={"label": "eta"}, countdown=12)
        assert final(long_run, timeout=90).status == "SUCCESS"
        assert final(far_eta, timeout=90).status == "SUCCESS"
    assert runs(key) == 1
    assert redis_client().lrange(f"{key}:order", 0, -1) == [b"eta"]


def test_it_records_a_run_not_started_before_its_expiry_as_expired(tmp_path: Path, key: str) -> None:
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    task_id = send("tests.record", key, kwargs={"label": "late"}, expires=expires)
    wait_for(lambda: dt.datetime.now(dt.UTC) > expires, 5, "the expiry time to pass")  # no worker until then
    with worker(tmp_path, *TASKS):
        done = final(task_id)
    assert done.status == "EXPIRED"
    assert done.result is not None
    assert json.loads(done.result)["reason"] == "not started before it expired"
    assert redis_client().llen(f"{key}:order") == 0


def test_it_lets_a_high_priority_run_overtake_a_backlog(tmp_path: Path, key: str) -> None:
    blocker = send("tests.sleeper", key, kwargs={"seconds": 2})
    backlog = [send("tests.record", key, kwargs={"label": f"low-{n}"}, priority=9) for n in range(8)]
    urgent = send("tests.record", key, kwargs={"label": "urgent"}, priority=0)
    with worker(tmp_path, *TASKS, concurrency=1):
        for task_id in [blocker, urgent, *backlog]:
            final(task_id)
    labels = cast(list[bytes], redis_client().lrange(f"{key}:order", 0, -1))  # redis_client() does not decode
    order = [label.decode() for label in labels]
    assert order.index("urgent") == 0, order
