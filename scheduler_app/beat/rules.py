"""A schedule's own rules over its timetable: `H` hash values, jitter, business calendars.

Timetables are shared between schedules (one per crontab or interval row); these rules
belong to one schedule, so they wrap its timetable (`for_schedule`). The wrapped
timetable keeps the schedule's **slots** (what `last_run_at`, the slot marks and catch-up
count in: an interval stays on its grid) and adds the **moment each slot is sent**
(`send_at`): the slot plus its jitter, or, under a calendar's `move` rule, the next
allowed moment. Every value is derived from the schedule's name and the slot, so every
beat, every restart and every preview computes the same moments.

- `H` (Jenkins' hash spread, `beat.hashing`) in a crontab field: its values for this
  schedule's name (a shared `slots.HashedCron` becomes the schedule's own `Cron`).
- jitter: each slot is sent `[0, jitter)` seconds late, by a hash of (name, slot).
- calendars: a slot whose send moment a calendar excludes is skipped (left out of the
  slots: it is never due, never late) or moved: sent at the next allowed moment. Several
  slots that move to the same moment are one run, as the latest of them; one that would
  land on or after the schedule's next allowed run is that run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from scheduler_app.beat import slots
from scheduler_app.beat.calendars import Calendars, NothingAllowed

if TYPE_CHECKING:
    from scheduler_app.models import SchedulePolicy

UTC = dt.UTC
EPSILON = dt.timedelta(microseconds=1)
WALK_LIMIT = 10_000  # slots looked at before a schedule counts as having no admitted slot
# (field, lowest, highest): H draws from these; day of month stops at 28, as in Jenkins.


# --- jitter and calendars ------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """One slot as it goes: sent at `at` (None: skipped), and why, in words. A moved slot
    knows the allowed moment it moved to (`allowed`, before its jitter)."""

    slot: dt.datetime
    at: dt.datetime | None
    note: str = ""
    allowed: dt.datetime | None = None
    stands_with: dt.datetime | None = None  # moved into the run of this (later) slot

    @property
    def runs(self) -> bool:
        """Whether this slot has a run of its own."""
        return self.at is not None and self.stands_with is None


@dataclass(eq=False)
class Ruled:
    """A schedule's timetable with its jitter and calendars: its slots and their send moments."""

    base: slots.Timetable
    name: str
    jitter: float = 0.0
    calendars: Calendars = field(default_factory=lambda: Calendars(()))
    move: bool = False
    _memo: tuple[dt.datetime, Verdict] | None = field(default=None, repr=False)

    @property
    def zone(self) -> str:
        return self.base.zone

    # the Timetable protocol, on slots
    def slot_after(self, moment: dt.datetime) -> dt.datetime | None:
        return self.admit(self.base.slot_after(moment))

    def slot_following(self, last: dt.datetime, now: dt.datetime) -> dt.datetime | None:
        return self.admit(self.base.slot_following(last, now))

    def latest_until(self, slot: dt.datetime, cutoff: dt.datetime) -> dt.datetime:
        """The latest slot from `slot` on whose send moment is at or before `cutoff` (`slot`
        itself when there is none: callers compare its send moment). An excluded stretch
        is jumped over in one step, back to the last moment the calendars allow before it."""
        found = slots.latest_until(self.base, slot, cutoff)
        for _ in range(WALK_LIMIT):
            if found <= slot:
                return slot
            verdict = self.verdict(found)
            if self.admit(found) == found and verdict.at is not None and verdict.at <= cutoff:
                return found
            earlier = previous(self.base, found)
            if self.calendars and (verdict.at is None or verdict.allowed is not None):  # in an excluded stretch
                allowed = self.calendars.previous_allowed(found + self.offset(found))
                jump = slots.latest_until(self.base, slot, allowed) if allowed is not None and allowed > slot else slot
                earlier = min(earlier, jump) if earlier is not None else jump
            if earlier is None:
                return slot
            found = earlier
        return slot

    # the moments
    def offset(self, slot: dt.datetime) -> dt.timedelta:
        if not self.jitter:
            return dt.timedelta(0)
        digest = hashlib.blake2b(f"{self.name}\x00{slot.timestamp():.6f}".encode(), digest_size=8).digest()
        millis = int.from_bytes(digest, "big") % max(1, int(self.jitter * 1000))
        return dt.timedelta(milliseconds=millis)

    def send_at(self, slot: dt.datetime) -> dt.datetime:
        """When this (admitted) slot is sent."""
        at = self.verdict(slot).at
        return at if at is not None else slot

    def verdict(self, slot: dt.datetime) -> Verdict:
        if self._memo is not None and self._memo[0] == slot:
            return self._memo[1]
        found = self._judge(slot)
        self._memo = (slot, found)
        return found

    def _judge(self, slot: dt.datetime) -> Verdict:
        offset = self.offset(slot)
        at = slot + offset
        jittered = f"jitter +{offset.total_seconds():g}s" if self.jitter else ""
        reason = self.calendars.why_excluded(at) if self.calendars else None
        if reason is None:
            return Verdict(slot, at, jittered)
        if not self.move:
            return Verdict(slot, None, f"skipped: {reason}")
        try:
            allowed = self.calendars.next_allowed(at)
        except NothingAllowed:
            return Verdict(slot, None, f"skipped: {reason}; no allowed time follows")
        moved = allowed + offset
        if self.calendars.why_excluded(moved):
            moved = allowed
        return Verdict(slot, moved, f"moved: {reason}", allowed)

    def admit(self, candidate: dt.datetime | None) -> dt.datetime | None:
        """The first slot from `candidate` on that is sent: excluded slots skipped; of the
        slots moved to one allowed moment, the latest, unless the next slot runs then anyway."""
        for _ in range(WALK_LIMIT):
            if candidate is None or not self.calendars:
                return candidate
            verdict = self.verdict(candidate)
            if verdict.at is None:  # skipped: on to the first slot sent after the excluded time
                candidate = self.after_excluded(candidate)
                continue
            if verdict.allowed is None:  # allowed where it is
                return candidate
            latest, following = self.moved_together(candidate, verdict.allowed)
            if following is not None and following <= verdict.allowed and self.verdict(following).allowed is None:
                return following  # the next slot is due by the allowed moment: it runs, for the moved ones too
            return latest
        return None

    def after_excluded(self, slot: dt.datetime) -> dt.datetime | None:
        try:
            allowed = self.calendars.next_allowed(slot + self.offset(slot))
        except NothingAllowed:
            return None
        jump = max(slot, allowed - dt.timedelta(seconds=self.jitter) - EPSILON)
        return self.base.slot_following(slot, jump)  # an interval stays on its grid

    def moved_together(self, first: dt.datetime, allowed: dt.datetime) -> tuple[dt.datetime, dt.datetime | None]:
        """Of the slots from `first` on whose jittered moment comes before `allowed` (all
        excluded: `allowed` is the first allowed moment after them), the latest, and the slot
        after it. The same answer from any slot of the group: the group is one run."""
        latest = first
        cutoff = allowed - dt.timedelta(seconds=self.jitter) - EPSILON
        if cutoff > first:
            latest = max(first, slots.latest_until(self.base, first, cutoff))
        following = self.base.slot_after(latest)
        for _ in range(WALK_LIMIT):
            if following is None or following + self.offset(following) >= allowed:
                break
            latest, following = following, self.base.slot_after(following)
        return latest, following

    def explain(self, after: dt.datetime, count: int) -> Iterator[Verdict]:
        """The next `count` slots of the timetable as they go, the skipped and merged ones too."""
        moment: dt.datetime | None = after
        for _ in range(count):
            moment = self.base.slot_after(moment) if moment else None
            if moment is None:
                return
            verdict = self.verdict(moment)
            stands = self.admit(moment) if verdict.allowed is not None else moment
            if stands is not None and stands != moment:  # moved, and one run with another slot
                note = f"{verdict.note}; one run with the slot of {stands:%Y-%m-%d %H:%M} UTC"
                verdict = Verdict(moment, self.send_at(stands), note, verdict.allowed, stands)
            yield verdict


