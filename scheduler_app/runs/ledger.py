"""The run ledger's fast side: every state change goes to Redis, and the recorder writes it
to `TaskResult` in batches (scheduler_app/runs/recorder.py).

`LedgerBackend` is the result backend (`CELERY_RESULT_BACKEND`). It computes each state
write exactly as django-celery-results' database backend would (the same columns, the same
encodings, `request.meta` as the row's meta), but instead of a database commit on the run's
path it makes one Redis call: a script that keeps the run's latest state in a hash
(`bk:run:<id>`, what `AsyncResult`, the run page and the API read while the row is not yet
written) and appends the change to the stream `bk:ledger`, which the recorder drains.

Order between writes is a rank: (attempt, phase), phase PENDING < STARTED or WAITING <
PROGRESS < a final state of the attempt. A write ranked below the run's current one is
dropped (a late STARTED never overwrites SUCCESS); of two final states of one attempt the
first stays (the worker's main process cannot turn a SUCCESS into RETRY after a lost
connection), unless the second says more of the same end (the platform's EXPIRED or
REVOKED with its reason, after Celery's bare REVOKED); a non-final state replaces one of
its rank (PROGRESS after PROGRESS, STARTED again after WAITING). The recorder applies the same rule
against the row, so rows written by others (the console's PENDING and REVOKED) hold too.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from celery import states as celery_states
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone
from django_celery_results.backends.database import DatabaseBackend
from django_celery_results.models import TaskResult

from scheduler_app.connection import shared_client
from scheduler_app.runs import state_history, states
from scheduler_app.runs.context import context_of, header_of

logger = logging.getLogger(__name__)
_Row = TypeVar("_Row", bound=TaskResult)
STREAM = "bk:ledger"
DEAD = "bk:ledger:dead"  # events the recorder could not write, kept for an operator
RUN_KEY = "bk:run:"
COLUMNS = (
    "status", "result", "traceback", "meta", "content_type", "content_encoding",
    "task_name", "task_args", "task_kwargs", "worker", "periodic_task_name",
)  # fmt: skip
IDENTITY = ("task_name", "task_args", "task_kwargs", "worker", "periodic_task_name")  # kept when a write lacks them
# WAITING ranks with STARTED: a run waiting for the lock was STARTED first, and starts again.
PHASES = {celery_states.PENDING: 0, celery_states.RECEIVED: 1, states.WAITING: 3, celery_states.STARTED: 3,
          states.PROGRESS: 4}  # fmt: skip
FINAL_PHASE = 5  # SUCCESS, FAILURE, RETRY, REVOKED, SKIPPED, EXPIRED, IGNORED: the attempt ended

# KEYS: the run's hash, the stream. ARGV: rank, "1" final / "0" not / "r" refines (see
# newer()), the event, date_started ("" if this write does not start the attempt), the
# hash's lifetime, the state. Answers the stream entry's id (kept in the hash as `entry`),
# or 0 when the write does not replace what the run already has.
_STORE = """
local current = redis.call('HMGET', KEYS[1], 'rank', 'status')
if current[1] then
  local have, new = tonumber(current[1]), tonumber(ARGV[1])
  if new < have then return 0 end
  if new == have then
    if ARGV[2] == '1' then return 0 end
    if ARGV[2] == 'r' and current[2] ~= 'REVOKED' and current[2] ~= 'RETRY' then return 0 end
  end
end
redis.call('HSET', KEYS[1], 'rank', ARGV[1], 'status', ARGV[6], 'event', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'started', ARGV[4]) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
local entry = redis.call('XADD', KEYS[2], '*', 'e', ARGV[3])
redis.call('HSET', KEYS[1], 'entry', entry)
return entry
"""


def phase_of(status: str) -> int:
    return PHASES.get(status, FINAL_PHASE)


def attempt_number(attempt: Any) -> int:
    """A stored attempt as a number (1 when missing or not a number)."""
    try:
        return max(0, int(attempt or 1))
    except (TypeError, ValueError):
        return 1


def rank_of(status: str, attempt: Any) -> int:
    return attempt_number(attempt) * 10 + phase_of(status)


def attempt_of(rank: int) -> int:
    return rank // 10


REFINABLE = frozenset({celery_states.REVOKED, celery_states.RETRY})  # what a refining write may replace


def newer(rank: int, final: bool, than: int, *, refines: bool = False, current: str | None = None) -> bool:
    """Whether a write of `rank` replaces a run whose current rank is `than` (and state
    `current`): a higher rank does; of one rank, a non-final state does, a final one does not,
    unless it refines a REVOKED or RETRY of that attempt (never a SUCCESS or FAILURE)."""
    if rank != than:
        return rank > than
    if refines:
        return current in REFINABLE
    return not final


def attempt_in(meta: Any) -> Any:
    try:
        value = json.loads(meta or "{}") if isinstance(meta, str | bytes) else meta
    except ValueError:
        return 1
    return value.get("attempt", 1) if isinstance(value, dict) else 1


@dataclass(frozen=True)
class Latest:
    """A run's latest state on the fast side: the row it will be, before it is written."""

    task_id: str
    columns: dict[str, Any]
    date_started: dt.datetime | None
    date_done: dt.datetime | None
    rank: int
    refines: bool = False

    @property
    def status(self) -> str:
        return str(self.columns.get("status") or celery_states.PENDING)

    def as_row(self, model: type[_Row] = TaskResult) -> _Row:  # type: ignore[assignment]  # the default is the base
        """The row this state will be written as (unsaved), for code that reads rows."""
        columns = {key: self.columns.get(key) for key in COLUMNS}
        return model(task_id=self.task_id, date_started=self.date_started, date_done=self.date_done, **columns)

    def context(self) -> dict[str, Any]:
        try:
            meta = json.loads(self.columns.get("meta") or "{}")
        except ValueError:
            return {}
        return {key: value for key, value in meta.items() if key != "children"} if isinstance(meta, dict) else {}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None


