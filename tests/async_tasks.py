"""`async def` tasks for tests/runs/test_async_tasks.py: a worker loads them with
`--include tests.async_tasks`. Each records what it did in Redis under the test's `key`."""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from types import TracebackType
from typing import Any

import aiohttp
from asgiref.sync import sync_to_async
from celery import shared_task
from django.db import connections
from django_celery_results.models import TaskResult

from scheduler_app.catalog import PlatformTask, areport_progress, platform_task
from scheduler_app.connection import redis_client

# One client per event loop, kept across the runs on that loop, and how many runs each loop ran.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()
_runs_on: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()
_requests: weakref.WeakKeyDictionary[aiohttp.ClientSession, int] = weakref.WeakKeyDictionary()


def _count(client: aiohttp.ClientSession, requests: int) -> int:
    """The requests `client` has sent over all runs."""
    _requests[client] = _requests.get(client, 0) + requests
    return _requests[client]


@platform_task(name="tests.async_fan_out")
async def fan_out(key: str, url: str, requests: int = 20, timeout: float = 10) -> dict[str, Any]:
    """`requests` GETs of `url` at once through one aiohttp session kept on the loop; each
    reports when it started and ended (monotonic seconds), and the run which loop it used."""
    redis_client().incr(f"{key}:runs")
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
    _runs_on[loop] = _runs_on.get(loop, 0) + 1

    async def one() -> tuple[float, float, int]:
        started = time.monotonic()
        async with client.get(url) as response:
            await response.read()
            return started, time.monotonic(), response.status

    spans = await asyncio.gather(*(one() for _ in range(requests)))
    return {
        "last_start": max(s for s, _, _ in spans),
        "first_end": min(e for _, e, _ in spans),
        "statuses": sorted({code for _, _, code in spans}),
        "runs_on_this_loop": _runs_on[loop],
        "client_requests": _count(client, requests),
        "pid": os.getpid(),
    }


class Marked:
    """An async context manager that notes in Redis that its exit ran."""

    def __init__(self, key: str) -> None:
        self.key = key

    async def __aenter__(self) -> Marked:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        redis_client().set(f"{self.key}:aexit", kind.__name__ if kind else "none")


@platform_task(name="tests.async_soft_limited", overlap="skip", soft_time_limit=1, time_limit=20)
async def soft_limited(key: str) -> dict[str, Any]:
    redis_client().incr(f"{key}:runs")
    async with Marked(key):
        try:
            await asyncio.sleep(30)
        finally:
            redis_client().set(f"{key}:finally", "ran")
    return {}


