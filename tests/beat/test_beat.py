"""The beat scheduler in-process, against the real database and the real Redis: every due
schedule in one tick, the change log, batched writes, the lease and the slot marks,
one-off, expiry, catch-up. Real beat processes: tests/beat/test_beat_ha.py."""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Iterable
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.core.exceptions import ImproperlyConfigured
from django.core.management.sql import emit_post_migrate_signal, emit_pre_migrate_signal
from django.db import DatabaseError, connection
from django.db.migrations import Migration
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
)

from scheduler_app.beat import entries, leader, triggers
from scheduler_app.connection import redis_client
from scheduler_app.models import BusinessCalendar, CalendarExclusion, ScheduleChange, SchedulePolicy
from scheduler_app.schedules import next_runs
from tests.beat.beatkit import QUEUE, interval, names, schedule, started

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clean_redis")]


# --- dispatch ---------------------------------------------------------------------------


def test_it_sends_every_due_schedule_in_one_tick(sent: list[dict[str, Any]]) -> None:
    for n in range(40):
        schedule(f"due {n:02}", 30, ago=31)
    schedule("not due", 30, ago=5)
    beat = started()
    assert names(sent) == [f"due {n:02}" for n in range(40)]
    assert len(set(json.dumps(h, sort_keys=True) for h in sent)) == 40
    beat.close()


def test_it_stamps_each_dispatch_with_its_slot_and_the_schedules_policy(sent: list[dict[str, Any]]) -> None:
    task = schedule("every minute", 60, ago=61)
    SchedulePolicy.objects.create(periodic_task=task, overlap="skip", max_retries=7, time_limit=30)
    slot = task.last_run_at + dt.timedelta(seconds=60)
    beat = started()
    (header,) = sent
    assert header["trigger"] == "beat" and header["schedule"] == "every minute"
    assert header["scheduled_for"] == slot.isoformat()
    assert header["policy"] == {"overlap": "skip", "max_retries": 7, "time_limit": 30}
    assert beat.schedule["every minute"].options["time_limit"] == 30
    assert beat.schedule["every minute"].options["soft_time_limit"] == 27
    beat.close()


def test_it_writes_the_slots_it_sent_in_one_batch(sent: list[dict[str, Any]]) -> None:
    tasks = [schedule(f"batch {n}", 30, ago=31) for n in range(25)]
    beat = started()
    assert len(sent) == 25
    with CaptureQueriesContext(connection) as queries:
        beat.flush()
    statements = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].split()[0] not in ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE")
    ]
    assert len(statements) == 1 and statements[0].startswith("UPDATE"), statements  # one UPDATE for 25 rows
    for task in tasks:
        stored = PeriodicTask.objects.get(pk=task.pk)
        assert stored.last_run_at == task.last_run_at + dt.timedelta(seconds=30)  # the slot, not the send time
        assert stored.total_run_count == 1
    beat.close()


# --- the change log -------------------------------------------------------------------------


def test_it_reloads_only_what_changed(sent: list[dict[str, Any]]) -> None:
    edited, deleted, disabled = (schedule(name, 3600, ago=10) for name in ("edited", "deleted", "disabled"))
    untouched = schedule("untouched", 3600, ago=10)
    beat = started()
    kept = beat.store.entries[untouched.pk]
    edited.interval = interval(5)
    edited.save()
    deleted.delete()
    disabled.enabled = False
    disabled.save()
    beat.housekeeping()
    assert sorted(beat.schedule) == ["edited", "untouched"]
    assert beat.store.entries[untouched.pk] is kept  # not reloaded
    assert beat.store.entries[edited.pk].next_slot == edited.last_run_at + dt.timedelta(seconds=5)
    beat.tick()
    assert names(sent) == ["edited"]
    beat.close()


def test_it_follows_an_edit_of_a_shared_crontab() -> None:
    cron = CrontabSchedule.objects.create(minute="0", hour="4", timezone="Europe/Paris")
    users = [schedule(f"user {n}", crontab=cron, interval=None, ago=10) for n in range(3)]
    beat = started()
    cron.hour = "5"
    cron.save()
    beat.housekeeping()
    for task in users:
        next_slot = beat.store.entries[task.pk].next_slot
        assert next_slot is not None
        assert next_slot.astimezone(cron.timezone).hour == 5
    beat.close()


