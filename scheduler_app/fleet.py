"""The workers as the console sees them, and their remote control (Celery's broadcast
commands): who answers, what each consumes and runs, its pool; warm shutdown, pool grow /
shrink, add / cancel a queue consumer.

Every call goes through `broker.bounded_connection()` and waits `timeout` seconds at most
for the answers, so a page never hangs on a worker that does not answer. The first
question (stats) waits the whole timeout, since nobody knows how many workers there are;
the others name the workers that answered and return as soon as all of them have.
A worker that answered once in the last hour and does not now is listed as not answering
(the names are kept in Redis, `SEEN`), so it does not silently drop off the page.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from celery import current_app
from celery import states as celery_states
from celery.worker.control import inspect_command
from django.db import DatabaseError
from django.db.models import Count
from django.utils import timezone
from django_celery_results.models import TaskResult

from scheduler_app import broker
from scheduler_app.connection import redis_client

SEEN = "bk:fleet:seen"  # hash: worker name -> when it last answered (epoch seconds)
FORGET_AFTER = 3600  # seconds a worker that stopped answering stays listed
TIMEOUT = 1.0  # seconds to wait for the workers' answers
POOLS = {"prefork": "prefork", "thread": "threads", "solo": "solo", "eventlet": "eventlet", "gevent": "gevent"}


@inspect_command()
def bk_load(state: Any, **kwargs: Any) -> dict[str, Any]:
    """The worker's host load average (1, 5, 15 min) and its clock: Celery's stats have neither."""
    return {"loadavg": list(os.getloadavg()), "at": time.time()}


@dataclass(frozen=True)
class Held:
    """A run a worker holds: running (`started` set) or reserved."""

    id: str
    name: str
    started: dt.datetime | None = None
    args: str = ""

    def running_for(self, now: dt.datetime) -> float | None:
        return (now - self.started).total_seconds() if self.started else None


@dataclass
class Worker:
    name: str
    answering: bool
    last_answer: dt.datetime | None = None
    pid: int | None = None
    pool: str = ""
    concurrency: int | None = None
    processes: int | None = None
    queues: list[str] = field(default_factory=list)
    active: list[Held] = field(default_factory=list)
    reserved: list[Held] = field(default_factory=list)
    processed: int | None = None
    failed_24h: int | None = None
    load: list[float] | None = None
    uptime: int | None = None


@dataclass
class Survey:
    workers: list[Worker]
    at: dt.datetime
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str


def when(epoch: float | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(epoch, dt.UTC) if epoch else None


# --- Reading ------------------------------------------------------------------------------


def survey(timeout: float = TIMEOUT) -> Survey:
    """Every worker that answers (and those seen lately that do not), with what they hold."""
    found, errors = ask_all(timeout)
    now = timezone.now()
    workers = [worker_of(name, answers) for name, answers in sorted(found.items())]
    for worker in workers:
        worker.last_answer = now
    errors += add_failures(workers, now)
    seen, error = remember(found, now)
    errors += [error] if error else []
    workers += [Worker(name, False, when(at)) for name, at in sorted(seen.items()) if name not in found]
    return Survey(workers, now, errors)


def ask_all(timeout: float) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """{worker: {question: answer}}, and what could not be asked."""
    try:
        with broker.bounded_connection() as conn:
            stats = current_app.control.inspect(timeout=timeout, connection=conn).stats() or {}
            names = sorted(stats)
            found: dict[str, dict[str, Any]] = {name: {"stats": answer} for name, answer in stats.items()}
            if not names:
                return found, []
            asked = current_app.control.inspect(timeout=timeout, connection=conn, destination=names, limit=len(names))
            for question in ("active", "reserved", "active_queues", "bk_load"):
                answers = cast(dict[str, Any], asked._request(question) or {})  # keyed by worker (one reply each)
                for name, answer in answers.items():
                    found.setdefault(name, {})[question] = answer
            return found, []
    except Exception as exc:  # noqa: BLE001  (no broker: say so, list who was seen)
        return {}, [f"the workers could not be asked ({type(exc).__name__}: {exc})"]


def worker_of(name: str, answers: dict[str, Any]) -> Worker:
    stats = answers.get("stats") or {}
    pool = stats.get("pool") or {}
    load = (answers.get("bk_load") or {}).get("loadavg")
    return Worker(
        name,
        True,
        pid=stats.get("pid"),
        pool=pool_kind(str(pool.get("implementation", ""))),
        concurrency=pool.get("max-concurrency"),
        processes=len(pool["processes"]) if isinstance(pool.get("processes"), list) else None,
        queues=sorted(str(q.get("name")) for q in answers.get("active_queues") or [] if isinstance(q, dict)),
        active=held(answers.get("active")),
        reserved=held(answers.get("reserved")),
        processed=sum(int(n) for n in (stats.get("total") or {}).values()) if "total" in stats else None,
        load=[float(n) for n in load] if isinstance(load, list) else None,
        uptime=stats.get("uptime"),
    )


def pool_kind(implementation: str) -> str:
    """'celery.concurrency.prefork:TaskPool' -> 'prefork'."""
    module = implementation.split(":")[0].rsplit(".", 1)[-1]
    return POOLS.get(module, module or "unknown")


def held(requests: Any) -> list[Held]:
    if not isinstance(requests, list):
        return []
    runs = [request for request in requests if isinstance(request, dict)]
    return [Held(str(r.get("id")), str(r.get("name")), when(r.get("time_start")), str(r.get("args", ""))) for r in runs]


def add_failures(workers: list[Worker], now: dt.datetime) -> list[str]:
    """Each worker's FAILURE runs of the last 24 h (the runs table's worker and date_done indexes)."""
    if not workers:
        return []
    since = now - dt.timedelta(hours=24)
    names = [worker.name for worker in workers]
    rows = TaskResult.objects.filter(worker__in=names, status=celery_states.FAILURE, date_done__gte=since)
    try:
        counts = dict(rows.values_list("worker").annotate(n=Count("id")).values_list("worker", "n"))
    except DatabaseError as exc:
        return [f"the failures could not be counted ({exc})"]
    for worker in workers:
        worker.failed_24h = counts.get(worker.name, 0)
    return []


def remember(found: Iterable[str], now: dt.datetime) -> tuple[dict[str, float], str]:
    """Note who answered now; the others seen within FORGET_AFTER, with when they last did."""
    client = redis_client()
    try:
        at = now.timestamp()
        names = list(found)
        if names:
            client.hset(SEEN, mapping=dict.fromkeys(names, at))
        seen = {text(key): float(value) for key, value in client.hgetall(SEEN).items()}
        stale = [name for name, last in seen.items() if at - last > FORGET_AFTER]
        if stale:
            client.hdel(SEEN, *stale)
        return {name: last for name, last in seen.items() if name not in stale}, ""
    except redis.RedisError as exc:
        return {}, f"the workers seen before could not be read ({exc})"
    finally:
        client.close()


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def run_ids(surveyed: Survey) -> dict[str, int]:
    """The runs table's row (the console's run page) of each run the workers hold."""
    ids = {run.id for worker in surveyed.workers for run in [*worker.active, *worker.reserved]}
    if not ids:
        return {}
    try:
        return dict(TaskResult.objects.filter(task_id__in=ids).values_list("task_id", "pk"))
    except DatabaseError:
        return {}


# --- Remote control -----------------------------------------------------------------------


def control(name: str, command: str, timeout: float = TIMEOUT, **arguments: Any) -> Outcome:
    """One of Celery's control commands, to one worker; its answer (or that none came)."""
    if command == "shutdown":
        return shutdown(name)
    try:
        with broker.bounded_connection() as conn:
            replies = current_app.control.broadcast(command, arguments=arguments, destination=[name], reply=True,
                                                    timeout=timeout, limit=1, connection=conn)  # fmt: skip
    except Exception as exc:  # noqa: BLE001  (the broker did not take it)
        return Outcome(False, f"{name}: the command was not sent ({type(exc).__name__}: {exc}).")
    return outcome(name, replies or [])


