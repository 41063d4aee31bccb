"""A poison message never crash-loops a worker: it is set aside in the dead letters.

Two kinds, both caught in the worker's main process by `PoisonGuard`, a consumer bootstep
(registered in project/celery.py), so every task is covered: platform tasks, plain
`shared_task`s, and messages from any sender.

- **A message the worker cannot hand to its pool, or cannot read** (Celery raises in the main
  process: arguments nested too deep to pickle for the pool child, a header that breaks the
  request). Celery would let the exception stop the worker (`Unrecoverable error`) with the
  message unacknowledged, so that every worker after it died on it too. The guard wraps the
  hand-off to the pool (the worker's `_process_task`, which Celery calls for every run, at
  once or after an ETA, a rate limit or a free pool slot) and every task's strategy.
- **A message that kills its process** (a pool child killed by the OOM killer, a segfault,
  `os._exit`; or the whole worker). With late acknowledgement it comes back each time. The
  broker marks a message it puts back as redelivered; the guard counts the hand-offs of a
  redelivered message in Redis (`bk:deliveries:<delivery tag>`, kept WORKER_DELIVERY_TTL) just
  before it goes to the pool, and once it would be handed off for the
  (WORKER_MAX_DELIVERIES + 1)th time, sets it aside instead. The first delivery costs
  nothing: only a redelivered message is counted (its first delivery counts as one).
  The delivery tag is the publish: a Celery retry, an overlap `wait` poll or a console
  retry is a new message with a count of its own; a requeue after a killed child, a
  worker's visibility-timeout redelivery and a restored message keep theirs.

Setting aside: the whole message goes to the dead letters (runs/dead_letters.py), its run gets
a FAILURE through the result backend (the recorder writes the row) that says why and keeps
the run's context, and only then is the message acknowledged. If Redis cannot take the dead
letter, the message goes back to its queue and the worker goes on.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable
from typing import Any

import redis
from celery import bootsteps
from celery import states as celery_states
from celery.app.task import Context
from celery.exceptions import InvalidTaskError, NotRegistered
from celery.worker import state as worker_state
from django.conf import settings
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.exceptions import OperationalError as KombuOperationalError

from scheduler_app.runs import dead_letters, history, ledger
from scheduler_app.runs.context import context_of, header_of
from scheduler_app.runs.dead_letters import DeadLetter

logger = logging.getLogger(__name__)
DELIVERIES_KEY = "bk:deliveries:"
PASSING = (ConnectionError, TimeoutError, redis.ConnectionError, redis.TimeoutError, KombuOperationalError)
CELERY_HANDLES = (InvalidTaskError, ContentDisallowed, DecodeError)  # Celery rejects these itself, and logs them


class SetAside(Exception):  # noqa: N818  (the run's error type, as the console shows it)
    """The run's error: its message was set aside in the dead letters instead of being run."""


def max_deliveries() -> int:
    return int(settings.WORKER_MAX_DELIVERIES)


def delivery_key(message: Any) -> str:
    tag = getattr(message, "delivery_tag", None)
    if tag:
        return f"{DELIVERIES_KEY}{tag}"
    headers = message.headers or {}
    return f"{DELIVERIES_KEY}{headers.get('id')}:{headers.get('retries', 0)}"


def count_delivery(message: Any, client: redis.Redis) -> int:
    """This hand-off's number: 1 for a message delivered once, counted in Redis after that."""
    if not (message.delivery_info or {}).get("redelivered"):
        return 1
    key = delivery_key(message)
    pipe = client.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, int(settings.WORKER_DELIVERY_TTL))
    counted, _ = pipe.execute()
    return int(counted) + 1


def _text(body: Any) -> str:
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body).decode("utf-8", errors="replace")
    return body if isinstance(body, str) else repr(body)


def _plain(value: Any) -> dict[str, Any]:
    """A JSON-safe copy of a message's headers or properties (what cannot be, as text)."""
    try:
        return dict(json.loads(json.dumps(dict(value or {}), default=str)))
    except (RecursionError, TypeError, ValueError) as exc:
        return {"unreadable": f"{type(exc).__name__}: {exc}", "repr": repr(value)[:4000]}


def letter_of(message: Any, reason: str, worker: str, deliveries: int) -> DeadLetter:
    headers = _plain(message.headers)
    properties = _plain({key: value for key, value in (message.properties or {}).items() if key != "delivery_info"})
    info = message.delivery_info or {}
    delivery = _plain({key: info.get(key) for key in ("exchange", "routing_key", "redelivered")})
    return DeadLetter(
        task=str(headers.get("task") or "?"),
        task_id=str(headers.get("id") or ""),
        reason=reason,
        worker=worker,
        deliveries=deliveries,
        body=_text(message.body),
        content_type=str(message.content_type or ""),
        content_encoding=str(message.content_encoding or ""),
        headers=headers,
        properties=properties,
        delivery=delivery,
    )


