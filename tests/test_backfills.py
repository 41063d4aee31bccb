"""The backfill service (scheduler_app/backfills.py): the plan, the limit, skipping slots that
already ran, the order, the writes and the cancel. Beat's sending: tests/beat/test_backfill_beat.py."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app import backfills
from scheduler_app.models import AuditEntry, Backfill, BackfillSlot, SchedulePolicy
from tests.backfill_clock import HOUR, NOW

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("backfill_clock")]


def hourly(name: str = "hourly export") -> PeriodicTask:
    every = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
    task = PeriodicTask.objects.create(name=name, task="maintenance.purge_expired_sessions", interval=every)
    PeriodicTask.objects.filter(pk=task.pk).update(date_changed=NOW - 30 * HOUR, last_run_at=NOW - 30 * HOUR)
    task.refresh_from_db()
    return task


def ran(task: PeriodicTask, moment: dt.datetime, status: str = "SUCCESS", key: str = "scheduled_for") -> str:
    task_id = str(uuid.uuid4())
    meta = {"trigger": "beat", "schedule": task.name, "scheduled_for": moment.isoformat()}
    if key == "slot":  # a jittered run: sent for 7 minutes after its nominal slot
        meta |= {"scheduled_for": (moment + dt.timedelta(minutes=7)).isoformat(), "slot": moment.isoformat()}
    TaskResult.objects.create(task_id=task_id, task_name=task.task, periodic_task_name=task.name, status=status,
                              meta=json.dumps(meta))  # fmt: skip
    return task_id


def test_it_plans_every_slot_of_the_range_both_ends_included_with_its_send_moment() -> None:
    task = hourly()
    start = NOW - 5 * HOUR
    plan = backfills.plan(task, start, NOW - HOUR)
    slots = [p.slot for p in plan.slots]
    assert slots[0] == start and slots[-1] == NOW - HOUR, slots
    assert len(slots) == 5 and all(b - a == HOUR for a, b in zip(slots, slots[1:], strict=False))
    assert all(p.at == p.slot for p in plan.slots)  # no jitter: sent for the slot itself
    assert [p.position for p in plan.slots] == [0, 1, 2, 3, 4]


def test_it_gives_each_slot_its_jittered_send_moment() -> None:
    task = hourly()
    SchedulePolicy.objects.create(periodic_task=task, jitter=600)
    task.refresh_from_db()
    plan = backfills.plan(task, NOW - 5 * HOUR, NOW - HOUR)
    offsets = [(p.at - p.slot).total_seconds() for p in plan.slots]
    assert all(0 <= offset < 600 for offset in offsets) and any(offsets), offsets


def test_it_writes_nothing_for_a_plan_a_dry_run() -> None:
    task = hourly()
    backfills.plan(task, NOW - 5 * HOUR, NOW - HOUR)
    assert Backfill.objects.count() == BackfillSlot.objects.count() == AuditEntry.objects.count() == 0


def test_it_refuses_more_slots_than_the_limit_naming_the_count_and_the_limit() -> None:
    task = hourly()
    with override_settings(BACKFILL_MAX_SLOTS=10), pytest.raises(backfills.BackfillRefused) as refused:
        backfills.plan(task, NOW - 24 * HOUR, NOW - HOUR)
    assert "holds 24 slots" in str(refused.value) and "limit of 10" in str(refused.value), refused.value
    assert len(backfills.plan(task, NOW - 10 * HOUR, NOW - HOUR, limit=10).slots) == 10  # the limit itself is taken


@pytest.mark.parametrize(
    ("start", "end", "options", "says"),
    [
        (NOW - HOUR, NOW - 2 * HOUR, {}, "must be later than from"),
        (NOW - HOUR, NOW - HOUR, {}, "must be later than from"),
        (NOW - HOUR, NOW + HOUR, {}, "in the future"),
        (NOW - 2 * HOUR, NOW - HOUR, {"max_concurrent": 0}, "from 1 to 100"),
        (NOW - 2 * HOUR, NOW - HOUR, {"max_concurrent": 101}, "from 1 to 100"),
    ],
)
def test_it_refuses_a_bad_request_saying_why(start: dt.datetime, end: dt.datetime, options: dict[str, int],
                                             says: str) -> None:  # fmt: skip
    with pytest.raises(backfills.BackfillRefused, match=says):
        backfills.plan(hourly(), start, end, **options)  # type: ignore[arg-type]


def test_it_skips_slots_that_already_ran_unless_rerun() -> None:
    task = hourly()
    done = ran(task, NOW - 4 * HOUR)
    ran(task, NOW - 3 * HOUR, key="slot")  # a jittered run: its nominal slot
    ran(task, NOW - 2 * HOUR, status="FAILURE")  # its work was not done: run again
    ran(task, NOW - 5 * HOUR - dt.timedelta(seconds=1))  # not a slot of the range
    plan = backfills.plan(task, NOW - 5 * HOUR, NOW - HOUR)
    skipped = [p.slot for p in plan.slots if p.skipped]
    assert skipped == [NOW - 4 * HOUR, NOW - 3 * HOUR], plan.slots
    assert done in plan.slots[1].skipped_because
    assert (plan.to_run, plan.skipped) == (3, 2)
    assert not any(p.skipped for p in backfills.plan(task, NOW - 5 * HOUR, NOW - HOUR, rerun=True).slots)


def test_it_orders_newest_first_when_asked() -> None:
    task = hourly()
    plan = backfills.plan(task, NOW - 3 * HOUR, NOW - HOUR, newest_first=True)
    assert [p.slot for p in plan.slots] == [NOW - HOUR, NOW - 2 * HOUR, NOW - 3 * HOUR]
    assert [p.position for p in plan.slots] == [0, 1, 2]


def test_it_allows_a_disabled_schedule() -> None:
    task = hourly()
    task.enabled = False
    task.save()
    assert len(backfills.plan(task, NOW - 3 * HOUR, NOW - HOUR).slots) == 3


def test_it_starts_a_backfill_with_its_slots_waiting_or_skipped_and_counts_its_progress() -> None:
    task = hourly()
    ran(task, NOW - 2 * HOUR)
    user = User.objects.create_user("operator", is_staff=True)
    backfill = backfills.start(task, NOW - 3 * HOUR, NOW - HOUR, by=user, via="api", max_concurrent=2,
                               newest_first=True)  # fmt: skip
    assert (backfill.state, backfill.requested_by_name, backfill.via, backfill.max_concurrent) == (
        Backfill.RUNNING, "operator", "api", 2)  # fmt: skip
    rows = list(backfill.slots.order_by("position").values_list("slot", "state"))
    assert rows == [(NOW - HOUR, "waiting"), (NOW - 2 * HOUR, "skipped"), (NOW - 3 * HOUR, "waiting")]
    assert backfills.progress(backfill).as_dict() == {"total": 3, "done": 0, "running": 0, "waiting": 2,
                                                      "skipped": 1, "cancelled": 0}  # fmt: skip
    BackfillSlot.objects.filter(backfill=backfill, position=0).update(state="sent", finished=True)
    BackfillSlot.objects.filter(backfill=backfill, position=2).update(state="sent")
    assert backfills.progress(backfill).as_dict() == {"total": 3, "done": 1, "running": 1, "waiting": 0,
                                                      "skipped": 1, "cancelled": 0}  # fmt: skip


def test_it_finishes_at_once_a_backfill_with_nothing_to_run() -> None:
    task = hourly()
    ran(task, NOW - HOUR)
    backfill = backfills.start(task, NOW - HOUR, NOW - dt.timedelta(minutes=1), by=None, via="command")
    assert backfill.state == Backfill.FINISHED and backfill.finished_at == NOW


def test_it_cancels_the_waiting_slots_and_leaves_the_sent_ones() -> None:
    task = hourly()
    backfill = backfills.start(task, NOW - 3 * HOUR, NOW - HOUR, by=None, via="command")
    BackfillSlot.objects.filter(backfill=backfill, position=0).update(state="sent", task_id="abc")
    assert backfills.cancel(backfill, by=None) == 2
    backfill.refresh_from_db()
    assert (backfill.state, backfill.finished_at, backfill.cancelled_by_name) == ("cancelled", NOW, "system")
    assert sorted(backfill.slots.values_list("state", flat=True)) == ["cancelled", "cancelled", "sent"]
    with pytest.raises(backfills.BackfillError, match="already cancelled"):
        backfills.cancel(backfill, by=None)


def test_it_reads_a_naive_moment_in_the_server_zone_and_refuses_what_is_not_iso() -> None:
    from django.utils import timezone

    moment = backfills.parse_moment("2025-03-01T00:00", "--from")
    assert moment.utcoffset() == timezone.get_current_timezone().utcoffset(moment.replace(tzinfo=None))
    assert backfills.parse_moment("2025-03-01T00:00+01:00", "--from") == dt.datetime(2025, 2, 28, 23, tzinfo=dt.UTC)
    with pytest.raises(backfills.BackfillRefused, match="ISO 8601"):
        backfills.parse_moment("yesterday", "--from")