def latest(task_id: str, client: redis.Redis | None = None) -> Latest | None:
    """The run's state on the fast side, if it has one (a recent run, or one not yet written)."""
    found = (client or shared_client()).hgetall(RUN_KEY + task_id)
    if not found:
        return None
    fields = {_text(key): _text(value) for key, value in found.items()}
    try:
        event = json.loads(fields.get("event", "{}"))
    except ValueError:
        return None
    started = _parse_time(fields.get("started"))
    return Latest(task_id, event.get("columns", {}), started, _parse_time(event.get("at")), int(fields.get("rank", 0)),
                  bool(event.get("refines")))  # fmt: skip


def event_lifetime() -> int:
    """Seconds a run's fast-side state lives unwritten: long enough for any database outage."""
    return int(settings.LEDGER_UNRECORDED_TTL)


def recorded_lifetime() -> int:
    """Seconds a run's fast-side state stays once its row is written (retries and
    redeliveries within it read Redis, not the database)."""
    return int(settings.LEDGER_RECORDED_TTL)


class _Held:
    """STARTED writes held back for LEDGER_STARTED_DELAY: a run that ends (or reports
    progress) within it writes once, its final state carrying its start; a longer run's
    STARTED is sent by a thread of the worker process when the delay is up."""

    def __init__(self) -> None:
        self.pid = 0
        self.lock = threading.Lock()
        self.pending: dict[str, tuple[float, Callable[[], None]]] = {}

    def hold(self, task_id: str, send: Callable[[], None], delay: float) -> None:
        if self.pid != os.getpid():
            with _HELD_START:
                if self.pid != os.getpid():  # first use in this (forked) process: its own thread
                    self.lock, self.pending = threading.Lock(), {}
                    threading.Thread(target=self._run, args=(delay,), name="ledger-started", daemon=True).start()
                    self.pid = os.getpid()
        with self.lock:
            self.pending[task_id] = (time.monotonic() + delay, send)

    def drop(self, task_id: str) -> None:
        if self.pending:
            with self.lock:
                self.pending.pop(task_id, None)

    def _run(self, delay: float) -> None:
        while True:
            time.sleep(delay / 4)
            now = time.monotonic()
            with self.lock:
                due = [key for key, (at, _) in self.pending.items() if at <= now]
                sends = [self.pending.pop(key)[1] for key in due]
            for send in sends:
                try:
                    send()
                except redis.RedisError as exc:
                    logger.warning("a run's STARTED state was not sent (%s); its end will carry its start", exc)


_HELD_START = threading.Lock()
_held = _Held()


