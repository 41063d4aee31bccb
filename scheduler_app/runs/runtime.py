"""`PlatformTask`: the one base class that applies a run's policy on the worker.

- the run context (trigger, schedule, scheduled-for time, attempt and earlier attempts)
  travels in the `beatkeeper` message header and is stored with every state write
  through `request.meta` (TaskResult.meta);
- a fleet-wide rate of the task's starts (`rate="60/m"`, runs/rates.py): over it, WAITING;
- a slot of the run's concurrency pool (`pool="exports"`, runs/pools.py) while it runs:
  the pool full, WAITING in line (or SKIPPED, by the policy's `pool_full`);
- overlap `skip` / `wait` through the schedule's renewed Redis lock;
- retries with exponential backoff, jitter and a cap, keeping the run's identity;
- a result that is not JSON-serialisable fails the run with a clear error;
- `report_progress(percent, message)` makes a PROGRESS state visible while it runs
  (`await areport_progress(...)` from an `async def` body);
- an `async def` body runs on the worker process's own event loop (scheduler_app/runs/aio.py).
Time limits and expiry are Celery's own, set per message from the policy.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import inspect
import logging
import numbers
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

import redis
from celery import Task, current_task
from celery import states as celery_states
from celery.exceptions import Ignore, Retry
from celery.signals import task_postrun
from django.db import OperationalError
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.utils.json import dumps as json_dumps

from scheduler_app.runs import aio, locks, pools, rates, states
from scheduler_app.runs.context import HEADER
from scheduler_app.runs.policy import RunPolicy

if TYPE_CHECKING:
    from celery.local import Proxy

logger = logging.getLogger(__name__)
WAIT_POLL_SECONDS = 2.0
POOL_POLL_SECONDS = 1.0  # a run waiting for a pool's slot asks again this often
PROGRESS_MIN_INTERVAL = 0.5  # seconds between two progress writes of one run

# Failures worth another attempt: the database or broker was briefly unavailable. redis-py's
# and kombu's connection errors are not the builtin ones: a task's own Redis call during a
# Redis restart raises redis.ConnectionError.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,
    ConnectionError,
    TimeoutError,
    redis.ConnectionError,
    redis.TimeoutError,
    KombuOperationalError,
)
# A retry is sent while the broker may still be coming back: kombu tries for about 15 s
# (Celery's default publish policy gives up after about half a second, failing the run).
RETRY_SEND_POLICY = {"max_retries": 10, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}


class ResultNotSerializable(TypeError):
    pass


class UnknownPool(LookupError):
    """A run names a pool that does not exist: it fails rather than run unbounded."""


_P = ParamSpec("_P")
_R = TypeVar("_R")


class PlatformTask(Task[_P, _R]):  # generic like Celery's Task: the task function's parameters and result
    policy: RunPolicy = RunPolicy()
    retry_for: tuple[type[Exception], ...] = TRANSIENT_ERRORS

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Celery makes a subclass per task; refuse `autoretry_for` on an `async def` body,
        which Celery's synchronous wrapper would never see fail (use `retry_for=`)."""
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        body = getattr(run, "__func__", run)  # a staticmethod's function
        if callable(body) and inspect.iscoroutinefunction(inspect.unwrap(body)) and cls.__dict__.get("autoretry_for"):
            raise TypeError(
                f"{cls.__dict__.get('name') or cls.__name__}: autoretry_for does not apply to an async def body; "
                "give the exceptions as retry_for= (PlatformTask retries them with the schedule's policy)."
            )

    def run_header(self) -> dict[str, Any]:
        header = getattr(self.request, HEADER, None) or (self.request.headers or {}).get(HEADER)
        return dict(header or {})

    def effective_policy(self) -> RunPolicy:
        return self.policy.with_overrides(self.run_header().get("policy"))

    def lock_scope(self) -> str:
        return self.run_header().get("schedule") or getattr(self.request, "periodic_task_name", None) or self.name

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if not self.request.id:
            return super().__call__(*args, **kwargs)  # called directly: just call it (an async body: await it)
        if self.request.is_eager:
            return self._body(*args, **kwargs)  # run eagerly (apply): run it, to the end
        if getattr(self.request, "finished_before", False):
            logger.info("%s[%s] already finished; its redelivered message is acknowledged, not run", self.name,
                        self.request.id)  # fmt: skip
            raise Ignore()
        policy = self.effective_policy()
        if getattr(self.request, "revoked_while_queued", False):
            self._mark(celery_states.REVOKED, {"reason": "revoked before it started"})
            pools.leave_line(policy.pool, self.request.id)
            raise Ignore()
        # The pool's slot first: a run waiting in line does not spend the task's rate on each ask.
        with self._pool_slot(policy), self._overlap_guard(policy):
            try:
                result = self._body(*args, **kwargs)
            except self.retry_for as exc:
                raise self._retry_later(policy, exc) from exc
            except ExceptionGroup as group:  # a TaskGroup's (or gather's) errors: transient if each one is
                if group.split(self.retry_for)[1] is not None:
                    raise
                raise self._retry_later(policy, group) from group
        ensure_serializable(self.name, result)
        return result

    def _body(self, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """The task's function, run to its end: an `async def` body on the process's loop (aio)."""
        result = super().__call__(*args, **kwargs)
        if inspect.iscoroutine(result):
            return cast(_R, aio.run(result, self.name))
        return result

    @contextmanager
    def _pool_slot(self, policy: RunPolicy) -> Iterator[pools.PoolSlot | None]:
        """Hold a slot of the run's pool while it runs (given back when it ends or retries)."""
        if not policy.pool:
            self._rates(policy, None)
            yield None
            return
        spec = pools.definition_for_run(policy.pool)
        if spec is None:
            raise UnknownPool(f"{self.name}: no pool named {policy.pool!r}; create it (console: Pools, or "
                              "POST /api/pools/) or take the pool out of the task or the schedule")  # fmt: skip
        slot = pools.PoolSlot(spec, cast(str, self.request.id))
        admission = slot.acquire(policy.pool_full)
        if not admission.admitted:
            self._pool_full(policy, spec, admission)
        try:
            self._rates(policy, spec)
            yield slot
        finally:
            slot.release()

    def _rates(self, policy: RunPolicy, spec: pools.PoolSpec | None) -> None:
        """The task's rate, then its pool's: counted once the run may start (it holds its slot)."""
        if policy.rate:
            self._within_rate(policy.rate)
        if spec is not None and spec.rate:
            self._within_rate(spec.rate, scope=f"pool:{spec.name}", what=f"pool {spec.name}")

    def _pool_full(self, policy: RunPolicy, spec: pools.PoolSpec, admission: pools.Admission) -> None:
        in_use = f"{admission.in_use} of {spec.size} slots in use"
        if policy.pool_full == "skip":
            self._mark(states.SKIPPED, {"reason": f"pool {spec.name} is full ({in_use})", "pool": spec.name})
            raise Ignore()
        if admission.joined:  # the state once, as it comes to the line (the console reads the line live)
            self._mark(states.WAITING, {"reason": f"waiting for a slot of pool {spec.name} ({in_use})",
                                        "waiting_for": "pool", "pool": spec.name,
                                        "position": admission.position})  # fmt: skip
        try:
            self._requeue(countdown=POOL_POLL_SECONDS)
        except Exception:
            pools.leave_line(policy.pool, cast(str, self.request.id))  # it will not ask again
            raise
        raise Ignore()

    @contextmanager
    def _overlap_guard(self, policy: RunPolicy) -> Iterator[locks.OverlapLock | None]:
        if policy.overlap == "allow":
            yield None
            return
        run_id = cast(str, self.request.id)  # set: __call__ applies the policy only to a run with an id
        lock = locks.OverlapLock(self.lock_scope(), run_id, policy.lock_ttl)
        if not lock.acquire():
            self._not_now(policy, lock)
        locks.leave_waiting_slot(lock.scope, run_id, lock.client)
        try:
            yield lock
        except Retry as retry:  # ours or the task's own self.retry(): the same run comes back
            lock.keep_for(seconds_until(retry.when))
            raise
        except BaseException:
            lock.release()
            raise
        lock.release()

    def _not_now(self, policy: RunPolicy, lock: locks.OverlapLock) -> None:
        holder = lock.holder()
        run_id = cast(str, self.request.id)  # set: only reached from _overlap_guard, for a run with an id
        if policy.overlap == "wait" and locks.claim_waiting_slot(lock.scope, run_id, policy.lock_ttl * 2):
            self._mark(states.WAITING, {"reason": "waiting for the previous run to finish", "holder": holder})
            self._requeue(countdown=WAIT_POLL_SECONDS)
        else:
            reason = "the previous run still holds the lock" if policy.overlap == "skip" else "a run already waits"
            self._mark(states.SKIPPED, {"reason": reason, "holder": holder})
        raise Ignore()

    def _within_rate(self, rate: str, scope: str = "", what: str = "") -> None:
        """Count this start against a fleet-wide rate (the task's, or its pool's); over it, the
        run waits (WAITING, sent again for when a start is free) and leaves its worker process."""
        verdict = rates.hit(scope or self.name, rate)
        if verdict.admitted:
            return
        self._mark(states.WAITING, {"reason": f"over the fleet-wide rate {rate} of {what or self.name}",
                                    "waiting_for": "rate", "starts_in": round(verdict.retry_in, 3)})  # fmt: skip
        self._requeue(countdown=verdict.retry_in)
        raise Ignore()

    def _mark(self, state: str, result: dict[str, Any]) -> None:
        self.update_state(state=state, meta={**result, "at": timezone.now().isoformat()})

    def _requeue(self, countdown: float) -> None:
        """Send this run again, as `retry` would (same id, headers, queue, priority)."""
        self.signature_from_request(self.request).apply_async(countdown=countdown)

    def _retry_later(self, policy: RunPolicy, exc: Exception) -> Exception:
        retries = self.request.retries
        if retries >= policy.max_retries:
            return exc
        countdown = backoff(policy, retries)
        logger.warning("%s attempt %d failed (%r); retrying in %.1fs", self.name, retries + 1, exc, countdown)
        return self.retry(exc=exc, countdown=countdown, max_retries=policy.max_retries, retry=True,
                          retry_policy=RETRY_SEND_POLICY)  # fmt: skip


def backoff(policy: RunPolicy, retries: int) -> float:
    """Seconds before retry number `retries + 1`: doubling from retry_backoff, capped, and
    with jitter drawn from the upper half so that failed runs do not retry in step."""
    delay = min(policy.retry_backoff_max, policy.retry_backoff * 2**retries)
    return random.uniform(delay / 2, delay) if policy.retry_jitter else delay  # noqa: S311


def seconds_until(when: float | numbers.Real | dt.datetime | None) -> float:
    """A retry's delay: Celery's `Retry.when` is a countdown in seconds or an ETA."""
    if isinstance(when, dt.datetime):
        return max(0.0, (when - timezone.now()).total_seconds())
    return float(when or 0)


def ensure_serializable(task_name: str, result: Any) -> None:
    try:
        json_dumps(result)
    except (TypeError, ValueError) as exc:
        raise ResultNotSerializable(
            f"{task_name} returned a {type(result).__name__}, which cannot be stored as JSON ({exc}). "
            "Return a dict of plain values (str, int, float, bool, None, lists and dicts of them)."
        ) from None


_last_progress: dict[str, float] = {}


@task_postrun.connect
def forget_progress_throttle(task_id: str = "", **kwargs: Any) -> None:
    _last_progress.pop(task_id, None)


def report_progress(percent: float, message: str = "", *, force: bool = False) -> bool:
    """Record `{percent, message}` as the running task's PROGRESS state.

    Writes at most every PROGRESS_MIN_INTERVAL seconds per run (unless `force`), so a
    tight loop may call it freely. Returns whether it wrote. Outside a worker it does nothing.
    From an `async def` task, `await areport_progress(...)` does the same off the loop.
    """
    write = _progress_write(percent, message, force)
    if write is None:
        return False
    write()
    return True


async def areport_progress(percent: float, message: str = "", *, force: bool = False) -> bool:
    """`report_progress` for an `async def` task: the write runs in a thread, so a slow
    broker never blocks the task's event loop (its other awaits go on meanwhile)."""
    write = _progress_write(percent, message, force)
    if write is None:
        return False
    await asyncio.to_thread(write)
    return True


def _progress_write(percent: float, message: str, force: bool) -> Callable[[], None] | None:
    """The write of one progress report of the current run, or None when there is none to
    make (outside a worker, or throttled). The run's task and request are read here, in the
    run's own thread: another thread has no current task."""
    # celery-types declares current_task a Task; it is a Proxy of the current task, or of None.
    proxy = cast("Proxy[Task[Any, Any] | None]", current_task)
    task = proxy._get_current_object()  # the proxy itself is never None
    if task is None or not task.request.id or task.request.is_eager:
        return None
    run_id, request = task.request.id, task.request
    now = time.monotonic()
    if not force and now - _last_progress.get(run_id, 0.0) < PROGRESS_MIN_INTERVAL:
        return None
    _last_progress[run_id] = now
    meta = {"percent": max(0.0, min(100.0, float(percent))), "message": str(message)}
    return functools.partial(task.backend.store_result, run_id, meta, states.PROGRESS, request=request)
