"""Platform tasks used by the runtime tests; a test worker loads them with --include.

Each records what happened in Redis under a key the test chooses, so a test can count
executions from outside the worker. `time.sleep` here is the work being done, not a wait.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from scheduler_app.catalog import (
    PlatformTask,
    platform_task,
    report_progress,  # as a task author imports it
)
from scheduler_app.connection import redis_client


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
    starts and to `<key>:order` when it is about to return."""
    client = redis_client()
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
