"""The recorder: writes the run ledger's stream (scheduler_app/runs/ledger.py) to TaskResult.

`manage.py record_runs` runs one. It reads the stream through a consumer group in
batches, folds each run's changes into its latest state (the ledger's rank), and writes
the batch as one multi-row upsert (`INSERT ... ON CONFLICT (task_id) DO UPDATE`, the same
statement on PostgreSQL and SQLite), after reading the batch's existing rows (locked on
PostgreSQL) so that a row written by someone else keeps its precedence too. It
acknowledges and deletes the entries only after the commit, so the stream's length is the
backlog, a recorder killed mid-batch leaves its entries pending for the next one, and a
batch written twice writes the same rows.

Several recorders may run (say one per host); one holds the lease (a redis-py `Lock`,
renewed every batch) and the others wait to take over. While the database is away the
recorder retries the same batch with a capped backoff; the runs go on, and their states
stay readable from Redis. An event the database refuses on its own (after the batch was
split to find it) is moved to `bk:ledger:dead` with the error, never dropped.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import redis
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django_celery_results.models import TaskResult
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import LockError, ResponseError

from scheduler_app.connection import redis_client
from scheduler_app.runs import ledger, state_history

if TYPE_CHECKING:
    from django.db.models import Field

logger = logging.getLogger(__name__)
GROUP = "recorder"
CONSUMER = "recorder"  # one name: whichever recorder leads reads the pending entries of the one before
LEASE_KEY = "bk:recorder:lease"
STATUS_KEY = "bk:recorder:status"
IDENTITY = ledger.IDENTITY
AWAY = (OperationalError, InterfaceError)  # the database is unreachable: try the batch again
DRAIN_SECONDS = 10.0  # on SIGTERM, what is queued is written for at most this long before it stops
ADVISORY_LOCK = 0x6265_6174_6B65  # PostgreSQL: recorders' write transactions one at a time

# Shorten a run's fast-side state to its recorded lifetime if its latest write is one this
# batch read (its stream entry); a state written since keeps the long lifetime until its own
# batch is written.
_RECORDED = """
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry then
  for i = 2, #ARGV do
    if entry == ARGV[i] then return redis.call('EXPIRE', KEYS[1], ARGV[1]) end
  end
end
return 0
"""


@dataclass
class Event:
    entry_id: bytes
    task_id: str
    at: dt.datetime
    started: dt.datetime | None
    columns: dict[str, Any]
    rank: int
    final: bool
    raw: bytes
    refines: bool = False


@dataclass
class Run:
    """A run's state after folding one batch's events into it."""

    event: Event
    first_at: dt.datetime
    identity: dict[str, Any] = field(default_factory=dict)
    started: dt.datetime | None = None
    states: list[state_history.State] = field(default_factory=list)  # every change of the batch, for meta["states"]


def parse(entry_id: bytes, fields: dict[bytes, bytes]) -> Event:
    raw = fields[b"e"]
    data = json.loads(raw)
    columns = {key: data["columns"].get(key) for key in ledger.COLUMNS}
    status = str(columns["status"])
    meta = columns.get("meta")
    rank = int(data["rank"]) if "rank" in data else ledger.rank_of(status, ledger.attempt_in(meta))
    at = dt.datetime.fromisoformat(data["at"])
    started = dt.datetime.fromisoformat(data["started"]) if data.get("started") else None
    if at.tzinfo is None or (started is not None and started.tzinfo is None):
        raise ValueError("its times have no time zone")
    final = ledger.phase_of(status) == ledger.FINAL_PHASE
    return Event(entry_id, str(data["id"]), at, started, columns, rank, final, raw, bool(data.get("refines")))


def fold(events: Iterable[Event]) -> dict[str, Run]:
    """Each run's latest state in stream order, by the ledger's rank."""
    runs: dict[str, Run] = {}
    for event in events:
        run = runs.get(event.task_id)
        if run is None:
            run = runs[event.task_id] = Run(event, event.at)
        elif ledger.newer(event.rank, event.final, run.event.rank, refines=event.refines,
                          current=run.event.columns.get("status")):  # fmt: skip
            run.event = event
        run.first_at = min(run.first_at, event.started or event.at)  # a short run's one write carries its start
        run.identity.update({key: event.columns[key] for key in IDENTITY if event.columns.get(key) is not None})
        run.states += state_history.of_event(str(event.columns.get("status")), event.at, event.started)
        if event.started is not None and ledger.attempt_of(event.rank) == ledger.attempt_of(run.event.rank):
            run.started = event.started
    return runs


def _columns() -> list[str]:
    names = ["task_id", "date_created", "date_started", "date_done", *ledger.COLUMNS]
    return [str(cast("Field[Any, Any]", TaskResult._meta.get_field(name)).column) for name in names]


def write(runs: dict[str, Run]) -> int:
    """One transaction: the batch's existing rows, then one upsert of the runs that are newer."""
    if not runs:
        return 0
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # Two recorders at once (one that lost its lease mid-batch) must not both insert a
            # run's row from a read that missed the other's: their transactions take turns.
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK])
        existing = {
            row["task_id"]: row
            for row in TaskResult.objects.select_for_update()
            .filter(task_id__in=list(runs))
            .values("task_id", "status", "meta", "date_started", *IDENTITY)
        }
        values: list[list[Any]] = []
        for task_id, run in runs.items():
            row = existing.get(task_id)
            if row is not None:
                have = ledger.rank_of(row["status"], ledger.attempt_in(row["meta"]))
                if not ledger.newer(run.event.rank, run.event.final, have, refines=run.event.refines,
                                    current=row["status"]):  # fmt: skip
                    continue
            identity = {key: (row or {}).get(key) for key in IDENTITY} | run.identity
            columns = run.event.columns | identity
            columns["meta"] = state_history.with_states(columns.get("meta"), (row or {}).get("meta"), run.states)
            same_attempt = row is not None and ledger.attempt_in(row["meta"]) == ledger.attempt_of(run.event.rank)
            started = run.started or (row["date_started"] if same_attempt and row else None)
            values.append(
                [
                    task_id,
                    _db_time(run.first_at),
                    _db_time(started),
                    _db_time(run.event.at),
                    *(columns.get(key) for key in ledger.COLUMNS),
                ]  # fmt: skip
            )
        if values:
            _upsert(values)
    return len(values)