class LedgerBackend(DatabaseBackend):
    """django-celery-results' backend with the database taken off the run's path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._script: Any = None

    def _store_result(self, task_id: str, result: Any, status: str, traceback: str | None = None,
                      request: Any = None, using: str | None = None) -> Any:  # fmt: skip
        if request is not None and getattr(request, "finished_before", False):
            return result  # a finished run's redelivered message: acknowledged, nothing to record
        client = shared_client()
        content_type, content_encoding, encoded = self.encode_content(result)
        context = dict(getattr(request, "meta", None) or {}) if request is not None else {}
        if not context:  # written by a process that did not run it (the worker's main process, the console)
            context = self._context_elsewhere(task_id, request, client)
        retries = getattr(request, "retries", None)
        if isinstance(retries, int) and retries > 0:  # a retry's states rank in its own attempt, whoever writes them
            context["attempt"] = max(attempt_number(context.get("attempt")), retries + 1)
        meta = {**context, "children": self.current_task_children(request)}
        extended = getattr(request, "bk_extended", None) if request is not None else None
        if extended is None:  # name, arguments and worker: encoded once per run, not per state
            extended = self._get_extended_properties(request, None)
            if request is not None:
                request.bk_extended = extended
        now = timezone.now()
        columns = {
            "status": status,
            "result": encoded,
            "traceback": traceback,
            "meta": self.encode_content(meta)[2],
            "content_type": content_type,
            "content_encoding": content_encoding,
            **{key: extended.get(key) for key in IDENTITY},
        }
        started = ""
        if status == celery_states.STARTED:
            started = now.isoformat()
            if request is not None:
                request.bk_started = started
        elif request is not None:
            started = getattr(request, "bk_started", "") or ""
        refines = bool(request is not None and getattr(request, "bk_refines", False))
        rank = rank_of(status, context.get("attempt"))
        event = json.dumps(
            {
                "id": task_id,
                "at": now.isoformat(),
                "started": started or None,
                "refines": refines,
                "rank": rank,
                "columns": columns,
            }  # fmt: skip
        )
        final = ("r" if refines else "1") if phase_of(status) == FINAL_PHASE else "0"
        if self._script is None or self._script.registered_client is not client:
            self._script = client.register_script(_STORE)
        script, args = self._script, [rank, final, event, started, event_lifetime(), status]

        def send() -> None:
            script(keys=[RUN_KEY + task_id, STREAM], args=args)

        delay = float(settings.LEDGER_STARTED_DELAY)
        if status == celery_states.STARTED and delay > 0 and request is not None:
            _held.hold(task_id, send, delay)  # a run that ends within the delay is one write
        else:
            _held.drop(task_id)  # this state says more than a STARTED held back, and carries its start
            send()
        return result

    def _context_elsewhere(self, task_id: str, request: Any, client: redis.Redis) -> dict[str, Any]:
        """The run's context for a write from a process that did not run it: what the run
        already has, else what its message header says."""
        found = latest(task_id, client)
        context = found.context() if found is not None else {}
        if not context:
            context = context_of(header_of(request), request) if request is not None else {}
        return context

    def meta_from_decoded(self, meta: dict[str, Any]) -> dict[str, Any]:
        """A REVOKED run's result is the platform's `{"reason", ...}`, not an exception: read it
        as Celery's TaskRevokedError with that reason instead of failing to."""
        result = meta.get("result")
        if meta.get("status") in self.EXCEPTION_STATES and isinstance(result, dict) and "exc_type" not in result:
            revoked = meta.get("status") == celery_states.REVOKED
            meta = {
                **meta,
                "result": {
                    "exc_type": "TaskRevokedError" if revoked else "Exception",
                    "exc_module": "celery.exceptions" if revoked else "builtins",
                    "exc_message": [str(result.get("reason") or json.dumps(result))],
                },
            }
        return dict(super().meta_from_decoded(meta))

    def mark_as_retry(self, task_id: str, exc: Exception, traceback: str | None = None, request: Any = None,
                      store_result: bool = True, state: str = celery_states.RETRY) -> None:  # fmt: skip
        """The worker's main process marks the runs it held as RETRY after a lost connection;
        with Redis still away that write fails, and Celery would then record the run REVOKED
        and acknowledge it. Logged instead: the message stays, and is delivered again."""
        try:
            super().mark_as_retry(task_id, exc, traceback, request=request, store_result=store_result, state=state)
        except redis.RedisError as error:
            logger.warning("run %s: its RETRY was not written (%s); its message is delivered again", task_id, error)

    def _forget(self, task_id: str) -> None:
        shared_client().delete(RUN_KEY + task_id)
        super()._forget(task_id)

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        """The fast side first (a run not yet written, or just written), then the row."""
        found = latest(task_id)
        if found is not None:
            columns = found.columns
            meta: dict[str, Any] = {
                "task_id": task_id,
                "status": found.status,
                "result": self.decode_content(found.as_row(), columns.get("result")),
                "traceback": columns.get("traceback"),
                "date_done": found.date_done,
                "children": [],
                "name": columns.get("task_name"),
                "worker": columns.get("worker"),
            }
            return dict(self.meta_from_decoded(meta))
        try:
            return dict(super()._get_task_meta_for(task_id))
        except DatabaseError:  # the database is away: the run is not known here yet
            return {"status": celery_states.PENDING, "result": None, "task_id": task_id}


def fresh(row: _Row) -> _Row:
    """The row with the run's newer state from Redis laid over it (a running run's
    progress, a finish the recorder has not written yet); the row itself otherwise."""
    try:
        found = latest(row.task_id)
    except redis.RedisError:
        return row
    if found is None:
        return row
    final = phase_of(found.status) == FINAL_PHASE
    if not newer(found.rank, final, rank_of(row.status, attempt_in(row.meta)), refines=found.refines,
                 current=row.status):  # fmt: skip
        return row
    recorded_meta = row.meta
    for key in COLUMNS:
        value = found.columns.get(key)
        if value is not None or key not in IDENTITY:
            setattr(row, key, value)
    if found.date_done is not None:  # the state history as the recorder will write it
        new = state_history.of_event(found.status, found.date_done, found.date_started)
        row.meta = state_history.with_states(row.meta, recorded_meta, new)
    row.date_started = found.date_started or row.date_started
    row.date_done = found.date_done or row.date_done
    return row
