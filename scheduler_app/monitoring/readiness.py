"""Readiness: can the platform do its work right now? Five checks, for `/readyz`:

- database: a trivial query answers;
- broker: Redis answers a PING;
- beat: a beat ticked within READYZ_BEAT_MAX_AGE seconds, and one holds the leader lease;
- workers: at least one worker answers a ping within a second;
- ledger: the runs' state changes reach TaskResult: the oldest one still waiting in Redis
  is at most LEDGER_MAX_LAG_SECONDS old, and no more than LEDGER_BACKLOG_LIMIT wait.

Each check is a plain function returning a `Check`; none raises. `check_all` runs them in
threads under one deadline, so a server that hangs (a blackholed address, a full backlog)
costs the probe `TIMEOUT` seconds, not the operating system's TCP timeout. Beat, workers
and the ledger are read through the broker: when it does not answer they are reported as
not checked instead of waiting on kombu's connection retries (six seconds and more).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import redis
from celery import current_app
from django.conf import settings
from django.db import connection

from scheduler_app import broker
from scheduler_app.beat import leader
from scheduler_app.connection import redis_client
from scheduler_app.runs import recorder

TIMEOUT = 2.5  # seconds for all checks together; a probe's timeoutSeconds should be 3 or more
REDIS_TIMEOUT = 1.0  # connect and read timeout of the probe's own Redis client
PING_TIMEOUT = 1.0  # seconds a worker has to answer


@dataclass(frozen=True)
class Check:
    ok: bool
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "error": self.error, "details": self.details, "seconds": round(self.seconds, 3)}


def describe(exc: BaseException) -> str:
    """An error in one short line (no traceback: the answer is for a probe and its operator)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]


def probe_client() -> redis.Redis:
    """A client of REDIS_URL with short timeouts: a probe must not wait like a worker does."""
    return redis_client(timeout=REDIS_TIMEOUT)


def check_database() -> Check:
    """A trivial query. Runs in a thread of its own, so it closes the connection it opened."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()
    return Check(True, details={"vendor": connection.vendor})


def check_broker() -> Check:
    client = probe_client()
    try:
        client.ping()
    finally:
        client.close()
    return Check(True)


def check_beat(max_age: float | None = None) -> Check:
    """A beat ticked recently and one leads. A follower's tick counts: it takes over within
    BEAT_LEASE_SECONDS of a leader that stopped, which the missing lease then shows."""
    max_age = settings.READYZ_BEAT_MAX_AGE if max_age is None else max_age
    client = probe_client()
    try:
        facts = leader.heartbeat(client)
    finally:
        client.close()
    beats = facts["beats"]
    age = round(beats[0]["age"], 3) if beats else None
    details = {"leader": facts["leader"], "beats": len(beats), "last_tick_age": age, "max_age": max_age}
    if age is None or age > max_age:
        return Check(False, f"no beat ticked within {max_age:g}s", details)
    if facts["leader"] is None:
        return Check(False, "no beat holds the leader lease", details)
    return Check(True, details=details)


def check_workers(timeout: float = PING_TIMEOUT) -> Check:
    """One worker answering is enough: `limit=1` returns at its reply instead of waiting
    out the timeout. The ping goes through Celery's own broker (built from REDIS_URL)."""
    with broker.bounded_connection() as conn:  # not the pool's: a thread left behind waits seconds, not 30 s
        replies = current_app.control.ping(timeout=timeout, limit=1, connection=conn) or []
    if not replies:
        return Check(False, f"no worker answered a ping within {timeout:g}s", {"answered": 0})
    return Check(True, details={"answered": len(replies)})


def check_ledger(max_lag: float | None = None) -> Check:
    """The recorder keeps up: what waits in the stream is young enough and not too much.
    A recorder that is stopped or stuck, or a database that refuses, shows as lag; dead
    events are for an operator (metrics, dashboard), not a reason to stop being ready."""
    max_lag = float(settings.LEDGER_MAX_LAG_SECONDS if max_lag is None else max_lag)
    client = probe_client()
    try:
        found = recorder.backlog(client)
    finally:
        client.close()
    age = round(found.recorder_age, 3) if found.recorder_age is not None else None
    details = {"backlog": found.events, "lag_seconds": round(found.lag_seconds, 3), "max_lag": max_lag,
               "dead": found.dead, "recorder": found.recorder, "recorder_age": age}  # fmt: skip
    problems = []
    if found.lag_seconds > max_lag:
        problems.append(f"the oldest unrecorded run state change is {found.lag_seconds:.0f}s old "
                        f"(limit {max_lag:g}s)")  # fmt: skip
    if found.over_limit:
        problems.append(f"{found.events} run state changes wait to be recorded "
                        f"(limit {int(settings.LEDGER_BACKLOG_LIMIT)})")  # fmt: skip
    if problems:
        error = "; ".join(problems) + ": check that `manage.py record_runs` runs and that the database answers"
        return Check(False, error, details)
    return Check(True, details=details)


def _run_into(results: dict[str, Check], name: str, check: Callable[[], Check]) -> None:
    started = time.monotonic()
    try:
        found = check()
    except Exception as exc:  # noqa: BLE001  (a check reports its failure, it never raises)
        found = Check(False, describe(exc))
    results[name] = replace(found, seconds=time.monotonic() - started)


def run_bounded(checks: dict[str, Callable[[], Check]], deadline: float) -> dict[str, Check]:
    """Run the checks at once, each in a daemon thread; one still running at `deadline`
    (time.monotonic()) is reported as timed out and left to its own socket timeouts."""
    results: dict[str, Check] = {}
    threads = [
        threading.Thread(target=_run_into, args=(results, name, check), name=f"readyz-{name}", daemon=True)
        for name, check in checks.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    late = Check(False, f"no answer within {TIMEOUT:g}s")
    return {name: results.get(name, late) for name in checks}


def check_all(timeout: float = TIMEOUT) -> dict[str, Check]:
    """Database and broker first (together), then beat, workers and the ledger if the broker answered."""
    deadline = time.monotonic() + timeout
    found = run_bounded({"database": check_database, "broker": check_broker}, deadline)
    if not found["broker"].ok:
        skipped = Check(False, "not checked: the broker does not answer")
        return {**found, "beat": skipped, "workers": skipped, "ledger": skipped}
    after: dict[str, Callable[[], Check]] = {"beat": check_beat, "workers": check_workers, "ledger": check_ledger}
    return {**found, **run_bounded(after, deadline)}
