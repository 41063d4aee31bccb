"""Deciding what a due entry sends, and where each entry goes next.

Catch-up: slots missed by less than the grace (a failover, a short restart, a busy moment)
are each sent, late, in order: no slot is lost. A backlog that reaches further back (beat
was down, or the schedule was re-enabled) follows the schedule's policy as a whole:
`skip` (the default, as cron does) sends none of it and waits for the next slot, `once`
sends one run for all of it, as the backlog's latest slot. Never a burst of old slots.
"""

from __future__ import annotations

import datetime as dt
import logging

from scheduler_app.beat import rules, slots
from scheduler_app.beat.due import DueHeap
from scheduler_app.beat.entries import Entry, Send
from scheduler_app.beat.store import EntryStore
from scheduler_app.beat.writes import PendingWrites

logger = logging.getLogger(__name__)


class Planner:
    def __init__(self, store: EntryStore, heap: DueHeap, writes: PendingWrites, grace: float) -> None:
        self.store = store
        self.heap = heap
        self.writes = writes
        self.grace = grace

    def decide_safely(self, entry: Entry, now: dt.datetime) -> Send | None:
        try:
            return self.decide(entry, now)
        except Exception:  # noqa: BLE001  (one schedule's fault never stops the others)
            logger.exception("schedule %s cannot be planned; it will not run until it is edited", entry.name)
            entry.next_slot = None
            return None

    def decide(self, entry: Entry, now: dt.datetime) -> Send | None:
        """What to send for a due entry: its slot, or nothing (expired, or a missed slot
        skipped under catch-up `skip`). Moves the entry to its next slot."""
        if entry.expires is not None and now >= entry.expires:
            logger.info("schedule %s expired at %s; disabling it", entry.name, entry.expires.isoformat())
            self.writes.disable.add(entry.pk)
            self.store.remove(entry.pk)
            return None
        slot, at = entry.next_slot, entry.due_at
        assert slot is not None and at is not None  # noqa: S101  (only entries with a slot are on the heap)
        late = (now - at).total_seconds()
        if late <= self.grace or entry.clocked:
            return Send(entry, slot, at)
        if entry.policy.catch_up == "skip":
            logger.info("skipping a missed slot of %s (%s, %.0fs late; catch-up is 'skip')", entry.name, at, late)
            self.move_on(entry, slot, now)
            return None
        table = self.store.table_of(entry)  # `once`: one run, as the backlog's latest slot, so it stays one
        assert table is not None  # noqa: S101  (an entry with a slot has its timetable)
        latest = slots.latest_until(table, slot, now)
        return Send(entry, latest, rules.send_at(table, latest))

    def move_on(self, entry: Entry, slot: dt.datetime, now: dt.datetime) -> None:
        table = self.store.table_of(entry)
        entry.next_slot = table.slot_following(slot, now) if table else None
        self.heap.push(entry)

    def advance(self, send: Send, now: dt.datetime, ran: bool) -> None:
        """After a claim: the slot is the entry's last run (`ran`: this beat sends it)."""
        entry = send.entry
        entry.last_run_at = send.slot
        entry.total_run_count += ran
        self.writes.sent(entry.pk, send.slot, ran)
        if entry.one_off:
            self.finish_one_off(entry, send.slot)
            return
        if (now - send.moment).total_seconds() > self.grace:  # catch-up `once`: one run for the whole backlog
            self.move_on(entry, send.slot, now)
            return
        table = self.store.table_of(entry)  # within the grace every slot goes, late, in order
        entry.next_slot = table.slot_after(send.slot) if table else None
        self.heap.push(entry)

    def finish_one_off(self, entry: Entry, slot: dt.datetime) -> None:
        self.writes.one_off_done(entry.pk, slot, clocked=entry.clocked)
        self.store.remove(entry.pk)

    def requeue(self, sends: list[Send]) -> None:
        """Claims not made (the lease lost, Redis away): the slots wait, as they were."""
        for send in sends:
            send.entry.next_slot = send.slot
            self.heap.push(send.entry)

    def take_over(self, marks: dict[int, dt.datetime]) -> None:
        """Becoming the leader: start from the last slot sent of each schedule, which the
        marks know even when the previous leader died before writing `last_run_at`."""
        for pk, mark in marks.items():
            entry = self.store.entries[pk]
            if entry.last_run_at is None or mark > entry.last_run_at:
                entry.last_run_at = mark
                self.writes.learned(pk, mark)  # the database learns what was sent
                if entry.one_off:
                    self.finish_one_off(entry, mark)
                    continue
                self.store.plan(entry)
        self.heap.rebuild(self.store.entries.values())
