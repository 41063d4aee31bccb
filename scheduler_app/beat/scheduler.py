"""Beat: where beat decides what is due, sends it, and keeps up with the database.

`Scheduler` keeps django-celery-beat's `DatabaseScheduler` contract (interval, crontab
with its zone, solar, clocked, `one_off`, `start_time`, `expires`, enable/disable, edits
and deletes picked up, `last_run_at` persisted) but not its costs:

- entries are lean (columns read with `values_list`, arguments decoded only when sent),
  and schedule objects are shared between the entries that use the same row;
- a heap of next-due times: a tick looks at the top only, and sends every due entry;
- edits are read from the change log (`scheduler_app.beat.changes`): only changed rows are
  reloaded; a bulk update that wrote no log (django-celery-beat's admin actions) is
  answered with a full reload;
- `last_run_at` is written in batches, once a second, with one statement per 500 rows.

Dispatch and failover: only the holder of the Redis lease sends (`scheduler_app.beat.leader`),
and every send is first claimed, under the fencing check, as (schedule, slot): a slot is
sent once however many beats run, restart or take over. `last_run_at` is the slot sent
(not the moment of sending), so interval schedules do not drift and every beat computes
the same slots.

Catch-up: slots missed by less than BEAT_CATCH_UP_GRACE_SECONDS (a failover, a short
restart, a busy moment) are each sent, late, in order: no slot is lost. A backlog that
reaches further back (beat was down, or the schedule was re-enabled) follows the
schedule's policy as a whole: `skip` (the default, as cron does) sends none of it and
waits for the next slot, `once` sends one run for all of it. Never a burst of old slots.
"""

from __future__ import annotations

import datetime as dt
import functools
import gc
import heapq
import itertools
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections, connection
from django.db.models import BigIntegerField, BooleanField, CharField, ExpressionWrapper, F, Q, QuerySet, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django_celery_beat.models import PeriodicTask, PeriodicTasks
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry
from kombu.utils.json import loads

from scheduler_app.beat import leader, slots
from scheduler_app.models import POLICY_FIELDS, SHARED_SCHEDULES, ScheduleChange
from scheduler_app.runs.history import HEADER
from scheduler_app.runs.policy import RunPolicy, task_policy

logger = logging.getLogger(__name__)
UTC = dt.UTC
ROW_FIELDS = (
    "id", "name", "task", "args", "kwargs", "queue", "exchange", "routing_key", "priority",
    "expire_seconds", "expires", "headers", "one_off", "start_time", "total_run_count",
    "interval_id", "crontab_id", "solar_id", "clocked_id",
    *(f"policy__{name}" for name in POLICY_FIELDS),
    "anchor", "never_run",  # last_run_at, or date_changed for a schedule that never ran: one timestamp to parse
)  # fmt: skip


def rows(tasks: QuerySet[PeriodicTask]) -> QuerySet[Any]:
    anchor = Coalesce("last_run_at", "date_changed")
    never_run = ExpressionWrapper(Q(last_run_at__isnull=True), output_field=BooleanField())
    return tasks.annotate(anchor=anchor, never_run=never_run).values_list(*ROW_FIELDS)


GAP_PATIENCE = 30.0  # seconds a missing change-log id may still turn up (a transaction not yet committed)
CHANGE_LOG_RETENTION = dt.timedelta(hours=1)  # a beat that was away longer starts with a full load anyway
PRUNE_EVERY = 300.0  # seconds between two prunings of the change log by the leader
BUMP = "bump"  # the PeriodicTasks timestamp's row in _read_changes
CHUNK = 200  # slots claimed, then sent, at a time
BUMP_WINDOW = dt.timedelta(seconds=1)  # a save's change-log row follows its bump by less


