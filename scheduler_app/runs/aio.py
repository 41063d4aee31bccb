"""`async def` task bodies on a Celery worker: one event loop per worker process (per
thread, under `--pool threads`), kept across runs, so that what a task keeps on the loop
(an httpx.AsyncClient, an asyncpg pool) lives on between runs.

Celery calls a task's function and gets a coroutine; `PlatformTask` hands it to `run`,
which runs it to the end on the loop. Every policy applies as to a synchronous body,
because the coroutine runs inside `PlatformTask.__call__`: the overlap lock (renewed by its
own thread), retries (an exception raised by the coroutine is raised by `run`), expiry and
revoke (Celery's own). A soft time limit (billiard's SIGUSR1) cancels the coroutine while
it awaits, so its `finally` blocks and `async with` exits run before `run` raises
`SoftTimeLimitExceeded`; in the body's own code between awaits, it is raised there, as for
a synchronous body (`SoftLimit`). What a run leaves on the loop (a fire-and-forget task,
the rest of a failed gather) is cancelled when it ends, as asyncio.run does.

Django's async rules hold: while the loop runs, the thread counts as async, so a sync ORM
call raises SynchronousOnlyOperation; use the async ORM (`await Model.objects.aget(...)`)
or `sync_to_async`. The connections those open (in asgiref's thread) are closed after
each run, as Celery's Django fix-up does for a synchronous body's.

Under the gevent and eventlet pools an asyncio loop would block the pool's hub: an async
task refuses to run there, with a message saying which pools it runs on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_shutdown
from django.db import close_old_connections

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
GREEN_POOLS = ("gevent", "eventlet")
SOFT_LIMIT_SIGNAL = getattr(signal, "SIGUSR1", None)  # billiard's soft time limit signal


class AsyncNotSupported(RuntimeError):
    pass


class _Loops(threading.local):
    loop: asyncio.AbstractEventLoop | None = None
    pid: int = 0


_loops = _Loops()


def process_loop() -> asyncio.AbstractEventLoop:
    """This process's (this thread's) loop, made on first use; a forked child makes its own.
    It is also the thread's current loop, as under asyncio.run."""
    loop = _loops.loop
    if loop is None or loop.is_closed() or _loops.pid != os.getpid():
        loop = asyncio.new_event_loop()
        _loops.loop, _loops.pid = loop, os.getpid()
        asyncio.set_event_loop(loop)
    return loop


def run(coroutine: Coroutine[Any, Any, _T], name: str) -> _T:
    """Run a task body's coroutine to its end on the process's loop and return its result
    (or raise its exception). Called with a loop already running in this thread (an eager
    call from async code), it refuses: that loop would have to be blocked."""
    green = green_pool()
    if green:
        coroutine.close()
        raise AsyncNotSupported(
            f"{name} is an async task, and this worker runs the {green} pool, whose hub an asyncio loop would "
            "block. Run async tasks on a prefork, threads or solo worker (celery worker --pool prefork)."
        )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coroutine.close()
        raise AsyncNotSupported(f"{name} is an async task: await it (or send it) instead of running it eagerly here")
    loop = process_loop()
    task = loop.create_task(_tidied(coroutine), name=name)
    limit = SoftLimit(loop, task)
    try:
        with limit.handled():
            try:
                result = loop.run_until_complete(task)
            except BaseException:
                if not task.done():  # raised into the loop itself (a signal): end the body cleanly
                    task.cancel()
                    _finish(loop, task)
                raise
            finally:
                _cancel_leftovers(loop, name)
    except asyncio.CancelledError:
        if limit.reached:
            raise SoftTimeLimitExceeded() from None
        raise
    if limit.reached:  # the body caught its cancellation and returned: the limit was reached all the same
        raise SoftTimeLimitExceeded()
    return result


class SoftLimit:
    """While a run's coroutine runs in the main thread, Celery's soft time limit signal
    (SIGUSR1, from the prefork pool) cancels the coroutine instead of raising into whatever
    frame runs: raised into a loop callback, asyncio would only log it; into one task of a
    gather, the others would go on. Raised in the body's own code (a CPU-bound stretch, no
    await to cancel at), it is raised there, as for a synchronous body."""

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        self.loop, self.task, self.reached = loop, task, False

    @contextmanager
    def handled(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread() or SOFT_LIMIT_SIGNAL is None:
            yield  # signals reach the main thread only (the threads pool has no soft limit)
            return
        previous = signal.getsignal(SOFT_LIMIT_SIGNAL)
        if not callable(previous):
            yield  # no soft limit handler installed (solo pool, an eager call)
            return
        signal.signal(SOFT_LIMIT_SIGNAL, self.on_signal)
        try:
            yield
        finally:
            signal.signal(SOFT_LIMIT_SIGNAL, previous)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if asyncio.current_task(self.loop) is self.task and not self.task.cancelling():
            raise SoftTimeLimitExceeded()  # in the body's own code: raised there, it may catch it, as a sync body may
        self.reached = True  # the run ends with SoftTimeLimitExceeded, whatever the cancelled body returns
        self.task.cancel()
        self.loop.call_soon_threadsafe(lambda: None)  # wake the loop if it waits in select()


def _finish(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    """Run a cancelled task until its `finally` blocks and `async with` exits are done."""
    try:
        loop.run_until_complete(task)
    except BaseException:  # noqa: BLE001, S110  (its cancellation, or what its cleanup raised: the first error is the one to report)
        pass


def _cancel_leftovers(loop: asyncio.AbstractEventLoop, name: str) -> None:
    """Cancel what a run left on the loop (a fire-and-forget task, the rest of a failed
    gather), as asyncio.run does: kept, it would run during the next run, under its limits."""
    left = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not left:
        return
    logger.warning("%s left %d task(s) running on the loop; cancelling them", name, len(left))
    for leftover in left:
        leftover.cancel()
    try:
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
    except BaseException as exc:  # noqa: BLE001  (a signal while they end: the run's own outcome stands)
        logger.warning("cancelling what %s left on the loop: %r", name, exc)


async def _tidied(coroutine: Coroutine[Any, Any, _T]) -> _T:
    close = sync_to_async(close_old_connections)  # the async ORM's connections, in asgiref's thread
    await close()  # as Celery's Django fix-up does before and after a synchronous body
    try:
        return await coroutine
    finally:
        await close()


def green_pool() -> str:
    """ "gevent" or "eventlet" when this worker runs a green pool (it patched the standard
    library on start-up), else ""."""
    for pool in GREEN_POOLS:
        module = sys.modules.get(pool)
        if module is None:
            continue
        if pool == "gevent":
            monkey = sys.modules.get("gevent.monkey")
            if monkey is not None and monkey.is_module_patched("socket"):
                return pool
        elif getattr(sys.modules.get("eventlet.patcher"), "already_patched", {}):
            return pool
    return ""


@worker_process_shutdown.connect
def close_process_loop(**kwargs: Any) -> None:
    """On a pool process's exit: finish the loop's async generators and close it."""
    loop = _loops.loop
    if loop is None or loop.is_closed() or _loops.pid != os.getpid():
        return
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    except Exception as exc:  # noqa: BLE001  (a process on its way out: say so, do not stop the exit)
        logger.warning("closing the async task loop: %s", exc)
    finally:
        loop.close()
