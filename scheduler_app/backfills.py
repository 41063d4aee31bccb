"""Backfills: a schedule run for every slot between two moments, as if beat had sent them.

`plan` lists the slots (each with the moment beat sends it for: its jitter and calendars
in, `schedules.slots_between`) and which are skipped because they already have a run that
did the work; it writes nothing (a dry run is a plan). `start` writes the backfill and its
slots in one transaction; beat's leader sends them
(`beat/backfill_sender.py`), at most `max_concurrent` in flight. `cancel` stops what has not
been sent. The three doors (the command, the admin, the API) only call these, and write
the audit entry (`audit.record` with `audited(...)`) in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from celery import states as celery_states
from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app import schedules
from scheduler_app.beat import slots as beat_slots
from scheduler_app.models import Backfill, BackfillSlot
from scheduler_app.runs import states

MAX_CONCURRENT = 100
COUNTED_UP_TO = 10  # a refused range's slots are counted up to this many times the limit
# A slot is skipped (unless rerun) when a run of it did the work or may still do it: it
# succeeded, or it is queued or running now. A slot whose run failed, was revoked, expired
# or was skipped by the overlap policy did not do its work: a backfill runs it again.
DONE_OR_UNDER_WAY = frozenset(
    {celery_states.SUCCESS, celery_states.PENDING, celery_states.RECEIVED, celery_states.STARTED,
     celery_states.RETRY, states.PROGRESS, states.WAITING}
)  # fmt: skip


class BackfillError(Exception):
    """What went wrong and what to do, for the operator (the API answers it with 409)."""


class BackfillRefused(BackfillError):
    """The request cannot be planned as given (a bad range, too many slots): nothing was
    written (the API answers it with 400)."""


def username(user: Any) -> str:
    return getattr(user, "get_username", lambda: "")() or "system"


@dataclass(frozen=True)
class PlannedSlot:
    position: int
    slot: dt.datetime  # the nominal slot
    at: dt.datetime  # the moment beat sends it for (`scheduled_for`)
    skipped_because: str = ""  # "already ran: run <id> SUCCESS"

    @property
    def skipped(self) -> bool:
        return bool(self.skipped_because)


@dataclass(frozen=True)
class Plan:
    task: PeriodicTask
    start: dt.datetime
    end: dt.datetime
    newest_first: bool
    rerun: bool
    max_concurrent: int
    slots: list[PlannedSlot]

    @property
    def to_run(self) -> int:
        return sum(not s.skipped for s in self.slots)

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.slots)

    def summary(self) -> str:
        order = "newest first" if self.newest_first else "oldest first"
        return (f"{self.task.name}: {len(self.slots)} slot(s) from {self.start.isoformat()} to "
                f"{self.end.isoformat()}: {self.to_run} to run ({order}, at most {self.max_concurrent} at once), "
                f"{self.skipped} skipped (already ran)")  # fmt: skip


def max_slots() -> int:
    return int(settings.BACKFILL_MAX_SLOTS)


def plan(task: PeriodicTask, start: dt.datetime, end: dt.datetime, *, rerun: bool = False, newest_first: bool = False,
         max_concurrent: int = 1, limit: int | None = None, now: dt.datetime | None = None) -> Plan:  # fmt: skip
    """The slots a backfill of `task` from `start` to `end` (both inclusive) would send, in
    the order it sends them, those already run marked skipped (all sent when `rerun`).
    Refused (BackfillRefused) for an empty or future range, a schedule that cannot be
    computed or has expired, `max_concurrent` out of 1..100, or more than `limit` slots
    (settings.BACKFILL_MAX_SLOTS by default). A disabled schedule may be backfilled."""
    now = now or timezone.now()
    limit = max_slots() if limit is None else limit
    check_request(task, start, end, max_concurrent, now)
    try:
        table = schedules.table_of(task)
        found = schedules.slots_between(task, first_of_range(task, table, start), end, limit, table)
    except (beat_slots.InvalidSchedule, ValueError, OverflowError) as exc:
        raise BackfillRefused(f"the schedule {task.name!r} cannot be computed ({exc}); fix it first.") from None
    if len(found) > limit:
        raise BackfillRefused(too_many(task, start, end, limit, table))
    if newest_first:
        found.reverse()
    ran = {} if rerun else runs_of_slots(task, start, end)
    planned = [PlannedSlot(n, slot, at, beats_own(task, slot, at, now, rerun) or ran.get(slot) or ran.get(at) or "")
               for n, (slot, at) in enumerate(found)]  # fmt: skip
    return Plan(task, start, end, newest_first, rerun, max_concurrent, planned)


RECENT = dt.timedelta(hours=1)  # a slot beat sent this recently may have no recorded run yet (its queue, the recorder)


def beats_own(task: PeriodicTask, slot: dt.datetime, at: dt.datetime, now: dt.datetime, rerun: bool) -> str:
    """Why beat, not the backfill, has this slot, or "": a slot sent after now, or within
    the catch-up grace of an enabled schedule, is beat's to send (`rerun` or not); one at or
    before the schedule's last slot sent within the last hour may be queued or not yet
    recorded (unless `rerun`). Sending either would run the slot twice."""
    grace = dt.timedelta(seconds=settings.BEAT_CATCH_UP_GRACE_SECONDS)
    if at > now or (task.enabled and at > now - grace):
        return f"beat's to send: due at {at:%Y-%m-%d %H:%M:%S} UTC, within beat's catch-up grace or later"
    if not rerun and task.last_run_at is not None and slot <= task.last_run_at and at > now - RECENT:
        return "sent by beat within the last hour: its run may still be queued or not yet recorded"
    return ""


def check_request(task: PeriodicTask, start: dt.datetime, end: dt.datetime, max_concurrent: int,
                  now: dt.datetime) -> None:  # fmt: skip
    if timezone.is_naive(start) or timezone.is_naive(end):
        raise BackfillRefused("from and to must carry their time zone (or be read in the server's).")
    if end <= start:
        raise BackfillRefused(f"to ({end.isoformat()}) must be later than from ({start.isoformat()}).")
    if end > now:
        raise BackfillRefused(f"to ({end.isoformat()}) is in the future (now {now.isoformat(timespec='seconds')}): "
                              "slots not yet due are beat's to send; end the range now at the latest.")  # fmt: skip
    if not 1 <= max_concurrent <= MAX_CONCURRENT:
        raise BackfillRefused(f"max concurrent must be from 1 to {MAX_CONCURRENT}; got {max_concurrent}.")
    if task.expires and task.expires <= now:
        raise BackfillRefused(f"{task.name!r} expired at {task.expires.isoformat()}: its runs would expire unrun; "
                              "clear or move its expiry first.")  # fmt: skip


def first_of_range(task: PeriodicTask, table: beat_slots.Timetable, start: dt.datetime) -> dt.datetime:
    """Where the range's slots start: nothing before the schedule's start time (beat sends
    nothing before it). `slots_between` keeps an interval on beat's grid."""
    return max(start, task.start_time) if task.start_time else start