@functools.cache
def changes_query() -> tuple[str, tuple[Any, ...]]:
    """The SQL of `_read_changes`, compiled once (compiling it cost more than running it)."""
    changes = ScheduleChange.objects.filter(id__gt=0).values_list("id", "kind", "object_id", "at")
    bump = PeriodicTasks.objects.filter(ident=1).values_list(
        Value(0, BigIntegerField()), Value(BUMP, CharField()), Value(0, BigIntegerField()), "last_update"
    )
    return changes.union(bump, all=True).query.sql_with_params()


def aware(moment: dt.datetime | str | None) -> dt.datetime | None:
    """A timestamp read with raw SQL: SQLite gives naive UTC (or text), PostgreSQL aware."""
    if isinstance(moment, str):
        moment = dt.datetime.fromisoformat(moment)
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


class Policies(dict[str, RunPolicy]):
    """Each task's own policy, looked up once per load."""

    def __init__(self, app: Any) -> None:
        super().__init__()
        self.app = app

    def __missing__(self, task_name: str) -> RunPolicy:
        self[task_name] = policy = task_policy(task_name, self.app)
        return policy


@dataclass(eq=False)
class Entry:
    """One enabled schedule, as beat holds it (the shape of Celery's ScheduleEntry, lean)."""

    pk: int
    name: str
    task: str
    table_key: tuple[str, int]
    raw_args: str
    raw_kwargs: str
    options: dict[str, Any]
    overrides: dict[str, Any]
    policy: RunPolicy
    one_off: bool
    start_time: dt.datetime | None
    expires: dt.datetime | None
    last_run_at: dt.datetime | None
    total_run_count: int
    date_changed: dt.datetime
    next_slot: dt.datetime | None = None
    version: int = 0

    @property
    def args(self) -> list[Any]:
        return list(loads(self.raw_args or "[]"))

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(loads(self.raw_kwargs or "{}"))

    def header(self, slot: dt.datetime) -> dict[str, Any]:
        return {"trigger": "beat", "schedule": self.name, "scheduled_for": slot.isoformat(), "policy": self.overrides}

    def message_options(self, slot: dt.datetime) -> dict[str, Any]:
        options = dict(self.options)
        options["headers"] = {**options.get("headers", {}), HEADER: self.header(slot)}
        return options


def entry_from_row(row: tuple[Any, ...], policies: Policies) -> Entry:
    values = dict(zip(ROW_FIELDS, row, strict=True))
    overrides = {name: values[f"policy__{name}"] for name in POLICY_FIELDS}
    overrides = {name: value for name, value in overrides.items() if value not in (None, "")}
    base = policies[values["task"]]
    try:
        policy = base.with_overrides(overrides) if overrides else base
    except ValueError as exc:  # a bad row never stops beat: the task's own policy applies
        logger.error("ignoring the policy of schedule %s: %s; fix it in the admin", values["name"], exc)
        overrides, policy = {}, base
    return Entry(
        pk=values["id"],
        name=values["name"],
        task=values["task"],
        table_key=table_key(values),
        raw_args=values["args"],
        raw_kwargs=values["kwargs"],
        options=message_options(values, overrides, policy),
        overrides=overrides,
        policy=policy,
        one_off=values["one_off"],
        start_time=values["start_time"],
        expires=values["expires"],
        last_run_at=None if values["never_run"] else values["anchor"],
        total_run_count=values["total_run_count"],
        date_changed=values["anchor"],
    )


def table_key(values: dict[str, Any]) -> tuple[str, int]:
    for kind in ("interval", "crontab", "solar", "clocked"):
        if values[f"{kind}_id"] is not None:
            return kind, values[f"{kind}_id"]
    raise slots.InvalidSchedule(f"schedule {values['name']!r} has no interval, crontab, solar or clocked")