def _db_time(value: dt.datetime | None) -> Any:
    return connection.ops.adapt_datetimefield_value(value) if value is not None else None


DATES = {1, 2, 3}  # date_created, date_started, date_done among _columns()


def _upsert(values: Sequence[Sequence[Any]]) -> None:
    """One statement. On PostgreSQL the rows travel as one array per column (`unnest`): a
    statement of the same 15 parameters whatever the batch, instead of 15 per row to bind."""
    quote = connection.ops.quote_name
    columns = _columns()
    table = quote(TaskResult._meta.db_table)
    updates = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in columns if c not in ("task_id", "date_created"))
    conflict = f"ON CONFLICT ({quote(columns[0])}) DO UPDATE SET {updates}"
    names = ", ".join(map(quote, columns))
    if connection.vendor == "postgresql":
        arrays = ", ".join("%s::timestamptz[]" if n in DATES else "%s::text[]" for n in range(len(columns)))
        sql = f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) {conflict}"  # noqa: S608  (names from the model, values bound)
        params: list[Any] = [list(column) for column in zip(*values, strict=True)]
    else:
        row = "(" + ", ".join(["%s"] * len(columns)) + ")"
        sql = f"INSERT INTO {table} ({names}) VALUES {', '.join([row] * len(values))} {conflict}"  # noqa: S608
        params = [value for one in values for value in one]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