def too_many(task: PeriodicTask, start: dt.datetime, end: dt.datetime, limit: int,
             table: beat_slots.Timetable) -> str:  # fmt: skip
    counted = len(schedules.slots_between(task, first_of_range(task, table, start), end, COUNTED_UP_TO * limit, table))
    count = f"more than {COUNTED_UP_TO * limit}" if counted > COUNTED_UP_TO * limit else str(counted)
    return (f"the range holds {count} slots of {task.name!r}, more than the limit of {limit} "
            "(BACKFILL_MAX_SLOTS); backfill a shorter range, or several ranges one after the other.")  # fmt: skip


def runs_of_slots(task: PeriodicTask, start: dt.datetime, end: dt.datetime) -> dict[dt.datetime, str]:
    """The moments (its `scheduled_for` and its `slot`) of each recorded run of the schedule
    that did, or may still do, its slot's work, with why the slot is skipped."""
    found: dict[dt.datetime, str] = {}
    rows = TaskResult.objects.filter(periodic_task_name=task.name, date_created__gte=start - dt.timedelta(days=1),
                                     status__in=DONE_OR_UNDER_WAY, meta__contains="scheduled_for")  # fmt: skip
    for task_id, status, meta in rows.values_list("task_id", "status", "meta").iterator():
        why = f"already ran: run {task_id} {status}" if status == celery_states.SUCCESS else f"run {task_id} {status}"
        for moment in moments_of(meta):
            found.setdefault(moment, why)
    return found


def moments_of(meta: str | None) -> list[dt.datetime]:
    try:
        context = json.loads(meta or "{}")
    except ValueError:
        return []
    if not isinstance(context, dict):
        return []
    found = []
    for key in ("scheduled_for", "slot"):
        value = context.get(key)
        try:
            moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            moment = None
        if moment is not None and timezone.is_aware(moment):
            found.append(moment)
    return found


# --- writes ----------------------------------------------------------------------------------