def failure_context(message: Any, worker: str, letter: DeadLetter, client: redis.Redis) -> Context:
    """The run's request for its FAILURE write: its context from the header, its attempt
    after those recorded, and the dead letter it became."""
    headers = dict(message.headers or {})
    # What django-celery-results records as the run's name and schedule (its extended columns).
    schedule = headers.get("periodic_task_name") or header_of(Context(headers)).get("schedule")
    properties = {**(message.properties or {}), "periodic_task_name": schedule}
    request = Context({**headers, "hostname": worker, "delivery_info": message.delivery_info, "args": None,
                       "kwargs": None, "task_name": headers.get("task"), "properties": properties})  # fmt: skip
    retries = letter.retries
    try:
        found = ledger.latest(letter.task_id, client) if letter.task_id else None
    except redis.RedisError:
        found = None
    again = retries > 0 or bool((message.delivery_info or {}).get("redelivered"))
    attempts = history.earlier_attempts(found.as_row()) if found is not None and again else []
    if found is not None and found.status == celery_states.PENDING:
        attempts = []
    meta = {
        **context_of(header_of(request), request),
        "attempt": max(len(attempts) + 1, retries + 1),
        "attempts": attempts,
        "dead_letter": letter.id,
    }
    request.update(meta=meta)  # what LedgerBackend stores as the run's meta
    return request


