"""Sending backfills (scheduler_app/backfills.py writes them): beat's leader, once a second.

For each running backfill: the slots whose runs have ended are marked finished, then
waiting slots are sent, in position order, until `max_concurrent` of its runs are in flight.
Each send is claimed first: a conditional UPDATE waiting -> claimed that also writes the
run id chosen for it (one row, or another beat has it), then the message is published,
its queued state written to the run's hash in Redis, and the slot marked sent. A slot
left claimed (the leader died between its claim and its sent mark) is sent again by the
next leader, with the same run id, only if its run has no state anywhere (no hash in
Redis, no row): see `resend_claimed` for the window that leaves.

The message is the one beat sends for the schedule (`entries.message_options`: queue,
exchange, routing key, priority, expiry, headers, the policy's overrides and limits),
through the scheduler's `send_task` as beat's own sends go, with the run header: trigger
`backfill`, who asked, the schedule, `scheduled_for` (the moment beat sends the slot for,
its jitter or calendar move in), `slot` (the nominal slot) and `backfill` (its id). The
overlap policy still applies on the worker; `max_concurrent` is beyond it.

A bad backfill (its schedule unreadable, a send refused) is logged and left for the next
second: beat never stops on one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from celery import states as celery_states
from celery.app.task import Context
from django.db import DatabaseError
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app.beat import calendars, entries, leader, rules, slots
from scheduler_app.beat.store import load_calendars
from scheduler_app.models import Backfill, BackfillSlot, SchedulePolicy
from scheduler_app.runs import ledger, states
from scheduler_app.runs.context import HEADER
from scheduler_app.runs.policy import task_policy

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)
IN_FLIGHT = (BackfillSlot.CLAIMED, BackfillSlot.SENT)
FINAL = states.TERMINAL_STATES - {celery_states.RETRY}  # a RETRY run goes on: not ended


class Message:
    """What one backfill sends for each of its slots: beat's message for the schedule."""

    def __init__(self, backfill: Backfill, app: Celery) -> None:
        task = PeriodicTask.objects.select_related("interval", "crontab", "solar", "clocked").get(
            pk=backfill.periodic_task_id
        )
        policy = SchedulePolicy.objects.filter(periodic_task=task).first()
        self.overrides = policy.overrides() if policy else {}
        values = {key: getattr(task, key) for key in ("name", "queue", "exchange", "routing_key", "priority",
                                                       "headers", "expires", "expire_seconds")}  # fmt: skip
        run_policy = task_policy(task.task, app).with_overrides(self.overrides)
        self.options = entries.message_options(values, self.overrides, run_policy)
        self.task, self.name = task.task, task.name
        self.args, self.kwargs = json.loads(task.args or "[]"), json.loads(task.kwargs or "{}")
        self.table = table_of(task, policy)
        self.changed = (task.date_changed, policy.updated_at if policy else None)
        self.backfill_id, self.by = backfill.pk, backfill.requested_by_name or "system"

    def header(self, slot: dt.datetime, planned: dt.datetime | None = None) -> dict[str, Any]:
        """`planned`: the send moment the backfill's confirmation showed (kept on its slot row)."""
        at = planned or rules.send_at(self.table, slot)
        return {"trigger": "backfill", "by": self.by, "schedule": self.name, "scheduled_for": at.isoformat(),
                "slot": slot.isoformat(), "backfill": self.backfill_id, "policy": self.overrides,
                "queued_at": timezone.now().isoformat()}  # fmt: skip

    def options_for(self, slot: dt.datetime, planned: dt.datetime | None = None) -> dict[str, Any]:
        options = dict(self.options)
        options["headers"] = {**options.get("headers", {}), HEADER: self.header(slot, planned)}
        return options


def table_of(task: PeriodicTask, policy: SchedulePolicy | None) -> slots.Timetable:
    """The schedule's timetable with its rules, as beat's store builds it."""
    base = slots.timetable(task.clocked or task.interval or task.crontab or task.solar)
    ids = set(policy.calendars.values_list("pk", flat=True)) if policy is not None else set()
    found = calendars.Calendars(tuple(load_calendars(ids).values())) if ids else None
    return rules.for_policy(base, task.name, policy, found)