def test_it_follows_a_bulk_update_from_the_stock_admin_row_by_row_without_a_full_reload() -> None:
    a, b = schedule("bulk a", 30, ago=1), schedule("bulk b", 30, ago=1)
    kept = schedule("kept", 30, ago=1)
    seven = interval(7)
    beat = started()
    held, untouched = beat.store.entries, beat.store.entries[kept.pk]
    PeriodicTask.objects.filter(pk=a.pk).update(enabled=False)  # django-celery-beat's admin action
    PeriodicTask.objects.filter(pk=b.pk).update(interval=seven)
    PeriodicTasks.update_changed()
    beat.housekeeping()  # the triggers logged both rows
    assert sorted(beat.schedule) == ["bulk b", "kept"]
    assert beat.schedule["bulk b"].table_key == ("interval", seven.pk)
    beat.housekeeping()
    assert beat.store.entries is held and beat.store.entries[kept.pk] is untouched  # no full reload
    beat.close()


def test_the_database_logs_every_write_of_a_schedule_but_beats_own_last_run_at() -> None:
    task = schedule("logged", 30, ago=1)
    SchedulePolicy.objects.create(periodic_task=task, max_retries=2)
    start = ScheduleChange.objects.order_by("-id").values_list("id", flat=True).first() or 0

    def logged() -> list[int]:
        rows = ScheduleChange.objects.filter(id__gt=start, kind=ScheduleChange.TASK)
        return list(rows.values_list("object_id", flat=True))

    table = connection.ops.quote_name(PeriodicTask._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET last_run_at = last_run_at, total_run_count = 3")  # noqa: S608  (beat's writes)
    assert logged() == []
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET queue = 'elsewhere' WHERE id = %s", [task.pk])  # noqa: S608  (raw SQL)
    SchedulePolicy.objects.filter(periodic_task=task).update(max_retries=5)  # a bulk update of the policies
    PeriodicTask.objects.filter(pk=task.pk).delete()  # its policy goes with it (logged too)
    assert logged() == [task.pk] * 4


def test_a_saved_edit_reloads_that_schedule_alone() -> None:
    edited, other = schedule("saved", 30, ago=1), schedule("other", 30, ago=1)
    beat = started()
    kept, untouched = beat.store.entries[edited.pk], beat.store.entries[other.pk]
    edited.interval = interval(9)
    edited.save()
    beat.housekeeping()
    beat.housekeeping()
    assert beat.store.entries[edited.pk] is not kept
    assert beat.store.entries[edited.pk].table_key == ("interval", edited.interval_id)
    assert beat.store.entries[other.pk] is untouched
    beat.close()


def test_a_bulk_update_of_a_shared_interval_is_followed_without_update_changed() -> None:
    task = schedule("shared", 30, ago=1)
    beat = started()
    IntervalSchedule.objects.filter(pk=task.interval_id).update(every=45)  # no signal, no PeriodicTasks bump
    beat.housekeeping()
    assert beat.store.entries[task.pk].next_slot == task.last_run_at + dt.timedelta(seconds=45)
    beat.close()


def test_migrate_puts_the_triggers_back_and_a_table_rebuilt_meanwhile_keeps_them() -> None:
    """SQLite drops a table's triggers when a migration rebuilds it, and cannot rebuild the
    log while they write to it: pre_migrate takes them off, post_migrate puts them back."""
    task = schedule("rebuilt", 30, ago=1)
    start = ScheduleChange.objects.order_by("-id").values_list("id", flat=True).first() or 0
    try:
        plan = [(Migration("0099_a_rebuild", "scheduler_app"), False)]
        emit_pre_migrate_signal(verbosity=0, interactive=False, db="default", plan=plan)
        kind = ScheduleChange._meta.get_field("kind")
        wider = copy.copy(kind)
        wider.max_length = 16
        with connection.schema_editor() as editor:  # SQLite rebuilds the table for this
            editor.alter_field(ScheduleChange, kind, wider)
            editor.alter_field(ScheduleChange, wider, kind)
        triggers.uninstall(connection)  # and a migration that dropped them
        PeriodicTask.objects.filter(pk=task.pk).update(queue="lost")
        assert not ScheduleChange.objects.filter(id__gt=start).exists()
        assert triggers.missing(connection)
        emit_post_migrate_signal(verbosity=0, interactive=False, db="default")
        assert not triggers.missing(connection)
    finally:
        if triggers.missing(connection):  # for the tests after this one
            triggers.install(connection)
    PeriodicTask.objects.filter(pk=task.pk).update(queue="found")
    assert list(ScheduleChange.objects.filter(id__gt=start).values_list("kind", "object_id")) == [("task", task.pk)]


def test_beat_refuses_to_start_without_its_triggers() -> None:
    triggers.uninstall(connection)
    try:
        with pytest.raises(ImproperlyConfigured, match="triggers are missing.*manage.py migrate"):
            started()
    finally:
        triggers.install(connection)


def test_an_older_mark_learned_after_a_newer_one_does_not_overwrite_it() -> None:
    beat = started()
    older, newer = timezone.now() - dt.timedelta(minutes=2), timezone.now() - dt.timedelta(minutes=1)
    beat.writes.learned(7, older)  # what a standby followed first
    beat.writes.learned(7, newer)  # the newer mark it found taking over
    assert beat.writes.slots[7] == (newer, 0)
    beat.writes.sent(8, newer, ran=True)
    beat.writes.learned(8, older)
    assert beat.writes.slots[8] == (newer, 1)
    beat.close()


def test_moving_a_calendar_date_to_another_calendar_reloads_both() -> None:
    first = BusinessCalendar.objects.create(name="first")
    second = BusinessCalendar.objects.create(name="second")
    date = CalendarExclusion.objects.create(calendar=first, first_day=dt.date(2026, 12, 24))
    start = ScheduleChange.objects.order_by("-id").values_list("id", flat=True).first() or 0
    CalendarExclusion.objects.filter(pk=date.pk).update(calendar=second)
    logged = set(ScheduleChange.objects.filter(id__gt=start).values_list("kind", "object_id"))
    assert logged == {("calendar", first.pk), ("calendar", second.pk)}


def test_a_schedule_that_cannot_run_does_not_stop_the_others(sent: list[dict[str, Any]]) -> None:
    broken = CrontabSchedule.objects.create(minute="61", hour="*")  # saved past the admin's validation
    schedule("broken", crontab=broken, interval=None, ago=61)
    schedule("fine", 30, ago=31)
    beat = started()
    assert names(sent) == ["fine"]
    assert beat.schedule["broken"].next_slot is None
    beat.close()


# --- one-off, clocked, expiry, catch-up -------------------------------------------------------


def test_it_sends_a_one_off_once_and_disables_it(sent: list[dict[str, Any]]) -> None:
    clock = ClockedSchedule.objects.create(clocked_time=timezone.now() - dt.timedelta(seconds=2))
    task = schedule("one off", clocked=clock, interval=None, one_off=True)
    beat = started()
    beat.tick()
    beat.flush()
    assert names(sent) == ["one off"]
    stored = PeriodicTask.objects.get(pk=task.pk)
    assert (stored.enabled, stored.total_run_count) == (False, 0)  # enabling it again runs it once more
    assert "one off" not in beat.schedule
    beat.close()


def test_a_clocked_slot_missed_during_an_outage_still_runs_once(sent: list[dict[str, Any]]) -> None:
    clock = ClockedSchedule.objects.create(clocked_time=timezone.now() - dt.timedelta(hours=2))
    schedule("late one off", clocked=clock, interval=None, one_off=True)
    started().close()
    assert names(sent) == ["late one off"]


def test_it_disables_an_expired_schedule_instead_of_sending_it(sent: list[dict[str, Any]]) -> None:
    task = schedule("expired", 30, ago=31, expires=timezone.now() - dt.timedelta(seconds=1))
    beat = started()
    beat.flush()
    assert sent == []
    assert PeriodicTask.objects.get(pk=task.pk).enabled is False
    beat.close()


@pytest.mark.parametrize(
    ("catch_up", "late", "sends"),
    [("skip", 3600, False), ("once", 3600, True), ("skip", 30, True)],
    ids=["skip-after-an-hour", "once-after-an-hour", "skip-but-within-grace"],
)
def test_it_follows_the_catch_up_policy_for_a_missed_slot(
    sent: list[dict[str, Any]], catch_up: str, late: int, sends: bool
) -> None:
    task = schedule("hourly", 3600, ago=3600 + late)
    SchedulePolicy.objects.create(periodic_task=task, catch_up=catch_up)
    beat = started()
    assert len(sent) == int(sends)
    entry = beat.schedule["hourly"]
    assert entry.next_slot is not None
    assert entry.next_slot > timezone.now()
    assert (entry.next_slot - task.last_run_at).total_seconds() % 3600 == 0  # in phase
    beat.close()


def test_it_sends_each_slot_missed_within_the_grace_once_in_order(sent: list[dict[str, Any]]) -> None:
    """The clock stands still: 4 slots are due however slowly the ticks run, the 5th not yet."""
    with time_machine.travel(timezone.now(), tick=False):
        task = schedule("every second", 1, ago=4.5)  # a failover: 4 slots fell due meanwhile
        beat = started()
        while (first := beat.due.first_due()) is not None and first <= timezone.now().timestamp():
            beat.tick()
        slots = [dt.datetime.fromisoformat(h["scheduled_for"]) for h in sent]
        assert slots == [task.last_run_at + dt.timedelta(seconds=n) for n in range(1, 5)]
        beat.close()


@pytest.mark.parametrize(("catch_up", "sends"), [("skip", 0), ("once", 1)])
def test_a_long_outage_never_ends_in_a_burst(sent: list[dict[str, Any]], catch_up: str, sends: int) -> None:
    """The clock stands still, so no slot after the outage falls due while the ticks run."""
    with time_machine.travel(timezone.now(), tick=False):
        task = schedule("every second", 1, ago=300)  # 299 slots missed, most beyond the grace
        SchedulePolicy.objects.create(periodic_task=task, catch_up=catch_up)
        beat = started()
        for _ in range(3):
            beat.tick()
        assert len(sent) == sends
        next_slot = beat.schedule["every second"].next_slot
        assert next_slot is not None
        assert next_slot > timezone.now()
        beat.close()


# --- the lease and the marks -------------------------------------------------------------------


def test_only_the_leader_sends(sent: list[dict[str, Any]]) -> None:
    schedule("shared", 30, ago=31)
    first, second = started(), started()
    assert (first.lease.is_leader, second.lease.is_leader) == (True, False)
    second.tick()
    assert names(sent) == ["shared"]
    facts = leader.heartbeat()
    assert facts["leader"] == first.lease.node
    assert {b["role"] for b in facts["beats"]} == {"leader", "follower"}
    first.close()
    second.close()


def test_a_new_leader_does_not_send_again_what_a_dead_one_sent_but_never_wrote(sent: list[dict[str, Any]]) -> None:
    task = schedule("weekly", 7 * 86400, ago=7 * 86400 + 5)
    dead = started()  # sends the slot, then "dies" before writing last_run_at
    assert len(sent) == 1
    redis_client().delete(leader.LEASE_KEY)  # its lease runs out
    assert PeriodicTask.objects.get(pk=task.pk).last_run_at == task.last_run_at  # never written
    heir = started()
    assert heir.lease.is_leader
    assert len(sent) == 1  # the mark says that slot went
    assert heir.schedule["weekly"].next_slot == task.last_run_at + dt.timedelta(days=14)
    dead._finalize.cancel()  # it died: no goodbye write
    heir.close()


def test_a_standby_follows_the_leaders_marks_and_takes_over_reading_only_those_due_meanwhile(
    sent: list[dict[str, Any]],
) -> None:
    """A standby keeps its heap current: a slot the leader sent over FOLLOW_LAG ago moves the
    standby's entry on from its mark; taking over then reads the marks of only the slots due
    since, and sends none of them again, though the dead leader wrote no last_run_at."""
    now = timezone.now()
    with time_machine.travel(now, tick=False):
        followed = schedule("followed", 60, ago=63)  # its slot: 3 s ago
        recent = schedule("recent", 60, ago=60.5)  # its slot: half a second ago
        schedule("hourly", 3600, ago=10)
        dead = started()
        assert names(sent) == ["followed", "recent"]
        standby = started()  # its first tick follows: the slots due over FOLLOW_LAG ago
        assert standby.lease.token is None  # a standby: it never led
        assert standby.store.entries[followed.pk].next_slot == followed.last_run_at + dt.timedelta(seconds=120)
        assert standby.store.entries[recent.pk].next_slot == recent.last_run_at + dt.timedelta(seconds=60)  # not yet
        asked: list[list[int]] = []
        read_marks = standby.ledger.marks

        def marks(pks: Iterable[int]) -> dict[int, dt.datetime]:
            asked.append(list(pks))
            return read_marks(asked[-1])

        standby.ledger.marks = marks  # type: ignore[method-assign]  # which marks it reads, read for real
        dead._finalize.cancel()  # it dies: no goodbye write
        redis_client().delete(leader.LEASE_KEY)  # its lease runs out
        standby.redis_housekeeping()
        assert standby.lease.is_leader
        assert asked == [[recent.pk]]  # not the whole heap: only what came due since it last followed
        assert standby.store.entries[recent.pk].next_slot == recent.last_run_at + dt.timedelta(seconds=120)
        standby.tick()
        assert names(sent) == ["followed", "recent"]  # nothing sent twice
        standby.flush()
        for task in (followed, recent):  # what the dead leader sent and never wrote, the heir writes
            slot = task.last_run_at + dt.timedelta(seconds=60)
            task.refresh_from_db()
            assert task.last_run_at == slot
    standby.close()


def test_a_one_off_the_dead_leader_sent_is_finished_by_the_standby_not_sent_again(sent: list[dict[str, Any]]) -> None:
    now = timezone.now()
    with time_machine.travel(now, tick=False):
        once = schedule("once", 60, ago=63, one_off=True)  # its one slot: 3 s ago
        dead = started()
        assert names(sent) == ["once"]
        standby = started()  # follows the slot: off its heap, kept until the change log drops it
        assert once.pk in standby.store.entries and once.pk in standby.planner.one_offs_sent
        dead._finalize.cancel()  # it dies before writing anything: the one-off is still enabled
        redis_client().delete(leader.LEASE_KEY)
    with time_machine.travel(now + dt.timedelta(seconds=10), tick=False):  # within the grace: a resend would go
        standby.redis_housekeeping()
        assert standby.lease.is_leader and once.pk not in standby.store.entries
        standby.tick()
        standby.flush()
        assert names(sent) == ["once"]
        once.refresh_from_db()
        assert not once.enabled and once.last_run_at == now - dt.timedelta(seconds=3)
    standby.close()


def test_a_leader_that_lost_its_lease_sends_nothing(sent: list[dict[str, Any]]) -> None:
    schedule("fenced", 3600, ago=1)  # not due for an hour, however slowly the beats start: only the forced slot
    stale = started()
    redis_client().delete(leader.LEASE_KEY)  # paused past its lease...
    heir = started()  # ...and another beat took over
    assert heir.lease.token is not None and stale.lease.token is not None
    assert heir.lease.token > stale.lease.token
    stale._next_housekeeping = float("inf")  # it has not noticed yet
    stale.store.entries[next(iter(stale.store.entries))].next_slot = timezone.now()
    stale.due.rebuild(stale.store.entries.values())
    stale.tick()
    assert sent == []  # the fencing check refused its claim
    assert not stale.lease.is_leader
    stale.close()
    heir.close()


def test_next_runs_agree_with_beat() -> None:
    task = schedule("agree", 600, ago=100)
    beat = started()
    (upcoming,) = next_runs(PeriodicTask.objects.get(pk=task.pk), 1)
    assert upcoming.at == beat.schedule["agree"].next_slot
    beat.close()


def test_the_leader_prunes_the_change_log_but_keeps_the_last_hour() -> None:
    from scheduler_app.models import ScheduleChange

    old, recent = schedule("old edit", ago=1), schedule("recent edit", ago=1)
    ScheduleChange.objects.filter(object_id=old.pk).update(at=timezone.now() - dt.timedelta(hours=2))
    beat = started()
    beat.housekeeping()
    beat.close()
    left = set(ScheduleChange.objects.values_list("object_id", flat=True))
    assert recent.pk in left and old.pk not in left


def test_beat_runs_a_crontab_across_the_spring_forward_night_in_its_zone(sent: list[dict[str, Any]]) -> None:
    cron = CrontabSchedule.objects.create(minute="30", hour="2", timezone="Europe/Berlin")
    berlin = ZoneInfo("Europe/Berlin")
    last = dt.datetime(2026, 3, 28, 2, 30, tzinfo=berlin)  # 02:30 CET, the night before
    schedule("nightly", crontab=cron, interval=None, last_run_at=last)
    with time_machine.travel(dt.datetime(2026, 3, 29, 3, 0, 5, tzinfo=berlin)):  # 02:30 does not exist
        beat = started()
        assert [h["scheduled_for"] for h in sent] == ["2026-03-29T01:00:00+00:00"]  # 03:00 CEST, once
    with time_machine.travel(dt.datetime(2026, 3, 30, 2, 30, 5, tzinfo=berlin)):
        beat.tick()
        assert [h["scheduled_for"] for h in sent][1:] == ["2026-03-30T00:30:00+00:00"]  # 02:30 CEST
    beat.close()


def test_a_one_off_enabled_again_runs_once_more(sent: list[dict[str, Any]]) -> None:
    clock = ClockedSchedule.objects.create(clocked_time=timezone.now() - dt.timedelta(seconds=2))
    task = schedule("again", clocked=clock, interval=None, one_off=True)
    beat = started()
    beat.housekeeping()  # writes the disable
    task.refresh_from_db()
    task.enabled = True
    task.save()
    beat.housekeeping()
    beat.tick()
    assert names(sent) == ["again", "again"]
    beat.close()


def test_catch_up_once_sends_one_run_that_a_restart_does_not_repeat(sent: list[dict[str, Any]]) -> None:
    task = schedule("hourly once", 3600, ago=3 * 3600 + 30)  # 10:00, 11:00, 12:00 missed
    SchedulePolicy.objects.create(periodic_task=task, catch_up="once")
    first = started()
    first.close()
    redis_client().delete(leader.LEASE_KEY)
    second = started()
    assert len(sent) == 1
    assert sent[0]["scheduled_for"] == (task.last_run_at + dt.timedelta(hours=3)).isoformat()  # the latest
    next_slot = second.schedule["hourly once"].next_slot
    assert next_slot is not None
    assert next_slot > timezone.now()
    second.close()


def test_a_bad_row_never_stops_beat(sent: list[dict[str, Any]]) -> None:
    schedule("not json", 30, ago=31, headers="[]")  # its headers are not an object
    schedule("bad args", 30, ago=31, args="[1,")
    schedule("fine", 30, ago=31)
    beat = started()
    beat.tick()
    assert names(sent) == ["fine"]
    assert "not json" not in beat.schedule
    beat.close()


def test_it_sends_a_large_due_batch_in_chunks_in_one_tick(sent: list[dict[str, Any]]) -> None:
    every = interval(30)
    last = timezone.now() - dt.timedelta(seconds=31)
    PeriodicTask.objects.bulk_create(
        PeriodicTask(name=f"bulk {n:03}", task="maintenance.purge_expired_sessions", queue=QUEUE,
                     interval=every, last_run_at=last)
        for n in range(450)
    )  # fmt: skip
    beat = started()
    assert len(sent) == 450 and len({h["schedule"] for h in sent}) == 450
    assert len(redis_client().hkeys(leader.MARKS_KEY)) == 450
    beat.close()


class Cursor:
    """A driver cursor's fetchmany over `rows`, raising `fails` at the chunk `fails_at`."""

    def __init__(self, rows: list[tuple[int]], fails_at: int | None = None) -> None:
        self.rows, self.fails_at, self.calls = rows, fails_at, 0

    def fetchmany(self, size: int) -> list[tuple[int]]:
        self.calls += 1
        if self.calls == self.fails_at:
            raise DatabaseError("the server went away")
        found, self.rows = self.rows[:size], self.rows[size:]
        return found


def test_reading_ahead_gives_every_row_in_order_and_raises_the_readers_error() -> None:
    rows = [(n,) for n in range(25)]
    assert list(entries.read_ahead(Cursor(rows), chunk=10)) == rows
    failing = entries.read_ahead(Cursor(rows, fails_at=2), chunk=10)
    assert [next(failing) for _ in range(10)] == rows[:10]
    with pytest.raises(DatabaseError, match="went away"):
        next(failing)
    stopped = Cursor(rows * 100)
    early = entries.read_ahead(stopped, chunk=10)
    assert next(early) == (0,)
    early.close()  # the caller stops: the reader is let through and ends
    assert stopped.calls < 100


def test_a_burst_of_changes_is_answered_with_one_full_load_and_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from scheduler_app.beat import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "FULL_RELOAD_ABOVE", 3)
    tasks = [schedule(f"burst {n}", 30, ago=1) for n in range(6)]
    beat = started()
    loads: list[int] = []
    load_all = beat.load_all

    def counted() -> None:
        loads.append(1)
        load_all()

    monkeypatch.setattr(beat, "load_all", counted)
    PeriodicTask.objects.filter(pk__in=[task.pk for task in tasks]).update(queue="elsewhere")
    PeriodicTask.objects.filter(pk=tasks[0].pk).delete()
    beat.housekeeping()
    assert loads == [1] and tasks[0].pk not in beat.store.entries
    assert {entry.options["queue"] for entry in beat.store.entries.values()} == {"elsewhere"}
    beat.housekeeping()
    beat.housekeeping()
    assert loads == [1]  # the burst's rows are not read again
    beat.close()