class Recorder:
    def __init__(self, client: redis.Redis | None = None, *, batch: int | None = None, block_ms: int = 200) -> None:
        self.client = client or redis_client()
        self.batch = batch or int(settings.LEDGER_BATCH)
        self.block_ms = block_ms
        self.flush_seconds = float(settings.LEDGER_FLUSH_SECONDS)
        self.lease_seconds = float(settings.LEDGER_LEASE_SECONDS)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.lock = self.client.lock(LEASE_KEY, timeout=self.lease_seconds, thread_local=False)
        # Capped well inside the lease, so a recorder waiting out an outage keeps it.
        self.backoff = ExponentialWithJitterBackoff(base=0.2, cap=min(10.0, self.lease_seconds / 3))
        self.failures = 0
        self.pending_first = True  # after taking the lease or a failed batch: what was read but not acknowledged
        self.recorded = 0
        self._expire = self.client.register_script(_RECORDED)
        self._checked_backlog = 0.0

    # --- The loop --------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        logger.info("recorder %s: started (batch %d, lease %gs)", self.name, self.batch, self.lease_seconds)
        try:
            while not stop.is_set():
                try:
                    if not self.lead():
                        stop.wait(self.lease_seconds / 3)
                        continue
                    began = time.monotonic()
                    done = self.step()
                    self.failures = 0
                    if done < self.batch and not self.pending_first:
                        # Not a full batch: let the next one gather for a moment (fewer, larger
                        # transactions; a run's row shows at most LEDGER_FLUSH_SECONDS later).
                        stop.wait(max(0.0, self.flush_seconds - (time.monotonic() - began)))
                except AWAY as exc:
                    self._pause(stop, "the database is unreachable", exc)
                    connection.close()
                except redis.RedisError as exc:
                    self._pause(stop, "Redis is unreachable", exc)
                except Exception as exc:  # noqa: BLE001  (a bug must not stop the recording: it is logged, retried)
                    logger.exception("recorder: unexpected error")
                    self._pause(stop, "unexpected error", exc)
            self.drain()
        finally:
            self.release()
        logger.info("recorder %s: stopped after recording %d runs", self.name, self.recorded)

    def drain(self) -> None:
        """On stop: write what is queued (the worker's last runs), for at most DRAIN_SECONDS."""
        deadline = time.monotonic() + DRAIN_SECONDS
        try:
            while self.lock.owned() and time.monotonic() < deadline and self.step() > 0:
                pass
        except (*AWAY, redis.RedisError) as exc:
            logger.warning("recorder: stopped with changes still queued (%s); the next recorder writes them", exc)

    def _pause(self, stop: threading.Event, what: str, exc: BaseException) -> None:
        self.failures += 1
        self.pending_first = True
        delay = self.backoff.compute(self.failures)
        logger.warning("recorder: %s (%s); the batch stays pending, next try in %.1fs", what, exc, delay)
        self._status(last_error=f"{what}: {exc}"[:300], last_error_at=time.time())
        stop.wait(delay)

    def lead(self) -> bool:
        """Hold the lease: take it if free, renew it if ours."""
        try:
            if self.lock.owned():
                self.lock.reacquire()
                return True
        except LockError:
            logger.warning("recorder %s: lost the lease; waiting to take it again", self.name)
        if self.lock.acquire(blocking=False):
            logger.info("recorder %s: holds the lease; recording", self.name)
            self.pending_first = True
            self.ensure_group()
            return True
        return False

    def release(self) -> None:
        try:
            if self.lock.owned():
                self.lock.release()
        except (LockError, redis.RedisError):
            pass

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(ledger.STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # --- One batch -------------------------------------------------------------------

    def read(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        start = "0" if self.pending_first else ">"
        try:
            answer = self.client.xreadgroup(GROUP, CONSUMER, {ledger.STREAM: start}, count=self.batch,
                                            block=None if self.pending_first else self.block_ms)  # fmt: skip
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()  # the stream was deleted (a flushed or replaced Redis): start over
            return []
        streams = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes] | None]]]], answer or [])
        read = [(entry_id, fields) for _, stream_entries in streams for entry_id, fields in stream_entries]
        gone = [entry_id for entry_id, fields in read if not fields]  # deleted after it was read: nothing to write
        if gone:
            self.client.xack(ledger.STREAM, GROUP, *gone)
        entries = [(entry_id, fields) for entry_id, fields in read if fields]
        if self.pending_first and len(read) < self.batch:
            self.pending_first = False
        return entries

    def step(self) -> int:
        """Read, write and acknowledge one batch; answers how many entries it took."""
        entries = self.read()
        self.check_backlog()
        if not entries:
            self._status()
            return 0
        events, broken = [], []
        for entry_id, fields in entries:
            try:
                events.append(parse(entry_id, fields))
            except Exception as exc:  # noqa: BLE001  (whatever is wrong with it, it is set aside, not retried for ever)
                broken.append((entry_id, fields.get(b"e", b""), f"not a ledger event: {exc!r}"[:500]))
        runs = fold(events)
        refused: list[tuple[bytes, bytes, str]] = []
        try:
            written = write(runs)
        except AWAY:
            raise
        except (DatabaseError, ValueError, TypeError) as exc:  # one event the database refuses: find it
            logger.error("recorder: the batch was refused (%s); writing its runs one by one", exc)
            written, refused = self._one_by_one(runs, events)
        self.dead_letter(broken + refused)
        refused_runs = frozenset(json.loads(raw).get("id", "") for _, raw, _ in refused)
        self.acknowledge(entries, events, refused_runs)
        self.recorded += written
        self._status(recorded=written)
        return len(entries)

    def _one_by_one(self, runs: dict[str, Run], events: list[Event]) -> tuple[int, list[tuple[bytes, bytes, str]]]:
        written, refused = 0, []
        for task_id, run in runs.items():
            try:
                written += write({task_id: run})
            except AWAY:
                raise
            except (DatabaseError, ValueError, TypeError) as exc:
                refused += [(e.entry_id, e.raw, f"{type(exc).__name__}: {exc}"[:500]) for e in events
                            if e.task_id == task_id]  # fmt: skip
        return written, refused

    def dead_letter(self, broken: list[tuple[bytes, bytes, str]]) -> None:
        for entry_id, raw, error in broken:
            logger.error("recorder: event %s set aside in %s: %s", entry_id.decode(), ledger.DEAD, error)
            self.client.xadd(ledger.DEAD, {"e": raw, "error": error, "entry": entry_id})

    def acknowledge(self, entries: list[tuple[bytes, dict[bytes, bytes]]], events: list[Event],
                    refused: frozenset[str] = frozenset()) -> None:  # fmt: skip
        """XACK + XDEL the batch; shorten the lifetime of what was written (not of a run set aside)."""
        ids = [entry_id for entry_id, _ in entries]
        if not ids:
            return
        read: dict[str, list[bytes]] = {}
        for event in events:
            if event.task_id not in refused:
                read.setdefault(event.task_id, []).append(event.entry_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(ledger.STREAM, GROUP, *ids)
        pipe.xdel(ledger.STREAM, *ids)
        lifetime = ledger.recorded_lifetime()
        for task_id, entry_ids in read.items():
            self._expire(keys=[ledger.RUN_KEY + task_id], args=[lifetime, *entry_ids], client=pipe)
        pipe.execute()

    def check_backlog(self) -> None:
        """Say so in the log (at most once a minute) while the backlog is over its bound."""
        if time.monotonic() - self._checked_backlog < 60:
            return
        self._checked_backlog = time.monotonic()
        waiting = int(self.client.xlen(ledger.STREAM))
        if waiting > int(settings.LEDGER_BACKLOG_LIMIT):
            limit = settings.LEDGER_BACKLOG_LIMIT
            logger.error("recorder: %d run state changes wait to be recorded (LEDGER_BACKLOG_LIMIT %d); "
                         "nothing is dropped, but Redis holds them all", waiting, limit)  # fmt: skip

    def _status(self, recorded: int = 0, **fields: Any) -> None:
        """What the recorder reports for /metrics and the dashboard: best effort (it is also
        what it says while Redis is away)."""
        try:
            self._report(recorded, **fields)
        except redis.RedisError:
            pass

    def _report(self, recorded: int = 0, **fields: Any) -> None:
        pipe = self.client.pipeline(transaction=False)
        mapping: dict[str, str | float] = {"recorder": self.name, "at": time.time(), **fields}
        pipe.hset(STATUS_KEY, mapping=mapping)  # type: ignore[arg-type]  # str and float values are what HSET takes
        if recorded:
            pipe.hincrby(STATUS_KEY, "recorded", recorded)
        pipe.execute()


# --- What /metrics, /readyz and the dashboard read ---------------------------------------


@dataclass(frozen=True)
class Backlog:
    events: int  # state changes not yet written to TaskResult
    lag_seconds: float  # age of the oldest of them (0 when none)
    dead: int  # events set aside
    recorder: str | None  # the recorder that last reported
    recorder_age: float | None  # seconds since it last reported
    recorded: int  # runs written since the stream began

    @property
    def over_limit(self) -> bool:
        return self.events > int(settings.LEDGER_BACKLOG_LIMIT)


def backlog(client: redis.Redis) -> Backlog:
    pipe = client.pipeline(transaction=False)
    pipe.xlen(ledger.STREAM)
    pipe.xrange(ledger.STREAM, count=1)
    pipe.xlen(ledger.DEAD)
    pipe.hgetall(STATUS_KEY)
    pipe.time()
    events, first, dead, status, (seconds, micros) = pipe.execute()
    now = seconds + micros / 1e6
    lag = max(0.0, now - int(first[0][0].split(b"-")[0]) / 1000) if first and events else 0.0
    facts = {key.decode(): value.decode() for key, value in status.items()}
    at = float(facts["at"]) if "at" in facts else None
    return Backlog(int(events), lag, int(dead), facts.get("recorder"), time.time() - at if at else None,
                   int(facts.get("recorded", 0)))  # fmt: skip