def message_options(values: dict[str, Any], overrides: dict[str, Any], policy: RunPolicy) -> dict[str, Any]:
    """What django-celery-beat's ModelEntry puts on the message, plus the policy's limits."""
    options = {key: values[key] for key in ("queue", "exchange", "routing_key", "priority") if values[key] is not None}
    if values["expires"] or values["expire_seconds"]:
        options["expires"] = values["expires"] or values["expire_seconds"]
    options["headers"] = {**json.loads(values["headers"] or "{}"), "periodic_task_name": values["name"]}
    if "soft_time_limit" in overrides or "time_limit" in overrides:
        options["soft_time_limit"], options["time_limit"] = policy.soft_time_limit, policy.time_limit
    return options


@dataclass
class Send:
    entry: Entry
    slot: dt.datetime


class Scheduler(DatabaseScheduler):  # type: ignore[misc]
    Entry = ModelEntry  # used by django-celery-beat's update_from_dict for conf.beat_schedule

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._entries: dict[int, Entry] = {}
        self._tables: dict[tuple[str, int], slots.Timetable] = {}
        self._users: dict[tuple[str, int], set[int]] = {}  # table key -> pks of the entries using it
        self._due: list[tuple[float, int, int, int]] = []  # a heap of (due epoch, seq, pk, version)
        self._seq = itertools.count()
        self._writes: dict[int, tuple[dt.datetime, int]] = {}  # pk -> (last_run_at, runs to add)
        self._disable: set[int] = set()
        self._unmark: set[int] = set()  # clocked one-offs whose mark goes once they are disabled
        self._unsent: list[Send] = []
        self._change_id = 0
        self._gaps: dict[int, float] = {}
        self._changes_ts: dt.datetime | None = None
        self._unexplained: dt.datetime | None = None  # a PeriodicTasks bump waiting for its log row
        self._policies: Policies  # set by load_all, before any entry is made
        self._next_housekeeping = 0.0
        self._next_database = 0.0
        self._next_prune = 0.0
        self._lag = 0.0
        self._sent = 0
        self.grace = float(settings.BEAT_CATCH_UP_GRACE_SECONDS)
        self.check_interval = float(settings.BEAT_CHECK_SECONDS)
        self.lease = leader.Lease(ttl=float(settings.BEAT_LEASE_SECONDS))
        self.ledger = leader.SlotLedger(self.lease)
        super().__init__(*args, **kwargs)
        self.max_interval = min(self.max_interval, self.check_interval)
        # A task-sent event is a second publish per run (kombu's Redis transport takes a
        # client per publish): without it beat sends about a third more per second. Workers
        # still report received / started / succeeded, so Flower shows every run.
        self.app.conf.task_send_sent_event = False

    # --- loading --------------------------------------------------------------------

    def setup_schedule(self) -> None:
        """Write `beat_schedule` from the Celery configuration to the database, as
        django-celery-beat does, then load every enabled schedule."""
        if self.app.conf.beat_schedule:
            DatabaseScheduler.update_from_dict(self, self.app.conf.beat_schedule)
        self.load_all()

    @property
    def schedule(self) -> dict[str, Entry]:
        return {entry.name: entry for entry in self._entries.values()}

    def load_all(self) -> None:
        """Load every enabled schedule. A database error part-way keeps what was loaded
        before (and the change-log position), so nothing is half-loaded."""
        started = time.perf_counter()
        change_id = ScheduleChange.objects.order_by("-id").values_list("id", flat=True).first() or 0
        changes_ts = PeriodicTasks.last_change()
        before = (self._tables, self._entries, self._users, self._due)
        self._tables, self._entries, self._users, self._due = {}, {}, {}, []
        self._policies = Policies(self.app)
        gc.disable()  # a load allocates many long-lived objects: collecting meanwhile finds nothing
        try:
            self._load_tables(SHARED_SCHEDULES.items())
            for row in rows(PeriodicTask.objects.filter(enabled=True)).iterator(chunk_size=5000):
                self._add(row)
        except BaseException:
            self._tables, self._entries, self._users, self._due = before
            raise
        finally:
            gc.enable()
        gc.freeze()  # and they stay: keep them out of later collections
        self._change_id, self._changes_ts, self._gaps = change_id, changes_ts, {}
        self._rebuild_heap()
        logger.info("beat loaded %d schedules in %.2fs", len(self._entries), time.perf_counter() - started)

    def _load_tables(self, kinds: Iterable[tuple[str, Any]], ids: Iterable[int] | None = None) -> None:
        for kind, model in kinds:
            rows = model.objects.all() if ids is None else model.objects.filter(pk__in=list(ids))
            for row in rows:
                try:
                    self._tables[(kind, row.pk)] = slots.timetable(row)
                except Exception as exc:  # noqa: BLE001  (one bad row never stops beat)
                    logger.error("%s schedule %s is invalid and its schedules will not run: %s", kind, row.pk, exc)

    def _add(self, row: tuple[Any, ...]) -> Entry | None:
        try:
            entry = entry_from_row(row, self._policies)
        except Exception as exc:  # noqa: BLE001  (one bad row never stops beat)
            logger.error("schedule %r cannot run: %s; fix it in the admin", row[1], exc)
            self._remove(row[0])  # its previous, valid version stops too: it no longer says what runs
            return None
        old = self._entries.get(entry.pk)
        if old is not None:
            self._forget(old)
            if old.last_run_at and (entry.last_run_at is None or old.last_run_at > entry.last_run_at):
                entry.last_run_at = old.last_run_at  # what we sent and not yet wrote
        entry.version = next(self._seq)  # heap items of an older version are dropped when they surface
        self._entries[entry.pk] = entry
        self._users.setdefault(entry.table_key, set()).add(entry.pk)
        try:
            self._plan(entry)
        except Exception as exc:  # noqa: BLE001  (one bad row never stops beat)
            logger.error("schedule %r cannot run: %s; fix it in the admin", entry.name, exc)
            self._remove(entry.pk)
            return None
        return entry

    def _forget(self, entry: Entry) -> None:
        self._users.get(entry.table_key, set()).discard(entry.pk)

    def _remove(self, pk: int) -> None:
        entry = self._entries.pop(pk, None)
        if entry is not None:
            self._forget(entry)

    def _plan(self, entry: Entry, push: bool = False) -> None:
        table = self._tables.get(entry.table_key)
        if table is None:
            entry.next_slot = None
            return
        entry.next_slot = slots.first_slot(
            table, last_run_at=entry.last_run_at, start_time=entry.start_time, created=entry.date_changed
        )
        if push:
            self._push(entry)

    def _push(self, entry: Entry) -> None:
        """Only the leader keeps the heap up to date; a new leader rebuilds it (_take_over)."""
        if entry.next_slot is not None and self.lease.is_leader:
            heapq.heappush(self._due, (entry.next_slot.timestamp(), next(self._seq), entry.pk, entry.version))

    def _rebuild_heap(self) -> None:
        self._due = [
            (e.next_slot.timestamp(), next(self._seq), e.pk, e.version)
            for e in self._entries.values()
            if e.next_slot is not None
        ]
        heapq.heapify(self._due)

    # --- the tick -----------------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        now_monotonic = time.monotonic()
        if now_monotonic >= self._next_housekeeping:
            self.redis_housekeeping()
            self._next_database = max(self._next_database, now_monotonic + self.check_interval / 2)
        elif now_monotonic >= self._next_database:
            self.database_housekeeping()
        if self._unsent:  # claimed but not sent (the broker was down): ours to send, leader or not
            unsent, self._unsent = self._unsent, []
            self._publish(unsent)
        if not self.lease.is_leader:
            return self._until_housekeeping()
        now = timezone.now()
        due = self._pop_due(now.timestamp())
        if due:
            self._dispatch(due, now)
        return self._sleep_for()

    def _until_housekeeping(self) -> float:
        return max(0.0, min(self._next_housekeeping, self._next_database) - time.monotonic())

    def _sleep_for(self) -> float:
        if not self._due:
            return self._until_housekeeping()
        until_due = self._due[0][0] - time.time()
        return max(0.0, min(until_due, self._until_housekeeping(), self.max_interval))

    def _pop_due(self, now: float) -> list[Entry]:
        due = []
        while self._due and self._due[0][0] <= now:
            _, _, pk, version = heapq.heappop(self._due)
            entry = self._entries.get(pk)
            if entry is not None and entry.version == version:
                due.append(entry)
        return due

    def housekeeping(self) -> None:
        """The lease and heartbeat (Redis), then the writes and the change log (database)."""
        self.redis_housekeeping()
        self.database_housekeeping()

    def redis_housekeeping(self) -> None:
        """Once a second: renew or take the lease, say we are alive. Without Redis nobody
        can send; without the database (below) a leader keeps its lease and goes on."""
        self._next_housekeeping = time.monotonic() + self.check_interval
        try:
            was_leader = self.lease.is_leader
            if self.lease.hold() and not was_leader:
                self._take_over()
            self._heartbeat()
        except redis.RedisError as exc:
            logger.warning("beat cannot reach Redis, trying again in %.0fs: %s", self.check_interval, exc)
        except Exception:  # noqa: BLE001  (beat keeps ticking; the log says what went wrong)
            logger.exception("beat housekeeping (Redis part) failed; trying again in %.0fs", self.check_interval)

    def database_housekeeping(self) -> None:
        """Once a second, half a second after the Redis part (so no tick carries both):
        write the slots sent, read the change log, prune it."""
        self._next_database = time.monotonic() + self.check_interval
        try:
            self.flush()  # first: a one-off just sent is disabled before changes are compared
            self.apply_changes()
            if self.lease.is_leader and time.monotonic() >= self._next_prune:
                self._prune_change_log()
        except (DatabaseError, InterfaceError) as exc:
            logger.warning("beat cannot reach the database, trying again in %.0fs: %s", self.check_interval, exc)
            close_old_connections()
        except Exception:  # noqa: BLE001  (beat keeps ticking; the log says what went wrong)
            logger.exception("beat housekeeping (database part) failed; trying again in %.0fs", self.check_interval)

    def _take_over(self) -> None:
        """Becoming the leader: start from the last slot sent of each schedule, which the
        marks know even when the previous leader died before writing `last_run_at`."""
        marks = self.ledger.marks(self._entries)
        for pk, mark in marks.items():
            entry = self._entries[pk]
            if entry.last_run_at is None or mark > entry.last_run_at:
                entry.last_run_at = mark
                self._writes.setdefault(pk, (mark, 0))  # the database learns what was sent
                if entry.one_off:
                    self._finish_one_off(entry, mark)
                    continue
                self._plan(entry)
        self._rebuild_heap()

    # --- dispatch -------------------------------------------------------------------------

    def _dispatch(self, due: list[Entry], now: dt.datetime) -> None:
        """Claim and send in chunks, renewing the lease between them: a long dispatch keeps
        its leadership, and a beat stopped mid-way has claimed no more than it sent."""
        for start in range(0, len(due), CHUNK):
            if start and not self._still_leading():
                rest = due[start:]
            elif not self._dispatch_chunk(due[start : start + CHUNK], now):  # it put its own chunk back
                rest = due[start + CHUNK :]
            else:
                continue
            for entry in rest:  # not decided: as they were, for whoever leads
                self._push(entry)
            return

    def _still_leading(self) -> bool:
        if time.monotonic() >= self._next_housekeeping - self.check_interval / 2:
            self.redis_housekeeping()  # logs, never raises
        return self.lease.is_leader

    def _dispatch_chunk(self, due: list[Entry], now: dt.datetime) -> bool:
        sends = [send for entry in due if (send := self._decide_safely(entry, now)) is not None]
        try:
            granted = self.ledger.claim([(s.entry.pk, s.slot) for s in sends])
        except leader.NotLeader:
            logger.warning("beat %s lost the lease before sending; the new leader sends these", self.lease.node)
            self.lease.release()
            self._requeue(sends)
            return False
        except redis.RedisError as exc:
            logger.warning("beat cannot claim %d due slots (Redis: %s); trying again", len(sends), exc)
            self._requeue(sends)
            return False
        claimed = []
        for send, ok in zip(sends, granted, strict=True):
            self._advance(send, now, ran=ok)  # not granted: another beat sent this slot already
            claimed += [send] if ok else []
        self._publish(claimed)
        return True

    def _decide_safely(self, entry: Entry, now: dt.datetime) -> Send | None:
        try:
            return self._decide(entry, now)
        except Exception:  # noqa: BLE001  (one schedule's fault never stops the others)
            logger.exception("schedule %s cannot be planned; it will not run until it is edited", entry.name)
            entry.next_slot = None
            return None

    def _decide(self, entry: Entry, now: dt.datetime) -> Send | None:
        """What to send for a due entry: its slot, or nothing (expired, or a missed slot
        skipped under catch-up `skip`). Moves the entry to its next slot."""
        if entry.expires is not None and now >= entry.expires:
            logger.info("schedule %s expired at %s; disabling it", entry.name, entry.expires.isoformat())
            self._disable.add(entry.pk)
            self._remove(entry.pk)
            return None
        slot = entry.next_slot
        assert slot is not None  # noqa: S101  (only entries with a slot are on the heap)
        late = (now - slot).total_seconds()
        if late <= self.grace or entry.table_key[0] == "clocked":
            return Send(entry, slot)
        if entry.policy.catch_up == "skip":
            logger.info("skipping a missed slot of %s (%s, %.0fs late; catch-up is 'skip')", entry.name, slot, late)
            self._move_on(entry, slot, now)
            return None
        table = self._tables[entry.table_key]  # `once`: one run, as the backlog's latest slot, so it stays one
        return Send(entry, slots.latest_until(table, slot, now))

    def _move_on(self, entry: Entry, slot: dt.datetime, now: dt.datetime) -> None:
        table = self._tables.get(entry.table_key)
        entry.next_slot = table.slot_following(slot, now) if table else None
        self._push(entry)

    def _advance(self, send: Send, now: dt.datetime, ran: bool) -> None:
        entry = send.entry
        entry.last_run_at = send.slot
        entry.total_run_count += ran
        self._writes[entry.pk] = (send.slot, self._writes.get(entry.pk, (send.slot, 0))[1] + ran)
        if entry.one_off:
            self._finish_one_off(entry, send.slot)
            return
        if (now - send.slot).total_seconds() > self.grace:  # catch-up `once`: one run for the whole backlog
            self._move_on(entry, send.slot, now)
            return
        table = self._tables.get(entry.table_key)  # within the grace every slot goes, late, in order
        entry.next_slot = table.slot_after(send.slot) if table else None
        self._push(entry)

    def _finish_one_off(self, entry: Entry, slot: dt.datetime) -> None:
        """A one-off schedule is disabled once sent (django-celery-beat's rule), with its
        run count reset so that enabling it again runs it once more."""
        self._disable.add(entry.pk)
        self._writes[entry.pk] = (slot, 0)
        if entry.table_key[0] == "clocked":  # its one slot is sent again if it is enabled again
            self._unmark.add(entry.pk)
        self._remove(entry.pk)

    def _requeue(self, sends: list[Send]) -> None:
        for send in sends:
            send.entry.next_slot = send.slot
            self._push(send.entry)

    def _publish(self, sends: list[Send]) -> None:
        """Send what was claimed. Stopped by SIGTERM mid-way (Celery raises SystemExit), it
        first sends the rest of what it claimed: those slots are no other beat's to send."""
        if not sends:
            return
        worst, stopping = 0.0, None
        with self.app.producer_or_acquire() as producer:
            for send in sends:
                try:
                    if self._send_one(send, producer):
                        worst = max(worst, (timezone.now() - send.slot).total_seconds())
                except (SystemExit, KeyboardInterrupt) as exc:  # the interrupted one may have gone: not again
                    stopping = exc
        self._lag = worst
        self._sent += len(sends)
        if stopping is not None:
            raise stopping

    def _send_one(self, send: Send, producer: Any) -> bool:
        entry = send.entry
        try:
            args, kwargs = entry.args, entry.kwargs
        except ValueError as exc:  # not the broker's fault: trying again would not help
            logger.error(
                "schedule %s has arguments that are not JSON (%s): not sent; fix it in the admin", entry.name, exc
            )
            return False
        try:
            self.app.send_task(entry.task, args, kwargs, producer=producer, **entry.message_options(send.slot))
        except Exception as exc:  # noqa: BLE001  (a failed send must not stop the others)
            logger.error("could not send %s for %s: %r; trying again", entry.name, send.slot.isoformat(), exc)
            self._unsent.append(send)
            return False
        logger.info("Scheduler: Sending due task %s (%s) for %s", entry.name, entry.task, send.slot.isoformat())
        return True

    # --- changes and writes -------------------------------------------------------------------

    def apply_changes(self) -> None:
        """Reload what the change log names. The log position moves on only once the
        reloads succeeded, so a database error mid-way means the same rows next time."""
        rows, bumped = self._read_changes()
        tasks = {object_id for _, kind, object_id, _ in rows if kind in (ScheduleChange.TASK, ScheduleChange.BEAT)}
        shared = {(kind, object_id) for _, kind, object_id, _ in rows if kind in SHARED_SCHEDULES}
        if shared:
            self._reload_tables(shared)
        if tasks:
            self._reload_tasks(tasks)
        self._track_gaps([row[0] for row in rows])
        edits = [at for _, kind, _, at in rows if kind != ScheduleChange.BEAT]  # beat's own rows explain no bump
        if self._bulk_update_seen(bumped, edits):
            logger.info("schedules were changed in bulk, with no change log: reloading all of them")
            self.load_all()
            if self.lease.is_leader:
                self._take_over()

    def _read_changes(self) -> tuple[list[tuple[int, str, int, dt.datetime]], dt.datetime | None]:
        """The new change-log rows (and any still missing from earlier), and django-celery-
        beat's `PeriodicTasks` timestamp."""
        now = time.monotonic()
        self._gaps = {gap: deadline for gap, deadline in self._gaps.items() if deadline > now}
        sql, params = changes_query()
        with connection.cursor() as cursor:
            cursor.execute(sql, [self._change_id, *params[1:]])
            rows = [(pk, kind, object_id, aware(at)) for pk, kind, object_id, at in cursor.fetchall()]
        if self._gaps:
            late = ScheduleChange.objects.filter(id__in=list(self._gaps)).values_list("id", "kind", "object_id", "at")
            rows += list(late)
        bumped = next((at for _, kind, _, at in rows if kind == BUMP), None)
        return sorted(row for row in rows if row[1] != BUMP), bumped

    def _track_gaps(self, ids: list[int]) -> None:
        """Change-log ids are handed out before their transactions commit, so a later id
        can be seen before an earlier one: the missing ones are looked for again for a while."""
        now = time.monotonic()
        for found in ids:
            self._gaps.pop(found, None)
        top = max(ids, default=self._change_id)
        seen = set(ids)
        for missing in range(self._change_id + 1, top):
            if missing not in seen:
                self._gaps[missing] = now + GAP_PATIENCE
        self._change_id = max(self._change_id, top)

    def _prune_change_log(self) -> None:
        self._next_prune = time.monotonic() + PRUNE_EVERY
        ScheduleChange.objects.filter(at__lt=timezone.now() - CHANGE_LOG_RETENTION).delete()

    def _bulk_update_seen(self, bumped: dt.datetime | None, logged: list[dt.datetime]) -> bool:
        """Every `PeriodicTask.save()` bumps django-celery-beat's `PeriodicTasks` timestamp
        just before its change-log row is written; its admin's bulk actions bump it after a
        `QuerySet.update()` that writes no row. A bump that no row explains, still so one
        check later (the row may commit a moment after the bump), is a bulk update."""
        if bumped is None or (self._changes_ts is not None and bumped <= self._changes_ts):
            return False
        if any(bumped <= at <= bumped + BUMP_WINDOW for at in logged):
            self._changes_ts, self._unexplained = bumped, None
            return False
        if self._unexplained != bumped:
            self._unexplained = bumped
            return False
        self._changes_ts, self._unexplained = bumped, None
        return True

    def _reload_tables(self, keys: set[tuple[str, int]]) -> None:
        for kind, pk in keys:
            self._tables.pop((kind, pk), None)
            self._load_tables([(kind, SHARED_SCHEDULES[kind])], [pk])
            for user in list(self._users.get((kind, pk), ())):
                entry = self._entries[user]
                entry.version = next(self._seq)
                self._plan(entry, push=True)

    def _reload_tasks(self, pks: set[int]) -> None:
        found = set()
        for row in rows(PeriodicTask.objects.filter(pk__in=pks, enabled=True)):
            found.add(row[0])
            entry = self._add(row)
            if entry is not None:
                self._push(entry)
        for pk in pks - found:
            self._remove(pk)
        gone = pks - set(PeriodicTask.objects.filter(pk__in=pks).values_list("pk", flat=True))
        if gone and self.lease.is_leader:
            self.ledger.forget(gone)
        logger.info("beat reloaded %d changed schedule(s)", len(pks))

    def flush(self) -> None:
        """Write the slots sent since the last flush: `last_run_at` and the run count."""
        if not (self._writes or self._disable):
            return
        dirty, self._writes = self._writes, {}
        disable, self._disable = self._disable, set()
        try:
            self._write(dirty, disable)
        except (DatabaseError, InterfaceError):
            for pk, (slot, runs) in dirty.items():  # keep them for the next flush
                newer, more = self._writes.get(pk, (slot, 0))
                self._writes[pk] = (max(slot, newer), runs + more)
            self._disable |= disable
            raise
        self._forget_marks()

    def _forget_marks(self) -> None:
        """Once the database says a clocked one-off is disabled, its mark may go."""
        done = set(self._unmark)
        if not done:
            return
        try:
            self.ledger.forget(done)
        except redis.RedisError:
            return  # next flush
        self._unmark -= done

    def _write(self, dirty: dict[int, tuple[dt.datetime, int]], disable: set[int]) -> None:
        rows = [
            PeriodicTask(pk=pk, last_run_at=slot, total_run_count=F("total_run_count") + runs)
            for pk, (slot, runs) in dirty.items()
        ]
        PeriodicTask.objects.bulk_update(rows, ["last_run_at", "total_run_count"], batch_size=500)
        if disable:
            PeriodicTask.objects.filter(pk__in=disable).update(enabled=False, total_run_count=0)
            ScheduleChange.objects.bulk_create(ScheduleChange(kind=ScheduleChange.BEAT, object_id=pk) for pk in disable)

    def sync(self) -> None:
        try:
            self.flush()
        except (DatabaseError, InterfaceError) as exc:
            logger.error("beat could not write last_run_at of %d schedules: %s", len(self._writes), exc)

    def should_sync(self) -> bool:
        return False  # the tick writes once a second (housekeeping)

    def close(self) -> None:
        super().close()
        self.lease.release()

    # --- heartbeat --------------------------------------------------------------------

    def _heartbeat(self) -> None:
        facts = {
            "role": "leader" if self.lease.is_leader else "follower",
            "token": self.lease.token if self.lease.is_leader else None,
            "schedules": len(self._entries),
            "lag": round(self._lag, 3),
            "sent": self._sent,
        }
        leader.beat(self.lease.client, self.lease.node, facts)