@transaction.atomic
def start(task: PeriodicTask, start: dt.datetime, end: dt.datetime, *, by: Any, via: str, rerun: bool = False,
          newest_first: bool = False, max_concurrent: int = 1, now: dt.datetime | None = None) -> Backfill:  # fmt: skip
    """Plan the backfill and write it with its slots (waiting, or skipped) in one transaction
    (a door's transaction, with its audit entry, when it has one); beat's leader sends it
    from its next second on."""
    planned = plan(task, start, end, rerun=rerun, newest_first=newest_first, max_concurrent=max_concurrent, now=now)
    user = by if getattr(by, "is_authenticated", False) else None
    backfill = Backfill.objects.create(
        periodic_task=task, schedule_name=task.name, start=start, end=end, newest_first=newest_first,
        max_concurrent=max_concurrent, rerun=rerun, requested_by=user, requested_by_name=username(by), via=via,
        state=Backfill.RUNNING if planned.to_run else Backfill.FINISHED,
        finished_at=None if planned.to_run else timezone.now(),
    )  # fmt: skip
    BackfillSlot.objects.bulk_create(
        BackfillSlot(backfill=backfill, slot=s.slot, at=s.at, position=s.position,
                     state=BackfillSlot.SKIPPED if s.skipped else BackfillSlot.WAITING)
        for s in planned.slots
    )  # fmt: skip
    return backfill


def audited(backfill: Backfill) -> dict[str, Any]:
    """What the audit entry of a started backfill keeps."""
    counts = progress(backfill)
    return {"backfill": backfill.pk, "from": backfill.start.isoformat(), "to": backfill.end.isoformat(),
            "slots": counts.total, "skipped": counts.skipped, "newest_first": backfill.newest_first,
            "max_concurrent": backfill.max_concurrent, "rerun": backfill.rerun}  # fmt: skip


@transaction.atomic
def cancel(backfill: Backfill, *, by: Any) -> int:
    """Stop the backfill: its waiting slots are cancelled (runs already sent go on).
    Returns how many slots were cancelled; refused for a backfill no longer running."""
    current = Backfill.objects.select_for_update().get(pk=backfill.pk)
    if current.state != Backfill.RUNNING:
        raise BackfillError(f"backfill {current.pk} is already {current.state}; only a running one can be cancelled.")
    cancelled = current.slots.filter(state=BackfillSlot.WAITING).update(state=BackfillSlot.CANCELLED)
    current.state, current.finished_at, current.cancelled_by_name = Backfill.CANCELLED, timezone.now(), username(by)
    current.save(update_fields=["state", "finished_at", "cancelled_by_name"])
    backfill.state, backfill.finished_at, backfill.cancelled_by_name = current.state, current.finished_at, \
        current.cancelled_by_name  # fmt: skip
    return cancelled


# --- reads -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    total: int
    done: int  # sent, and its run has ended (any final state)
    running: int  # sent (or claimed), its run not ended yet
    waiting: int
    skipped: int
    cancelled: int

    def as_dict(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in ("total", "done", "running", "waiting", "skipped", "cancelled")}

    @property
    def percent(self) -> int:
        """Done, skipped or cancelled, of the total."""
        settled = self.done + self.skipped + self.cancelled
        return round(100 * settled / self.total) if self.total else 100


IN_FLIGHT = (BackfillSlot.CLAIMED, BackfillSlot.SENT)


def progress(backfill: Backfill) -> Progress:
    counts = backfill.slots.aggregate(
        total=Count("pk"),
        done=Count("pk", filter=Q(state__in=IN_FLIGHT, finished=True)),
        running=Count("pk", filter=Q(state__in=IN_FLIGHT, finished=False)),
        waiting=Count("pk", filter=Q(state=BackfillSlot.WAITING)),
        skipped=Count("pk", filter=Q(state=BackfillSlot.SKIPPED)),
        cancelled=Count("pk", filter=Q(state=BackfillSlot.CANCELLED)),
    )
    return Progress(**counts)


def schedule_by_name_or_id(given: str) -> PeriodicTask:
    """The schedule a door names: its name, else its id (a number)."""
    found = PeriodicTask.objects.filter(name=given).first()
    if found is None and given.isascii() and given.isdecimal():
        found = PeriodicTask.objects.filter(pk=int(given)).first()
    if found is None:
        raise BackfillRefused(f"no schedule {given!r}: give a schedule's name or id (manage.py list_schedules).")
    return found


def parse_moment(text: str, what: str) -> dt.datetime:
    """An ISO 8601 moment; one without an offset is read in the server's time zone (TIME_ZONE)."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BackfillRefused(f"{what}: {text[:60]!r} is not an ISO 8601 moment (e.g. 2025-03-01T00:00 or "
                              "2025-03-01T00:00+01:00).") from None  # fmt: skip
    return timezone.make_aware(moment) if timezone.is_naive(moment) else moment