def outcome(name: str, replies: list[dict[str, Any]]) -> Outcome:
    for reply in replies:
        answer = reply.get(name)
        if isinstance(answer, dict) and "ok" in answer:
            return Outcome(True, f"{name}: {answer['ok']}.")
        if isinstance(answer, dict) and "error" in answer:
            return Outcome(False, f"{name} refused: {answer['error']}.")
    return Outcome(False, f"{name} did not answer within {TIMEOUT:g}s; it may not be running.")


def shutdown(name: str) -> Outcome:
    """Warm shutdown: the worker takes no new runs, finishes those it runs, then exits.
    It sends no answer (it stops instead), so this says the request went out."""
    try:
        with broker.bounded_connection() as conn:
            current_app.control.shutdown(destination=[name], connection=conn)
    except Exception as exc:  # noqa: BLE001  (the broker did not take it)
        return Outcome(False, f"{name}: the shutdown was not sent ({type(exc).__name__}: {exc}).")
    return Outcome(True, f"{name} was asked to shut down: it finishes its running runs, then exits.")


CONTROLS = ("shutdown", "pool_grow", "pool_shrink", "add_consumer", "cancel_consumer")
QUEUE_CONTROLS = ("add_consumer", "cancel_consumer")  # these name a queue


def arguments_for(command: str, queue: str = "") -> dict[str, Any]:
    """The control command's arguments: a queue for a consumer, one process for the pool."""
    if command in QUEUE_CONTROLS:
        return {"queue": queue}
    return {"n": 1} if command.startswith("pool_") else {}


def consumed(timeout: float = TIMEOUT) -> tuple[dict[str, list[str]], str]:
    """{worker: [queue, ...]} of the workers that answer; what went wrong, if anything."""
    try:
        with broker.bounded_connection() as conn:
            answers = current_app.control.inspect(timeout=timeout, connection=conn).active_queues() or {}
    except Exception as exc:  # noqa: BLE001  (no broker: nobody can be asked)
        return {}, f"the workers could not be asked ({type(exc).__name__}: {exc})"
    return {
        name: sorted(str(q.get("name")) for q in queues if isinstance(q, dict)) for name, queues in answers.items()
    }, ""
