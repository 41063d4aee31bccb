"""Platform tasks used by the runtime tests; a test worker loads them with --include.

Each records what happened in Redis under a key the test chooses, so a test can count
executions from outside the worker. `time.sleep` here is the work being done, not a wait.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

import redis
from celery import current_task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from scheduler_app.catalog import (
    PlatformTask,
    platform_task,
    report_progress,  # as a task author imports it
)
from scheduler_app.connection import redis_client
from scheduler_app.runs.policy import RunPolicy


@platform_task(name="tests.sleeper", overlap="skip", lock_ttl=6)
def sleeper(key: str, seconds: float = 1.0, steps: int = 10) -> dict[str, Any]:
    redis_client().incr(f"{key}:runs")
    for step in range(steps):
        report_progress(100 * step / steps, f"step {step + 1} of {steps}", force=True)
        time.sleep(seconds / steps)
    return {"slept": seconds}


@platform_task(name="tests.flaky", max_retries=3, retry_backoff=0.5, retry_jitter=False)
def flaky(key: str, failures: int, error: str = "builtin") -> dict[str, Any]:
    """Fails `failures` times with a ConnectionError: the builtin one, or redis-py's
    (`error="redis"`, what a task's own Redis call raises while Redis restarts)."""
    attempt = redis_client().incr(f"{key}:runs")
    if attempt <= failures:
        raise (redis.ConnectionError if error == "redis" else ConnectionError)(f"attempt {attempt} failed")
    return {"attempts": attempt}


@platform_task(name="tests.soft_limited", overlap="skip", soft_time_limit=1, time_limit=10)
def soft_limited(key: str) -> dict[str, Any]:
    try:
        time.sleep(9)
    except SoftTimeLimitExceeded:
        redis_client().set(f"{key}:tidied", "yes")
        raise
    return {}


@platform_task(name="tests.hard_limited", time_limit=1)
def hard_limited(key: str) -> dict[str, Any]:
    redis_client().incr(f"{key}:runs")
    time.sleep(30)
    return {}


@platform_task(name="tests.raises", overlap="skip")
def raises(key: str) -> None:
    raise ValueError(f"bad input for {key}")


@platform_task(name="tests.unserializable", overlap="skip")
def unserializable(key: str) -> object:
    return object()


@platform_task(name="tests.record")
def record(key: str, label: str) -> dict[str, Any]:
    redis_client().rpush(f"{key}:order", label)
    return {"label": label}


@platform_task(name="tests.needs_db")
def needs_db(key: str) -> dict[str, Any]:
    """A run whose body reads the database (a trivial ORM query): while the database is
    away it fails with OperationalError, which the platform retries by the run's policy."""
    from django_celery_results.models import TaskResult

    attempt = redis_client().incr(f"{key}:runs")
    TaskResult.objects.filter(task_id="").exists()
    return {"attempts": attempt}


@platform_task(name="tests.record_slowly")
def record_slowly(key: str, label: str, seconds: float = 0.1) -> dict[str, Any]:
    """`tests.record` with work in between: the label goes to `<key>:began` when the body
    starts and to `<key>:order` when it is about to return. The moment the run stands for,
    as a task reads it (README, *What a task reads to know its slot*), goes to `<key>:for`."""
    client = redis_client()
    meta = getattr(current_task.request, "meta", None) or {}  # the run context (celery-types lacks `meta`)
    client.rpush(f"{key}:for", str(meta.get("scheduled_for")))
    client.rpush(f"{key}:began", label)
    time.sleep(seconds)
    client.rpush(f"{key}:order", label)
    return {"label": label}


class SlowToAcknowledge(PlatformTask[Any, Any]):
    """A platform task whose worker process, once the result is stored, takes a second
    before it reports back (in `after_return`), so the message stays unacknowledged for a
    second after the run's SUCCESS: a test can cut the broker off in between."""

    def after_return(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(1.0)


@shared_task(name="tests.slow_to_acknowledge", base=SlowToAcknowledge)
def slow_to_acknowledge(key: str, label: str) -> dict[str, Any]:
    client = redis_client()
    client.rpush(f"{key}:began", label)
    client.rpush(f"{key}:order", label)
    return {"label": label}


@platform_task(name="tests.killed_child")
def killed_child(key: str, seconds: float = 60.0) -> dict[str, Any]:
    """Appends its process id to `<key>:pids`; the first run then works for `seconds` (long
    enough for a test to kill the pool process running it), a later run returns at once."""
    client = redis_client()
    client.rpush(f"{key}:pids", os.getpid())
    runs = int(client.incr(f"{key}:runs"))
    if runs == 1:
        report_progress(0, "working", force=True)
        time.sleep(seconds)
    return {"runs": runs}


@platform_task(name="tests.progress_flood")
def progress_flood(key: str, seconds: float = 3.0) -> dict[str, Any]:
    """Reports progress in a tight loop for `seconds`, never forced: the throttle decides
    which calls write. Returns how many calls it made and how many said they wrote."""
    calls = writes = 0
    began = time.monotonic()
    while (elapsed := time.monotonic() - began) < seconds:
        calls += 1
        writes += report_progress(100 * elapsed / seconds, f"call {calls}")
        time.sleep(0.002)
    redis_client().incr(f"{key}:runs")
    return {"calls": calls, "writes": writes}


@shared_task(name="tests.retries_itself", base=PlatformTask, bind=True, policy=RunPolicy(overlap="skip", lock_ttl=3))
def retries_itself(self: PlatformTask[Any, Any], key: str, countdown: float = 3.0) -> dict[str, Any]:
    """Calls `self.retry()` on its first attempt (no exception of its own), succeeds on the next."""
    attempt = int(redis_client().incr(f"{key}:runs"))
    if attempt == 1:
        raise self.retry(countdown=countdown)
    return {"attempts": attempt}


@platform_task(name="tests.database_blip", overlap="skip", lock_ttl=3, retry_backoff=3, retry_jitter=False)
def database_blip(key: str) -> dict[str, Any]:
    """Its first attempt's query fails as a busy database makes it fail, with Django's
    OperationalError: PostgreSQL cancels it at a statement timeout; SQLite finds the
    database locked (another connection holds the write lock past the busy timeout). The
    platform retries it as transient; the next attempt's query goes through."""
    from django.db import connection, transaction
    from django_celery_results.models import TaskResult

    attempt = int(redis_client().incr(f"{key}:runs"))
    if attempt == 1:
        if connection.vendor == "postgresql":
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL statement_timeout = '50ms'")
                cursor.execute("SELECT pg_sleep(2)")
        else:
            holder = sqlite3.connect(str(connection.settings_dict["NAME"]), timeout=30, isolation_level=None)
            try:
                holder.execute("BEGIN IMMEDIATE")  # the write lock, as a long writer would hold it
                with connection.cursor() as cursor:
                    cursor.execute("PRAGMA busy_timeout = 50")
                    try:
                        TaskResult.objects.filter(task_id="").update(status="SUCCESS")  # needs the write lock
                    finally:
                        cursor.execute("PRAGMA busy_timeout = 30000")
            finally:
                holder.close()
    TaskResult.objects.filter(task_id="").exists()
    return {"attempts": attempt}


@platform_task(name="tests.rated", rate="20/10s")
def rated(key: str) -> dict[str, Any]:
    """Notes when its body began (the fleet-wide rate test reads the starts back)."""
    started = time.time()
    redis_client().rpush(f"{key}:starts", repr(started))
    return {"started": started}


@platform_task(name="tests.rated_slowly", rate="1/30s")
def rated_slowly(key: str) -> dict[str, Any]:
    redis_client().incr(f"{key}:runs")
    return {}


@platform_task(name="tests.pooled")
def pooled(key: str, seconds: float = 0.5) -> dict[str, Any]:
    """Holds its pool's slot (the header's policy names the pool) for `seconds`, and returns
    when its body began and ended (the pool tests read them back from the recorded runs)."""
    began = time.time()
    redis_client().rpush(f"{key}:began", repr(began))
    time.sleep(seconds)
    return {"began": began, "ended": time.time()}


@platform_task(name="tests.pooled_by_default", pool="tests-exports")
def pooled_by_default(key: str) -> dict[str, Any]:
    redis_client().incr(f"{key}:runs")
    return {}


@platform_task(name="tests.pooled_rated", rate="4/m")
def pooled_rated(key: str, seconds: float = 0.5) -> dict[str, Any]:
    """A rated task in a pool: waiting in the pool's line must not spend its rate."""
    began = time.time()
    redis_client().rpush(f"{key}:began", repr(began))
    time.sleep(seconds)
    return {"began": began, "ended": time.time()}