def spin(seconds: float) -> None:
    """Hold the loop (CPU, no await) for `seconds`: where the soft limit's signal lands."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        pass


@platform_task(name="tests.async_soft_limited_elsewhere", soft_time_limit=1, time_limit=20)
async def soft_limited_elsewhere(key: str, where: str) -> dict[str, Any]:
    """The soft limit's signal lands outside the body's own frame: in one task of a gather
    (`where="gather"`), or in a loop callback (`where="callback"`). Each awaiting part notes
    in Redis that its `finally` ran."""
    redis_client().incr(f"{key}:runs")

    async def waits(name: str) -> None:
        try:
            await asyncio.sleep(30)
        finally:
            redis_client().sadd(f"{key}:finally", name)

    async def spins() -> None:
        try:
            spin(2.5)
            await asyncio.sleep(30)
        finally:
            redis_client().sadd(f"{key}:finally", "spinner")

    if where == "gather":
        await asyncio.gather(waits("waiter"), spins())
    else:
        asyncio.get_running_loop().call_soon(spin, 2.5)
        await waits("waiter")
    return {"ended": "normally"}


@platform_task(name="tests.async_leaves_a_task")
async def leaves_a_task(key: str) -> dict[str, Any]:
    """Starts a task it never awaits, which would mark `<key>:leftover` a second later."""

    async def later() -> None:
        await asyncio.sleep(1)
        redis_client().set(f"{key}:leftover", "ran")

    _kept.add(asyncio.get_running_loop().create_task(later()))
    return {}


_kept: set[asyncio.Task[None]] = set()  # a reference, as a fire-and-forget task's author keeps one


@platform_task(name="tests.async_sleeps")
async def sleeps(key: str, seconds: float) -> dict[str, Any]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@platform_task(name="tests.async_task_group_flaky", max_retries=3, retry_backoff=0.3, retry_jitter=False)
async def task_group_flaky(key: str, failures: int) -> dict[str, Any]:
    """Two calls in a TaskGroup that both fail with a ConnectionError `failures` times: the
    ExceptionGroup of transient errors is retried as one transient error is."""
    attempt = redis_client().incr(f"{key}:runs")

    async def call() -> None:
        await asyncio.sleep(0.01)
        if attempt <= failures:
            raise ConnectionError(f"attempt {attempt} failed")

    async with asyncio.TaskGroup() as group:
        group.create_task(call())
        group.create_task(call())
    return {"attempts": attempt}


@platform_task(name="tests.async_fails")
async def fails(key: str) -> dict[str, Any]:
    await asyncio.sleep(0.01)
    raise ValueError(f"async body failed for {key}")


@platform_task(name="tests.async_flaky", max_retries=3, retry_backoff=0.3, retry_jitter=False)
async def flaky(key: str, failures: int) -> dict[str, Any]:
    """Fails `failures` times with a ConnectionError (transient: the platform retries it)."""
    attempt = redis_client().incr(f"{key}:runs")
    await asyncio.sleep(0.01)
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} failed")
    return {"attempts": attempt}


@shared_task(name="tests.async_self_retry", base=PlatformTask, bind=True, max_retries=2)
async def self_retry(self: PlatformTask[Any, Any], key: str) -> dict[str, Any]:
    """Asks for one retry itself (`self.retry()`), then succeeds: `@shared_task(base=PlatformTask)`."""
    attempt = redis_client().incr(f"{key}:runs")
    await asyncio.sleep(0.01)
    if attempt == 1:
        raise self.retry(countdown=0.2)
    return {"attempts": attempt, "id": self.request.id}


@platform_task(name="tests.async_overlapping", overlap="skip", lock_ttl=3)
async def overlapping(key: str, until: str) -> dict[str, Any]:
    """Holds the schedule's overlap lock (renewed by its thread) until `until` is set in Redis."""
    redis_client().incr(f"{key}:runs")
    await areport_progress(10, "holding the lock", force=True)
    deadline = time.monotonic() + 60
    while not redis_client().exists(until) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return {"held": True}


@platform_task(name="tests.async_progress")
async def progress(key: str, reports: int = 50) -> dict[str, Any]:
    """Reports progress `reports` times in a tight loop (the throttle writes few), one
    forced at 50 %, then waits for the test to have seen it (`<key>:go`)."""
    written = sum([await areport_progress(n, f"step {n}") for n in range(reports)])
    await areport_progress(50, "half way", force=True)
    deadline = time.monotonic() + 60
    while not redis_client().exists(f"{key}:go") and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return {"written": written}


@platform_task(name="tests.async_orm")
async def orm(key: str) -> dict[str, Any]:
    """The async ORM and sync_to_async work; a sync ORM call from the loop is refused by Django."""
    fresh = await sync_to_async(lambda: connections["default"].connection is None)()  # none kept from a run before
    counted = await TaskResult.objects.filter(task_name="tests.async_orm").acount()
    through_thread = await sync_to_async(TaskResult.objects.filter(task_name="tests.async_orm").count)()
    try:
        TaskResult.objects.filter(task_name="tests.async_orm").count()
        refused = ""
    except Exception as exc:  # noqa: BLE001  (SynchronousOnlyOperation is what Django raises)
        refused = type(exc).__name__
    return {"acount": counted, "sync_to_async": through_thread, "sync_call": refused, "fresh_connection": fresh}