class Guard:
    """What the bootstep installs on one consumer."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.client = dead_letters.client()

    @property
    def worker(self) -> str:
        return str(self.consumer.hostname)

    # --- the hand-off to the pool ------------------------------------------------------

    def hand_off(self, process_task: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def guarded(request: Any) -> Any:
            try:
                deliveries = count_delivery(request.message, self.client)
            except redis.RedisError as exc:
                logger.warning("%s[%s]: its deliveries were not counted (%s)", request.name, request.id, exc)
                deliveries = 1
            if deliveries > max_deliveries():
                self.free_pool_slot(request)  # taken for this hand-off, which does not happen
                if self.finished_before(request):
                    return None
                reason = (f"set aside: handed to a worker process {deliveries - 1} times without finishing "
                          f"(WORKER_MAX_DELIVERIES={max_deliveries()}): its process was lost each time "
                          "(killed, crashed or out of memory)")  # fmt: skip
                return self.set_aside_request(request, reason, deliveries)
            try:
                return process_task(request)
            except Exception as exc:  # noqa: BLE001  (any of them would stop the worker: set the message aside)
                if self.passing(exc):
                    raise  # the connection or the pool, not the message: Celery reconnects or stops
                self.free_pool_slot(request)
                reason = f"set aside: the worker could not hand it to a process: {type(exc).__name__}: {exc}"
                return self.set_aside_request(request, reason, deliveries, exc)

        return guarded

    def passing(self, exc: Exception) -> bool:
        """A fault of the moment, not of the message: the broker's connection (Celery's consumer
        reconnects and the message is delivered again), Redis, or a pool that is stopping."""
        # Named, not the transport's `connection_errors`: kombu's Redis transport counts KeyError
        # among them, which a message without an `id` header raises (that one is poison).
        return isinstance(exc, PASSING) or (isinstance(exc, ValueError) and "Pool not running" in str(exc))

    def free_pool_slot(self, request: Any) -> None:
        """What a hand-off that failed half-way leaves: the pool's record of a job it will never
        run, and (when the worker guards hand-offs with its semaphore) the slot it took,
        which the pool would have given back when the job ended."""
        pool = getattr(getattr(self.consumer, "pool", None), "_pool", None)
        cache = getattr(pool, "_cache", None)
        if isinstance(cache, dict):
            for job, result in list(cache.items()):
                if getattr(result, "correlation_id", None) == request.id and not result.ready():
                    cache.pop(job, None)
        controller = self.consumer.controller
        sem_path = getattr(type(controller), "_process_task_sem", None)
        if sem_path is not None and getattr(controller.process_task, "__func__", None) is sem_path:
            controller._quick_release()

    def finished_before(self, request: Any) -> bool:
        """A redelivered message of a run that finished (its acknowledgement was lost): only
        acknowledged, as PlatformTask would (runtime.py)."""
        try:
            found = ledger.latest(request.id, self.client)
        except redis.RedisError:
            return False
        if found is None or found.status not in history.FINISHED:
            return False
        logger.info("%s[%s] already finished; its redelivered message is acknowledged", request.name, request.id)
        worker_state.task_ready(request)
        request.acknowledge()
        return True

    def set_aside_request(self, request: Any, reason: str, deliveries: int, exc: BaseException | None = None) -> None:
        worker_state.task_ready(request)
        if self.set_aside(request.message, reason, deliveries, exc):
            request.acknowledge()
        else:  # not kept: back to its queue, for a worker to try when Redis takes it
            request.reject(requeue=True)

    # --- reading the message -----------------------------------------------------------

    def strategy(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kwargs: Any) -> Any:
            try:
                return handler(message, body, ack, reject, callbacks, **kwargs)
            except CELERY_HANDLES:
                raise
            except Exception as exc:  # noqa: BLE001  (any of them would stop the worker: set the message aside)
                if self.passing(exc):
                    raise
                reason = f"set aside: the worker could not read it: {type(exc).__name__}: {exc}"
                if self.set_aside(message, reason, 1, exc):
                    message.ack_log_error(logger, self.consumer.connection_errors)
                else:
                    message.reject_log_error(logger, self.consumer.connection_errors, requeue=True)
                return None

        return guarded

    def unknown_task(self, on_unknown: Callable[..., Any]) -> Callable[..., Any]:
        """Celery records an unregistered task FAILURE and drops its message: kept here too.
        Celery's FAILURE is written from a bare request (no header, no name, no schedule), so
        the run's FAILURE is written first from the message, keeping its context; Celery's
        then ranks as the same end and is dropped (runs/ledger.py)."""

        def guarded(body: Any, message: Any, exc: BaseException) -> Any:
            name = (message.headers or {}).get("task")
            reason = f"set aside: no task named {name!r} is registered on worker {self.worker}"
            letter = letter_of(message, reason, self.worker, 1)
            try:
                dead_letters.add(letter, self.client)
            except redis.RedisError as error:
                logger.error("%s could not be kept in the dead letters (%s)", name, error)
            if letter.task_id:
                self.record_failure(message, letter, None, NotRegistered(name))
            return on_unknown(body, message, exc)

        return guarded

    # --- setting aside -----------------------------------------------------------------

    def set_aside(self, message: Any, reason: str, deliveries: int, exc: BaseException | None = None) -> bool:
        """Keep the message in the dead letters and fail its run; False if Redis refused."""
        letter = letter_of(message, reason, self.worker, deliveries)
        try:
            dead_letters.add(letter, self.client)
        except redis.RedisError as error:
            logger.error("%s[%s]: %s; not kept in the dead letters (%s): left for redelivery",
                         letter.task, letter.task_id, reason, error)  # fmt: skip
            return False
        logger.error("%s[%s] %s (dead letter %s)", letter.task, letter.task_id, reason, letter.id)
        if letter.task_id:
            self.record_failure(message, letter, exc)
        return True

    def record_failure(self, message: Any, letter: DeadLetter, exc: BaseException | None,
                       cause: Exception | None = None) -> None:  # fmt: skip
        """The run's FAILURE, with its context: `cause` (by default SetAside with the reason)."""
        tb = "".join(traceback.format_exception(exc)) if exc is not None else None
        try:
            request = failure_context(message, self.worker, letter, self.client)
            backend = self.consumer.app.backend
            backend.mark_as_failure(letter.task_id, cause or SetAside(letter.reason), traceback=tb, request=request,
                                    call_errbacks=False)  # fmt: skip
        except Exception as error:  # noqa: BLE001  (the letter is kept; the run's row is what is lost)
            logger.error("%s[%s]: its FAILURE was not recorded (%r)", letter.task, letter.task_id, error)


class PoisonGuard(bootsteps.StartStopStep):
    """Consumer bootstep: wraps the hand-off to the pool before the task strategies are made
    (they keep a reference to it), and each strategy once they are (at every connection)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.guard = Guard(c)
        controller = c.controller
        original = c.on_task_request
        if controller is not None and hasattr(controller, "_process_task"):
            inner = controller._process_task
            controller._process_task = self.guard.hand_off(inner)  # what the pool semaphore calls back
            if original == inner:  # the consumer calls it directly (no semaphore)
                c.on_task_request = controller._process_task
        else:
            c.on_task_request = self.guard.hand_off(original)
        c.on_unknown_task = self.guard.unknown_task(c.on_unknown_task)

    def start(self, c: Any) -> None:
        for name, strategy in list(c.strategies.items()):
            c.strategies[name] = self.guard.strategy(strategy)
