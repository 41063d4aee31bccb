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
import time
from collections import deque

from scheduler_app.beat import rules, slots
from scheduler_app.beat.due import DueHeap
from scheduler_app.beat.entries import Entry, Send
from scheduler_app.beat.store import EntryStore
from scheduler_app.beat.writes import PendingWrites

logger = logging.getLogger(__name__)
FOLLOW_LAG = 2.0  # seconds a standby gives the leader to send a slot before it looks for the slot's mark
FOLLOW_BATCH = 10_000  # entries a standby looks at once a second (a backlog the leader works through waits)
FOLLOWED_KEPT = 30.0  # seconds a standby remembers what it learned from a mark, to write it if it leads


class Planner:
    def __init__(self, store: EntryStore, heap: DueHeap, writes: PendingWrites, grace: float) -> None:
        self.store = store
        self.heap = heap
        self.writes = writes
        self.grace = grace
        self.followed: deque[tuple[float, list[int]]] = deque()  # a standby's: (when, the pks it learned then)
        self.one_offs_sent: set[int] = set()  # a standby's: one-offs it saw sent, not yet dropped

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

    def learn(self, due: list[Entry], marks: dict[int, dt.datetime], now: dt.datetime, leading: bool) -> None:
        """Entries whose slots came due, and the marks (the last slot sent) of those that have
        one. An entry whose slot the mark covers moves on from the mark, which is right even
        when the leader that sent it died before writing `last_run_at`; the others are as
        they were. The leader (`leading`: just taken over) writes what it learned and then
        sends what is still due. A standby writes nothing: it remembers what it learned for
        when it leads (`took_over`), takes a one-off sent off its heap, and moves on a slot
        the leader must have skipped (catch-up `skip`, past the grace)."""
        learned: list[int] = []
        for entry in due:
            try:
                if self._learn(entry, marks.get(entry.pk), now, leading):
                    learned.append(entry.pk)
            except Exception:  # noqa: BLE001  (one schedule's fault never stops the others)
                logger.exception("schedule %s cannot be planned; it will not run until it is edited", entry.name)
        if learned and not leading:
            self.followed.append((time.monotonic(), learned))

    def _learn(self, entry: Entry, mark: dt.datetime | None, now: dt.datetime, leading: bool) -> bool:
        """Whether the mark moved the entry on."""
        if sent(entry, mark):
            assert mark is not None  # noqa: S101  (sent() says so)
            entry.last_run_at = mark
            if leading:
                self.writes.learned(entry.pk, mark)  # the database learns what was sent
            if entry.one_off:  # sent: a leader finishes it; a standby waits for the change log to drop it
                if leading:
                    self.finish_one_off(entry, mark)
                else:
                    self.one_offs_sent.add(entry.pk)
                return True
            self.store.plan(entry)
            self.heap.push(entry)
            return True
        if not leading and entry.next_slot is not None and self.skipped(entry, now):
            self.move_on(entry, entry.next_slot, now)
            return False
        self.heap.push(entry)
        return False

    def skipped(self, entry: Entry, now: dt.datetime) -> bool:
        """Whether the leader skipped the entry's slot rather than send it late."""
        at = entry.due_at
        late = (now - at).total_seconds() if at is not None else 0.0
        return late > self.grace + FOLLOW_LAG and entry.policy.catch_up == "skip" and not entry.clocked

    def took_over(self) -> None:
        """Becoming the leader: what this beat learned from marks as a standby lately, the
        beat that led may not have written (it died first): written again (writing a
        `last_run_at` twice is harmless), and a one-off seen sent is finished."""
        for _, pks in self.followed:
            for pk in pks:
                entry = self.store.entries.get(pk)
                if entry is not None and entry.last_run_at is not None:
                    self.writes.learned(pk, entry.last_run_at)
        for pk in self.one_offs_sent:
            entry = self.store.entries.get(pk)
            if entry is not None and entry.last_run_at is not None:  # not dropped by the change log meanwhile
                self.writes.learned(pk, entry.last_run_at)
                self.finish_one_off(entry, entry.last_run_at)
        self.followed.clear()
        self.one_offs_sent.clear()

    def forget_followed(self, now: float) -> None:
        """What a standby learned FOLLOWED_KEPT seconds ago the leader has written (it writes
        once a second); a one-off seen sent is kept until the change log drops it."""
        while self.followed and now - self.followed[0][0] >= FOLLOWED_KEPT:
            self.followed.popleft()
        self.one_offs_sent &= self.store.entries.keys()


def sent(entry: Entry, mark: dt.datetime | None) -> bool:
    """Whether the mark says the entry's slot was sent: newer than what it last ran, and at
    or after its next slot (an older mark is a former life of the schedule: it was
    re-enabled, or edited onto another grid)."""
    if mark is None or (entry.last_run_at is not None and mark <= entry.last_run_at):
        return False
    return entry.next_slot is not None and mark >= entry.next_slot  # (an entry without a slot is off the heap)
