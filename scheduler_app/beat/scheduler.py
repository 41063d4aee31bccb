"""Beat: where beat decides what is due, sends it, and keeps up with the database.

`Scheduler` keeps django-celery-beat's `DatabaseScheduler` contract (interval, crontab
with its zone, solar, clocked, `one_off`, `start_time`, `expires`, enable/disable, edits
and deletes picked up, `last_run_at` persisted) but not its costs. It wires the parts,
each readable alone:

- `store`: the enabled schedules as lean entries (`entries`), with timetables shared
  between the entries that use the same row; loaded once, then reloaded row by row;
- `due`: a heap of next-due times: a tick looks at the top only, and sends every due entry;
- `change_reader`: the change log (written by the database's triggers, `triggers`), read
  once a second: only changed rows are reloaded, a bulk `QuerySet.update()` included;
- `planning`: what a due entry sends (catch-up, expiry, one-offs) and its next slot; a
  standby's heap kept current from the leader's marks;
- `dispatch`: claim, then send, under the leader's lease;
- `writes`: `last_run_at` written in batches, once a second, in one statement.

Dispatch and failover: only the holder of the Redis lease sends (`leader`), and every
send is first claimed, under the fencing check, as (schedule, slot): a slot is sent once
however many beats run, restart or take over. `last_run_at` is the slot sent (not the
moment of sending), so interval schedules do not drift and every beat computes the same
slots. Housekeeping runs once a second, split over two ticks: Redis (the lease and the
heartbeat), then the database (writes, the change log).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import logging
import time
from typing import Any, NoReturn

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, InterfaceError, close_old_connections, connection
from django.utils import timezone
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from scheduler_app.beat import change_reader, checks, entries, leader, triggers
from scheduler_app.beat.backfill_sender import BackfillSender
from scheduler_app.beat.change_reader import ChangeReader, Position, prune_change_log
from scheduler_app.beat.dispatch import Dispatcher
from scheduler_app.beat.due import DueHeap
from scheduler_app.beat.planning import FOLLOW_BATCH, FOLLOW_LAG, Planner
from scheduler_app.beat.store import EntryStore
from scheduler_app.beat.writes import PendingWrites
from scheduler_app.models import SHARED_SCHEDULES, ScheduleChange
from scheduler_app.runs.context import HEADER

logger = logging.getLogger(__name__)
PRUNE_EVERY = 300.0  # seconds between two prunings of the change log by the leader
FULL_RELOAD_ABOVE = 200_000  # more schedules changed at once than this: reload all (a row costs 3x in a reload)


class Scheduler(DatabaseScheduler):  # type: ignore[misc]  # django-celery-beat ships no types
    Entry = ModelEntry  # used by django-celery-beat's update_from_dict for conf.beat_schedule

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lease = leader.Lease(ttl=float(settings.BEAT_LEASE_SECONDS))
        self.ledger = leader.SlotLedger(self.lease)
        self.check_interval = float(settings.BEAT_CHECK_SECONDS)
        self.due = DueHeap()
        self.writes = PendingWrites(self.ledger)
        self.store = EntryStore(self.due, self.writes)
        self.changes = ChangeReader()
        self.planner = Planner(self.store, self.due, self.writes, grace=float(settings.BEAT_CATCH_UP_GRACE_SECONDS))
        self._next_housekeeping = 0.0
        self._next_database = 0.0
        self._next_prune = 0.0
        super().__init__(*args, **kwargs)  # loads the schedules (setup_schedule)
        self.dispatcher = Dispatcher(self.app, self.planner, self.due, self.ledger, self._still_leading, self.send_task)
        self.backfills = BackfillSender(self.app, self.lease, self.send_task)  # backfills: the leader sends them
        self.max_interval: float = min(self.max_interval, self.check_interval)
        # A task-sent event is a second publish per run (kombu's Redis transport takes a
        # client per publish): without it beat sends about a third more per second. Workers
        # still report received / started / succeeded, so Flower shows every run.
        self.app.conf.task_send_sent_event = False

    # --- loading --------------------------------------------------------------------

    def setup_schedule(self) -> None:
        """Write `beat_schedule` from the Celery configuration to the database, as
        django-celery-beat does, then load every enabled schedule. Installs no default
        entries: `result_expires` is refused (`install_default_entries`), and so is a
        database without the change log's triggers (beat would miss every edit)."""
        self.install_default_entries({})
        triggers.require(connection)
        if self.app.conf.beat_schedule:
            DatabaseScheduler.update_from_dict(self, self.app.conf.beat_schedule)
        self.load_all()

    @property
    def schedule(self) -> dict[str, entries.Entry]:  # `Entry` here is the class attribute above
        """The enabled schedules this beat holds, by name: copies of Beatkeeper's lean entries
        (not django-celery-beat's ModelEntry: no `.model`). A snapshot: changes come in
        through the change log on the tick, not by reading this."""
        return {  # entries that send alike share their options: each copy has its own
            entry.name: dataclasses.replace(entry, options=copy.deepcopy(entry.options), overrides={**entry.overrides})
            for entry in self.store.entries.values()
        }

    def install_default_entries(self, data: Any) -> None:
        """Celery's beat adds a nightly `celery.backend_cleanup` when `result_expires` is set,
        which would delete every run older than that, against the retention settings."""
        if self.app.conf.result_expires:
            raise ImproperlyConfigured(f"{checks.RESULT_EXPIRES_REFUSED} {checks.RESULT_EXPIRES_HINT}")

    # --- django-celery-beat's per-entry hooks, on Beatkeeper's entries -----------------

    def reserve(self, entry: entries.Entry) -> NoReturn:
        raise NotImplementedError(
            "Beatkeeper's beat does not reserve entries one at a time: each slot is claimed under the "
            "leader's lease in tick(), so that several beats never send it twice. To send a schedule now, "
            "use run now (scheduler_app.services.run_now, the admin, POST /api/schedules/{id}/run/) or "
            "apply_entry(entry), which sends it once without moving its schedule."
        )

    def apply_entry(self, entry: entries.Entry, producer: Any = None) -> None:
        """Send the entry once now, outside its schedule (its slots do not move), as
        Celery's `apply_entry` does; logs a failure instead of raising it."""
        logger.info("Scheduler: Sending due task %s (%s) out of schedule", entry.name, entry.task)
        try:
            self.apply_async(entry, producer=producer, advance=False)
        except Exception:  # noqa: BLE001  (as Celery's apply_entry: log, never stop beat)
            logger.exception("could not send %s", entry.name)

    def apply_async(self, entry: entries.Entry, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        """Send the entry now with everything beat would send it with (`advance=False`
        only: moving a schedule on is the tick's, under the lease)."""
        if advance:
            self.reserve(entry)  # raises, saying what to use instead
        options = {**entry.message_options(timezone.now()), **kwargs}
        header = options["headers"][HEADER]  # not one of its slots: a send from code
        options["headers"][HEADER] = {**header, "trigger": "direct", "scheduled_for": None}
        return self.send_task(entry.task, entry.args, entry.kwargs, producer=producer, **options)

    def schedules_equal(self, old: dict[str, entries.Entry] | None, new: dict[str, entries.Entry] | None) -> bool:
        """Whether two `schedule` snapshots send the same tasks with the same options on
        the same timetables (Celery's question; beat itself never asks it)."""
        if old is None or new is None:
            return old is new
        return old.keys() == new.keys() and all(entries.same_schedule(old[name], new[name]) for name in old)

    def load_all(self) -> None:
        """Load every enabled schedule. A database error part-way keeps what was loaded
        before (and the change-log position), so nothing is half-loaded."""
        started = time.perf_counter()
        position = Position.now()  # before the load: whatever changes meanwhile is read again
        self.store.load_all(self.app)
        self.changes.restart(position)
        self.due.rebuild(self.store.entries.values())
        logger.info("beat loaded %d schedules in %.2fs", len(self.store.entries), time.perf_counter() - started)

    # --- the tick -----------------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        now_monotonic = time.monotonic()
        if now_monotonic >= self._next_housekeeping:
            self.redis_housekeeping()
            self._next_database = max(self._next_database, now_monotonic + self.check_interval / 2)
        elif now_monotonic >= self._next_database:
            self.database_housekeeping()
        self.dispatcher.resend_unsent()  # claimed but not sent: ours to send, leader or not
        if not self.lease.is_leader:
            return self._until_housekeeping()
        if pause := self.dispatcher.pause():  # Redis refused the last claim: not again at once
            return min(pause, self._until_housekeeping())
        now = timezone.now()
        due = self.due.pop_due(now.timestamp(), self.store.entries)
        if due:
            self.dispatcher.dispatch(due, now)
        return self._sleep_for()

    def _until_housekeeping(self) -> float:
        return max(0.0, min(self._next_housekeeping, self._next_database) - time.monotonic())

    def _sleep_for(self) -> float:
        first = self.due.first_due()
        if first is None:
            return self._until_housekeeping()
        return max(0.0, min(first - time.time(), self._until_housekeeping(), self.max_interval))

    def _still_leading(self) -> bool:
        """Between two chunks of a long dispatch: renew the lease if it is time."""
        if time.monotonic() >= self._next_housekeeping - self.check_interval / 2:
            self.redis_housekeeping()  # logs, never raises
        return self.lease.is_leader

    # --- housekeeping -------------------------------------------------------------------

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
            if not self.lease.is_leader:
                self._follow()
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
            if self.lease.is_leader:
                self.backfills.tick()  # logs a bad backfill and goes on; a database error is reported below
            if self.lease.is_leader and time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + PRUNE_EVERY
                prune_change_log()
        except (DatabaseError, InterfaceError) as exc:
            logger.warning("beat cannot reach the database, trying again in %.0fs: %s", self.check_interval, exc)
            close_old_connections()
        except Exception:  # noqa: BLE001  (beat keeps ticking; the log says what went wrong)
            logger.exception("beat housekeeping (database part) failed; trying again in %.0fs", self.check_interval)

    def _take_over(self) -> None:
        """Becoming the leader: the slots due by now may have been sent by the beat that led
        before; their marks say (only theirs: the heap was kept current meanwhile). What
        this beat learned as a standby, the database learns now (`Planner.took_over`)."""
        now = timezone.now()
        self.planner.took_over()
        self._learn(self.due.pop_due(now.timestamp(), self.store.entries), now, leading=True)

    def _follow(self) -> None:
        """A standby, once a second: move on the entries whose slots the leader has sent
        (their marks), so that its heap is current when it takes over."""
        now = timezone.now()
        self.planner.forget_followed(time.monotonic())
        self._learn(self.due.pop_due(now.timestamp() - FOLLOW_LAG, self.store.entries, FOLLOW_BATCH), now, False)

    def _learn(self, due: list[entries.Entry], now: dt.datetime, leading: bool) -> None:
        if not due:
            return
        try:
            marks = self.ledger.marks(entry.pk for entry in due)
        except BaseException:
            for entry in due:  # as they were: looked at again (a claim never sends a marked slot again)
                self.due.push(entry)
            raise
        self.planner.learn(due, marks, now, leading)

    def _heartbeat(self) -> None:
        facts = {
            "role": "leader" if self.lease.is_leader else "follower",
            "token": self.lease.token if self.lease.is_leader else None,
            "schedules": len(self.store.entries),
            "lag": round(self.dispatcher.lag, 3),
            "sent": self.dispatcher.sent,
        }
        leader.beat(self.lease.client, self.lease.node, facts)

    # --- changes and writes -------------------------------------------------------------------

    def apply_changes(self) -> None:
        """Reload what the change log names. The log position moves on only once the
        reloads succeeded, so a database error mid-way means the same rows next time."""
        rows = self.changes.read(most=FULL_RELOAD_ABOVE + 1)
        if len(rows) > FULL_RELOAD_ABOVE:  # a bulk insert or edit of most of the table: one pass is sooner
            self._reload_everything(rows)
            return
        tasks = {object_id for _, kind, object_id, _ in rows if kind == ScheduleChange.TASK}
        shared = {(kind, object_id) for _, kind, object_id, _ in rows if kind in SHARED_SCHEDULES}
        calendars = {object_id for _, kind, object_id, _ in rows if kind == ScheduleChange.CALENDAR}
        if shared:
            self.store.reload_tables(shared)
        if calendars:
            tasks |= self.store.reload_calendars(calendars)
        if len(tasks) > FULL_RELOAD_ABOVE:  # a calendar that half the schedules use: one pass is sooner
            self._reload_everything(rows)
            return
        if tasks:
            gone = self.store.reload_tasks(tasks)
            if gone and self.lease.is_leader:
                self.ledger.forget(gone)
            logger.info("beat reloaded %d changed schedule(s)", len(tasks))
        self.changes.track_gaps([row[0] for row in rows])

    def _reload_everything(self, rows: list[change_reader.ChangeRow]) -> None:
        """More changes than a reload row by row is worth: one full load (from the log's
        position before it; if it fails, these rows are read again). Marks of the schedules
        deleted meanwhile go, as a reload by row drops them."""
        logger.info("more than %d schedules changed at once: reloading all of them", FULL_RELOAD_ABOVE)
        before, read_from = set(self.store.entries), self.changes.change_id
        self.load_all()
        self.changes.loaded_after(read_from, [row[0] for row in rows])
        if self.lease.is_leader:
            named = {object_id for _, kind, object_id, _ in rows if kind == ScheduleChange.TASK}
            self.ledger.forget(self.store.gone((before - set(self.store.entries)) | named))
            self._take_over()

    def flush(self) -> None:
        """Write the slots sent since the last flush: `last_run_at` and the run count."""
        self.writes.flush()

    def sync(self) -> None:
        try:
            self.flush()
        except (DatabaseError, InterfaceError) as exc:
            logger.error("beat could not write last_run_at of %d schedules: %s", len(self.writes), exc)

    def should_sync(self) -> bool:
        return False  # the tick writes once a second (housekeeping)

    def close(self) -> None:
        super().close()
        self.lease.release()