def previous(table: slots.Timetable, slot: dt.datetime) -> dt.datetime | None:
    """The slot before `slot`, where the timetable can say (interval, crontab)."""
    if isinstance(table, slots.Interval):
        return slot - dt.timedelta(seconds=table.seconds)
    if isinstance(table, slots.Cron):
        return table.slot_before(slot)
    return None


def for_schedule(base: slots.Timetable, name: str, *, jitter: float = 0.0, calendars: Calendars | None = None,
                 move: bool = False) -> slots.Timetable:  # fmt: skip
    """The schedule's timetable: `base` itself when no rule applies (most schedules)."""
    if isinstance(base, slots.HashedCron):  # its own Cron, shared with the schedules whose names give the same values
        base = base.named(name)
    if not jitter and not calendars:
        return base
    return Ruled(base, name, float(jitter), calendars or Calendars(()), move)


def for_policy(base: slots.Timetable, name: str, policy: SchedulePolicy | None,
               found: Calendars | None = None) -> slots.Timetable:  # fmt: skip
    """`for_schedule` from a schedule's policy row: its jitter and calendar rule, with
    `found`, its calendars as beat reads them (the caller's cache decides how they are read)."""
    if policy is None:
        return for_schedule(base, name)
    return for_schedule(base, name, jitter=float(policy.jitter or 0), calendars=found,
                        move=policy.calendar_rule == "move")  # fmt: skip


def send_at(table: slots.Timetable, slot: dt.datetime) -> dt.datetime:
    """When a slot of `table` is sent: the slot itself, unless the schedule's rules move it."""
    return table.send_at(slot) if isinstance(table, Ruled) else slot


def min_gap(table: slots.Timetable, after: dt.datetime, count: int = 50) -> float | None:
    """The shortest time between two of the next `count` slots (None: fewer than two)."""
    if isinstance(table, slots.Interval):
        return table.seconds
    times = list(slots.upcoming(table, after, count))
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    return min(gaps) if gaps else None