class BackfillSender:
    def __init__(self, app: Celery, lease: leader.Lease, send_task: Callable[..., Any]) -> None:
        self.app = app
        self.lease = lease
        self.send_task = send_task  # the scheduler's: Celery's hook, as beat's own sends use
        self.messages: dict[int, Message] = {}  # per backfill, built once by this beat
        self.sent = 0

    def tick(self) -> None:
        """Once a second, while leading: every running backfill moves on; one that fails is
        logged and tried again next second (a database error is the caller's to report)."""
        running = list(Backfill.objects.filter(state=Backfill.RUNNING).order_by("pk"))
        for backfill in running:
            try:
                self.advance(backfill)
            except DatabaseError:
                raise
            except Exception:  # noqa: BLE001  (a bad backfill never stops beat)
                logger.exception("backfill %s of %s could not move on; trying again", backfill.pk,
                                 backfill.schedule_name)  # fmt: skip
        for gone in set(self.messages) - {b.pk for b in running}:
            del self.messages[gone]
        self.follow_cancelled()

    def follow_cancelled(self) -> None:
        """A cancelled backfill's runs already sent go on: their ends are still marked, so its
        progress settles (for a day after the cancel)."""
        since = timezone.now() - dt.timedelta(days=1)
        cancelled = Backfill.objects.filter(state=Backfill.CANCELLED, finished_at__gte=since)
        cancelled = cancelled.filter(slots__state=BackfillSlot.SENT, slots__finished=False).distinct()
        for backfill in cancelled:
            self.mark_finished(backfill)

    def advance(self, backfill: Backfill) -> None:
        self.mark_finished(backfill)
        self.resend_claimed(backfill)
        in_flight = backfill.slots.filter(state__in=IN_FLIGHT, finished=False).count()
        room = backfill.max_concurrent - in_flight
        if room > 0:
            waiting = list(backfill.slots.filter(state=BackfillSlot.WAITING).order_by("position")[:room])
            for slot in waiting:
                if not self.claim_and_send(backfill, slot):
                    break
        if (
            not backfill.slots.exclude(state__in=(BackfillSlot.SKIPPED, BackfillSlot.CANCELLED))
            .exclude(state__in=IN_FLIGHT, finished=True)
            .exists()
        ):
            done = Backfill.objects.filter(pk=backfill.pk, state=Backfill.RUNNING)
            if done.update(state=Backfill.FINISHED, finished_at=timezone.now()):
                logger.info("backfill %s of %s finished", backfill.pk, backfill.schedule_name)

    def mark_finished(self, backfill: Backfill) -> None:
        """The slots in flight whose run has ended (its row, or its hash in Redis, says so)."""
        flying = dict(backfill.slots.filter(state=BackfillSlot.SENT, finished=False).values_list("task_id", "pk"))
        if not flying:
            return
        ended = set(TaskResult.objects.filter(task_id__in=flying, status__in=FINAL).values_list("task_id", flat=True))
        for task_id in set(flying) - ended:
            found = latest(task_id)
            if found is not None and found.status in FINAL:
                ended.add(task_id)
        if ended:
            BackfillSlot.objects.filter(pk__in=[flying[t] for t in ended]).update(finished=True)

    def resend_claimed(self, backfill: Backfill) -> None:
        """Slots claimed by a leader that died before it marked them sent. One whose run has a
        state (a hash in Redis or a row) was published: it is marked sent. One with none is
        published again, with the same run id. The window: a leader killed after its publish
        and before its write to the run's hash, whose message no worker has taken by the time
        the next leader looks (a lease's length later) - that slot's message is on the queue
        twice, with one run id, and may run twice."""
        for slot in backfill.slots.filter(state=BackfillSlot.CLAIMED).order_by("position"):
            try:
                reached = has_state(slot.task_id)
            except redis.RedisError as exc:
                logger.warning("backfill %s: cannot tell whether run %s was sent (Redis: %s)", backfill.pk,
                               slot.task_id, exc)  # fmt: skip
                return
            if reached:
                BackfillSlot.objects.filter(pk=slot.pk, state=BackfillSlot.CLAIMED).update(state=BackfillSlot.SENT)
                continue
            logger.warning("backfill %s: slot %s was claimed but never reached a worker; sending it", backfill.pk,
                           slot.slot.isoformat())  # fmt: skip
            if not self.owns_lease() or not self.publish(backfill, slot):
                return
            BackfillSlot.objects.filter(pk=slot.pk, state=BackfillSlot.CLAIMED).update(
                state=BackfillSlot.SENT, sent_at=timezone.now()
            )

    def claim_and_send(self, backfill: Backfill, slot: BackfillSlot) -> bool:
        """Claim (waiting -> claimed with the run id chosen now, exactly one row), publish,
        then mark sent. False when it stopped: the lease is gone, or the send failed."""
        if not self.owns_lease():
            return False
        task_id = str(uuid.uuid4())
        claimed = BackfillSlot.objects.filter(pk=slot.pk, state=BackfillSlot.WAITING).update(
            state=BackfillSlot.CLAIMED, task_id=task_id, sent_at=timezone.now()
        )
        if claimed != 1:  # cancelled meanwhile, or another beat has it
            return True
        slot.task_id = task_id
        if not self.owns_lease():  # paused past the lease since the claim: the new leader sends it (same run id)
            return False
        if not self.publish(backfill, slot):
            BackfillSlot.objects.filter(pk=slot.pk, state=BackfillSlot.CLAIMED, task_id=task_id).update(
                state=BackfillSlot.WAITING, task_id="", sent_at=None
            )
            return False
        BackfillSlot.objects.filter(pk=slot.pk, state=BackfillSlot.CLAIMED).update(
            state=BackfillSlot.SENT, sent_at=timezone.now()
        )
        return True

    def publish(self, backfill: Backfill, slot: BackfillSlot) -> bool:
        message = self.messages.get(backfill.pk)
        schedule = PeriodicTask.objects.filter(pk=backfill.periodic_task_id)
        changed = schedule.values_list("date_changed", "policy__updated_at")
        if message is None or message.changed != changed.first():  # the schedule and policy as they are now
            message = self.messages[backfill.pk] = Message(backfill, self.app)
        options = message.options_for(slot.slot, slot.at)
        try:
            self.send_task(message.task, message.args, message.kwargs, task_id=slot.task_id, **options)
        except Exception as exc:  # noqa: BLE001  (the broker refused: this slot waits, beat goes on)
            logger.error("backfill %s: could not send %s for %s: %r; trying again", backfill.pk, message.name,
                         slot.slot.isoformat(), exc)  # fmt: skip
            return False
        self.sent += 1
        announce(self.app, slot.task_id, message, options["headers"][HEADER])
        logger.info("Backfill %s: sent %s (%s) for slot %s as run %s", backfill.pk, message.name, message.task,
                    slot.slot.isoformat(), slot.task_id)  # fmt: skip
        return True

    def owns_lease(self) -> bool:
        """The fencing check, in Redis: a beat that lost the lease while paused claims nothing."""
        if not self.lease.is_leader:
            return False
        try:
            value = self.lease.client.get(leader.LEASE_KEY)
        except redis.RedisError:
            return False
        text = value.decode() if isinstance(value, bytes) else value
        return text == self.lease.value


def announce(app: Celery, task_id: str, message: Message, header: dict[str, Any]) -> None:
    """The run's queued state in its Redis hash: from now on a next leader sees it was sent."""
    meta = {key: header[key] for key in ("trigger", "by", "schedule", "scheduled_for", "slot", "backfill",
                                         "queued_at")}  # fmt: skip
    context = Context(meta=meta, task=message.task, periodic_task_name=message.name)
    try:
        app.backend.store_result(task_id, None, celery_states.PENDING, request=context)
    except redis.RedisError as exc:  # it was sent: a worker's first state write tells the next leader
        logger.warning("backfill run %s: its queued state was not written to Redis (%s)", task_id, exc)


def latest(task_id: str) -> ledger.Latest | None:
    try:
        return ledger.latest(task_id)
    except redis.RedisError:
        return None


def has_state(task_id: str) -> bool:
    """Whether the run reached Redis or the database (any state, PENDING included). Raises
    RedisError when Redis does not answer: then nobody can tell, and nothing is sent."""
    return ledger.latest(task_id) is not None or TaskResult.objects.filter(task_id=task_id).exists()
