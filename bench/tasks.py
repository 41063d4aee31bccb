"""Tasks of the benchmarks: trivial bodies, plain and platform (bench/platform_overhead.py,
bench/ledger.py), and an I/O-bound fan-out, async and sync (bench/async_tasks.py)."""

from __future__ import annotations

import asyncio
import weakref

import aiohttp
from celery import shared_task
from requests import Session

from bench.counting import count
from scheduler_app.catalog import platform_task


@shared_task(name="bench.plain")
def plain(n: int) -> dict[str, int]:
    return {"n": n}


@platform_task(name="bench.platform")
def platform(n: int) -> dict[str, int]:
    return {"n": n}


@platform_task(name="bench.platform_locked", overlap="skip")
def platform_locked(n: int) -> dict[str, int]:
    return {"n": n}


@platform_task(name="bench.platform_rated", rate="1000000/s")  # counted on every start, never reached
def platform_rated(n: int) -> dict[str, int]:
    return {"n": n}


@platform_task(name="bench.platform_pooled", pool="bench")  # a slot of a pool never full (bench/platform_overhead)
def platform_pooled(n: int) -> dict[str, int]:
    return {"n": n}


@shared_task(name="bench.counted")
def counted(n: int) -> dict[str, int]:
    count()
    return {"n": n}


@platform_task(name="bench.counted_platform")
def counted_platform(n: int) -> dict[str, int]:
    count()
    return {"n": n}


# bench/async_tasks.py: the same I/O-bound fan-out as an async task and done synchronously.
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()
_sync_session: list[Session] = []


@platform_task(name="bench.fan_out_async")
async def fan_out_async(url: str, requests: int) -> dict[str, int]:
    """`requests` GETs of `url` at once, through one aiohttp session kept on the worker's loop."""
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None:
        connector = aiohttp.TCPConnector(limit=0)  # no cap: every GET of the fan-out at once
        session = _sessions[loop] = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))

    async def get() -> int:
        async with session.get(url) as response:
            await response.read()
            return response.status

    statuses = await asyncio.gather(*(get() for _ in range(requests)))
    return {"ok": sum(status == 200 for status in statuses)}


@platform_task(name="bench.fan_out_sync")
def fan_out_sync(url: str, requests: int) -> dict[str, int]:
    """The same GETs one after the other, through one requests session kept in the process."""
    if not _sync_session:
        _sync_session.append(Session())
    return {"ok": sum(_sync_session[0].get(url, timeout=30).status_code == 200 for _ in range(requests))}


@platform_task(name="bench.empty_async")
async def empty_async(n: int) -> dict[str, int]:
    """Nothing to await: what running a body on the worker's loop costs per run."""
    return {"n": n}


@platform_task(name="bench.empty_sync")
def empty_sync(n: int) -> dict[str, int]:
    return {"n": n}
