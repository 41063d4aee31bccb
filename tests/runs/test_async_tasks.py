"""`async def` task bodies on real workers (tests/async_tasks.py): the result is recorded,
many awaits run at once in one run, the worker process keeps one event loop (and what a
task keeps on it) across runs, and every policy holds as for a synchronous body: a soft
time limit cancels the coroutine so its cleanup runs, an exception is recorded with its
traceback, retries keep the run's identity, the overlap lock is held and renewed,
progress is shown, Django's async ORM works and its sync-only rule is kept."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from celery import current_app
from django.conf import settings
from django_celery_results.models import TaskResult

from scheduler_app.catalog import PlatformTask
from scheduler_app.connection import redis_client
from scheduler_app.runs import aio, locks
from scheduler_app.runs.history import run_context
from tests import async_tasks
from tests.processes import wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)
TASKS = ("--include", "tests.async_tasks")
FINAL = ("SUCCESS", "FAILURE", "SKIPPED", "EXPIRED")


class InFlight:
    """How many requests the slow server is answering at once, and the most it ever was."""

    def __init__(self) -> None:
        self.lock, self.now, self.most = threading.Lock(), 0, 0


IN_FLIGHT = InFlight()


class Slow(BaseHTTPRequestHandler):
    """GET /?seconds=s answers 200 after s seconds (each request in its own thread)."""

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        seconds = float(parse_qs(urlsplit(self.path).query).get("seconds", ["0"])[0])
        with IN_FLIGHT.lock:
            IN_FLIGHT.now += 1
            IN_FLIGHT.most = max(IN_FLIGHT.most, IN_FLIGHT.now)
        try:
            time.sleep(seconds)
        finally:
            with IN_FLIGHT.lock:
                IN_FLIGHT.now -= 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (http.server's signature)
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # listen()'s backlog: all the GETs of a fan-out connect at once


@pytest.fixture
def slow_server() -> Iterator[str]:
    """A local HTTP server with a slow endpoint: the outside service an async task calls."""
    IN_FLIGHT.most = 0
    server = Server(("127.0.0.1", 0), Slow)  # port 0: the server binds a free one itself
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def send(task: str, key: str, **kwargs: Any) -> str:
    header = {"schedule": key, "trigger": "api", "policy": {}}
    result = current_app.send_task(task, kwargs={"key": key, **kwargs}, headers={"beatkeeper": header})
    return str(result.id)


def row(task_id: str) -> TaskResult | None:
    return TaskResult.objects.filter(task_id=task_id).first()


def final(task_id: str, timeout: float = 60) -> TaskResult:
    return wait_for(lambda: (r := row(task_id)) and r.status in FINAL and r, timeout, f"run {task_id} to finish")


def result_of(run: TaskResult) -> Any:
    return json.loads(run.result or "null")


def test_an_async_task_runs_its_awaits_at_once_on_one_loop_kept_across_runs(tmp_path: Path, key: str,
                                                                           slow_server: str) -> None:  # fmt: skip
    url = f"{slow_server}?seconds=0.5"
    with worker(tmp_path, *TASKS, concurrency=1):
        first = final(send("tests.async_fan_out", key, url=url, requests=20))
        second = final(send("tests.async_fan_out", key, url=url, requests=20))
    assert (first.status, second.status) == ("SUCCESS", "SUCCESS"), (first.traceback, second.traceback)
    one, two = result_of(first), result_of(second)
    assert one["statuses"] == [200]
    # the server answered many of a run's 20 requests at once (one at a time if the run awaited them in turn)
    assert IN_FLIGHT.most >= 10, IN_FLIGHT.most
    assert one["last_start"] < one["first_end"], one
    # the same process ran both on the same loop, and the client kept on it was reused
    assert two["pid"] == one["pid"]
    assert (one["runs_on_this_loop"], two["runs_on_this_loop"]) == (1, 2)
    assert (one["client_requests"], two["client_requests"]) == (20, 40)


def test_a_soft_time_limit_cancels_the_coroutine_so_its_cleanup_runs(tmp_path: Path, key: str,
                                                                    slow_server: str) -> None:  # fmt: skip
    with worker(tmp_path, *TASKS, concurrency=1):
        done = final(send("tests.async_soft_limited", key))
        after = final(send("tests.async_fan_out", f"{key}-after", url=slow_server, requests=2))
    assert done.status == "FAILURE"
    assert done.traceback is not None and "SoftTimeLimitExceeded" in done.traceback
    client = redis_client()
    assert client.get(f"{key}:finally") == b"ran"  # the body's `finally` ran
    assert client.get(f"{key}:aexit") in {b"CancelledError", b"SoftTimeLimitExceeded"}  # and its `async with` exit
    assert after.status == "SUCCESS"  # the loop is still good for the next run
    assert not client.exists(locks.lock_key(key))


@pytest.mark.parametrize("where", ["gather", "callback"])
def test_a_soft_time_limit_landing_outside_the_body_still_cancels_all_of_it(tmp_path: Path, key: str,
                                                                           where: str) -> None:  # fmt: skip
    """The signal lands in another task of a gather, or in a loop callback (where asyncio
    would only log an exception): the whole body is cancelled and each part tidies up."""
    with worker(tmp_path, *TASKS, concurrency=1):
        done = final(send("tests.async_soft_limited_elsewhere", key, where=where))
    assert done.status == "FAILURE"
    assert done.traceback is not None and "SoftTimeLimitExceeded" in done.traceback, done.traceback
    expected = {b"waiter", b"spinner"} if where == "gather" else {b"waiter"}
    assert redis_client().smembers(f"{key}:finally") == expected


def test_what_a_run_leaves_on_the_loop_is_cancelled_when_it_ends(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS, concurrency=1) as process:
        left = final(send("tests.async_leaves_a_task", key))
        after = final(send("tests.async_sleeps", f"{key}-after", seconds=2))  # the leftover would fire in here
        process.wait_for_output("left 1 task(s) running on the loop; cancelling them")
    assert (left.status, after.status) == ("SUCCESS", "SUCCESS")
    assert not redis_client().exists(f"{key}:leftover")


def test_a_task_group_of_transient_errors_is_retried(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS, concurrency=1):
        done = final(send("tests.async_task_group_flaky", key, failures=1))
    assert done.status == "SUCCESS" and result_of(done) == {"attempts": 2}
    assert run_context(done)["attempt"] == 2


def test_autoretry_for_is_refused_on_an_async_body() -> None:
    current_app.finalize()  # so the task is made now, as a worker makes it at start-up, not lazily later
    with pytest.raises(TypeError, match="autoretry_for does not apply to an async def body; give the exceptions as"):

        @current_app.task(name="tests.async_autoretry", base=PlatformTask, autoretry_for=(KeyError,))
        async def autoretried() -> None:
            pass

    assert "tests.async_autoretry" not in current_app.tasks


def test_an_exception_of_an_async_body_is_recorded_with_its_traceback(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS, concurrency=1):
        done = final(send("tests.async_fails", key))
    assert done.status == "FAILURE"
    assert done.traceback is not None
    assert f"ValueError: async body failed for {key}" in done.traceback
    assert "in fails" in done.traceback and "tests/async_tasks.py" in done.traceback  # the body's own frame


def test_retries_of_an_async_task_keep_the_runs_identity(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS, concurrency=2):
        flaky = send("tests.async_flaky", key, failures=2)
        asked = send("tests.async_self_retry", f"{key}-self")
        flaky_done, asked_done = final(flaky), final(asked)
    assert flaky_done.status == "SUCCESS" and result_of(flaky_done) == {"attempts": 3}
    context = run_context(flaky_done)
    assert context["attempt"] == 3
    assert [a["error"] for a in context["attempts"]] == ["ConnectionError: attempt 1 failed",
                                                         "ConnectionError: attempt 2 failed"]  # fmt: skip
    assert asked_done.status == "SUCCESS" and result_of(asked_done) == {"attempts": 2, "id": asked}
    assert TaskResult.objects.filter(task_id__in=[flaky, asked]).count() == 2  # one row per run, not per attempt


def test_an_async_run_holds_and_renews_the_overlap_lock(tmp_path: Path, key: str) -> None:
    until = f"{key}:release"
    client = redis_client()
    lock = locks.lock_key(key)
    with worker(tmp_path, *TASKS, concurrency=2):
        first = send("tests.async_overlapping", key, until=until)
        wait_for(lambda: (r := row(first)) and r.status == "PROGRESS", 60, "the first run to hold the lock")
        # lock_ttl is 3 s, renewed every second by its thread while the loop awaits: its TTL
        # only goes down between two renewals, so a sample above the one before is a renewal
        samples = [client.pttl(lock)]

        def renewed() -> bool:
            samples.append(client.pttl(lock))
            return samples[-1] > samples[-2] > 0

        wait_for(renewed, 10, "a renewal", interval=0.05)
        assert locks.OverlapLock(key, "someone else", 3).holder() == first
        second = final(send("tests.async_overlapping", key, until=until))
        assert second.status == "SKIPPED"
        client.set(until, "1")
        done = final(first)
    assert done.status == "SUCCESS"
    assert not client.exists(lock)


def test_an_async_task_reports_progress_throttled(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS, concurrency=1):
        run_id = send("tests.async_progress", key, reports=50)

        def half_way() -> TaskResult | None:
            r = row(run_id)
            return r if r and r.status == "PROGRESS" and result_of(r)["message"] == "half way" else None

        shown = wait_for(half_way, 60, "the forced progress report")
        assert run_context(shown)["schedule"] == key  # written from another thread, with the run's context
        redis_client().set(f"{key}:go", "1")
        done = final(run_id)
    assert done.status == "SUCCESS"
    assert 1 <= result_of(done)["written"] <= 2  # 50 reports in a tight loop: the throttle wrote one (or two)


def test_an_async_task_uses_the_async_orm_and_django_refuses_a_sync_call(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS, concurrency=1):
        done = final(send("tests.async_orm", key))
        again = final(send("tests.async_orm", key))
    assert done.status == "SUCCESS", done.traceback
    found = result_of(done)
    assert found["acount"] == found["sync_to_async"] >= 0
    assert found["sync_call"] == "SynchronousOnlyOperation"
    # The first run's connection was closed after it, as close_old_connections decides: at once
    # with CONN_MAX_AGE 0 (SQLite here); kept for reuse (health-checked) within a PostgreSQL max age.
    kept_for = settings.DATABASES["default"].get("CONN_MAX_AGE") or 0
    assert result_of(again)["fresh_connection"] is (kept_for == 0), kept_for


def test_called_directly_an_async_task_is_awaitable_and_run_eagerly_it_runs(key: str, slow_server: str) -> None:
    result = asyncio.run(async_tasks.fan_out(key, slow_server, requests=2))
    assert result["statuses"] == [200]
    eager = async_tasks.fails.apply(kwargs={"key": key})
    assert eager.failed() and isinstance(eager.result, ValueError)

    async def from_a_loop() -> Any:
        return async_tasks.fails.apply(kwargs={"key": key})

    refused = asyncio.run(from_a_loop())
    assert isinstance(refused.result, aio.AsyncNotSupported)
    assert "await it" in str(refused.result)
