"""A schedule's own rules (jitter, `H`, business calendars skipping or moving slots) through
beat's real tick, in-process against the real database and Redis, the clock moved with
time_machine: beat sends exactly what the previews said beforehand, across the nights the
clocks change in Berlin and New York; each slot once, also across a failover in the middle
of a jitter; the health check judges a slot at its send moment; edits of calendars and
rules are picked up through the change log. Pure rules: tests/beat/test_rules.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app import schedules
from scheduler_app.beat import Scheduler, leader, rules, slots
from scheduler_app.connection import redis_client
from scheduler_app.models import BusinessCalendar, CalendarExclusion, ScheduleHealth, SchedulePolicy
from scheduler_app.monitoring import health
from tests.beat.beatkit import schedule, started

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clean_redis")]
UTC = dt.UTC
MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)
STEP = dt.timedelta(seconds=50)  # beat's clock moves this far per tick: within the catch-up grace


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    with time_machine.travel(dt.datetime(2026, 6, 1, 12, tzinfo=UTC), tick=False) as traveller:
        yield traveller


def with_rules(task: PeriodicTask, *, jitter: int | None = None, calendars: tuple[BusinessCalendar, ...] = (),
               rule: str = "") -> PeriodicTask:  # fmt: skip
    policy = SchedulePolicy.objects.create(periodic_task=task, jitter=jitter, calendar_rule=rule)
    policy.calendars.set(calendars)
    return PeriodicTask.objects.select_related("policy").get(pk=task.pk)


def crontab(minute: str, hour: str, zone: str) -> CrontabSchedule:
    return CrontabSchedule.objects.create(minute=minute, hour=hour, timezone=zone)


def sweep(beat: Scheduler, clock: time_machine.Traveller, until: dt.datetime) -> dt.datetime:
    """Beat's real tick every STEP from now to `until` (a clock that does not know the slots);
    returns the moment of the last tick."""
    moment = timezone.now()
    while moment < until:
        moment += STEP
        clock.move_to(moment)
        beat.tick()
    return moment


def sends_of(sent: list[dict[str, Any]], name: str) -> list[tuple[str, str | None]]:
    return [(header["scheduled_for"], header.get("slot")) for header in sent if header["schedule"] == name]


def previewed(task: PeriodicTask, count: int) -> list[tuple[str, str | None]]:
    """What the previews say beat sends: (the send moment, the slot where it differs)."""
    runs = schedules.next_runs(PeriodicTask.objects.get(pk=task.pk), count)
    found = []
    for run in runs:
        assert run.at is not None
        slot = run.slot if run.slot is not None and run.slot != run.at else None
        found.append((run.at.isoformat(), slot.isoformat() if slot else None))
    return found


# --- beat sends what the previews said, across daylight saving time --------------------------------

NIGHTS = {  # the night the clocks change: (zone, local midnight of that day)
    "Berlin springs forward": ("Europe/Berlin", dt.date(2026, 3, 29)),
    "Berlin falls back": ("Europe/Berlin", dt.date(2026, 10, 25)),
    "New York springs forward": ("America/New_York", dt.date(2026, 3, 8)),
    "New York falls back": ("America/New_York", dt.date(2026, 11, 1)),
}


@pytest.mark.parametrize("night", list(NIGHTS))
def test_beat_sends_each_rule_as_previewed_through_the_night_the_clocks_change(
    clock: time_machine.Traveller, sent: list[dict[str, Any]], night: str
) -> None:
    zone, day = NIGHTS[night]
    tz = ZoneInfo(zone)
    midnight = dt.datetime.combine(day, dt.time(0), tzinfo=tz)
    start = midnight - 30 * MINUTE  # 23:30 the evening before
    clock.move_to(start)
    until = midnight.replace(hour=6)
    last_tick = start + STEP * -(-(until - start) // STEP)  # where the sweep below stops
    # a calendar open from 03:30 (in the hour after the jump, or the repeated hour's end)
    opens = BusinessCalendar.objects.create(name=f"From 03:30 {zone}", timezone=zone, day_starts=dt.time(3, 30))
    tasks = {
        "jitter": with_rules(schedule("jitter", crontab=crontab("15,45", "*", zone), interval=None), jitter=900),
        "hash": with_rules(schedule("hash", crontab=crontab("H", "*", zone), interval=None)),
        "hash and jitter": with_rules(
            schedule("hash and jitter", crontab=crontab("H/20", "*", zone), interval=None), jitter=600
        ),  # fmt: skip
        "skip": with_rules(schedule("skip", crontab=crontab("0", "*", zone), interval=None), calendars=(opens,)),
        "move": with_rules(
            schedule("move", crontab=crontab("0", "*", zone), interval=None),
            calendars=(opens,),
            rule="move",
            jitter=300,
        ),  # fmt: skip
        "interval": with_rules(schedule("interval", 1800, last_run_at=start - 10 * MINUTE), jitter=1200),
    }
    previews = {}
    for name, task in tasks.items():
        runs = previewed(task, 40)
        previews[name] = [run for run in runs if dt.datetime.fromisoformat(run[0]) <= last_tick]
        assert previews[name], name
    assert all(slot is not None for _, slot in previews["jitter"])  # the jitter moves each send
    assert all(slot is None for _, slot in previews["hash"])  # H alone does not
    skip_local = [dt.datetime.fromisoformat(at).astimezone(tz) for at, _ in previews["skip"]]
    assert skip_local[0].hour == 4 and skip_local[0].date() == day  # 00:00..03:00 skipped
    first_move = previews["move"][0]
    assert first_move[1] is not None and dt.datetime.fromisoformat(first_move[1]).astimezone(tz).hour == 3
    moved_to = dt.datetime.fromisoformat(first_move[0]).astimezone(tz)
    assert (moved_to.hour, moved_to.minute // 5) == (3, 6)  # 03:30 plus up to 5 minutes of jitter: one run
    explained = schedules.explain(PeriodicTask.objects.get(pk=tasks["move"].pk), 3)
    assert explained[0].at == dt.datetime.fromisoformat(first_move[0]) and explained[0].note.startswith("moved: before")
    beat = started()
    assert sweep(beat, clock, until) == last_tick
    for name in tasks:
        assert sends_of(sent, name) == previews[name], f"{night}, {name}"
    beat.flush()
    interval = PeriodicTask.objects.get(pk=tasks["interval"].pk)
    (last_send,) = previews["interval"][-1:]
    assert interval.last_run_at == dt.datetime.fromisoformat(last_send[1] or last_send[0])  # the nominal slot
    assert (interval.last_run_at - (start - 10 * MINUTE)) % (30 * MINUTE) == dt.timedelta(0)  # on its grid
    beat.close()


def test_a_calendar_skips_and_moves_holidays_and_weekends_as_the_preview_says(
    clock: time_machine.Traveller, sent: list[dict[str, Any]]
) -> None:
    """Friday evening to Tuesday, a Bavarian long weekend (Whit Monday is a public holiday)."""
    berlin = ZoneInfo("Europe/Berlin")
    clock.move_to(dt.datetime(2026, 5, 22, 21, 50, tzinfo=berlin))
    bavaria = BusinessCalendar.objects.create(name="Bavaria", timezone="Europe/Berlin", weekdays="mon,tue,wed,thu,fri",
                                              holiday_country="DE", holiday_subdivision="BY")  # fmt: skip
    every_two_hours = IntervalSchedule.objects.create(every=2, period="hours")
    skip = with_rules(schedule("skip", interval=every_two_hours, last_run_at=timezone.now() - 110 * MINUTE),
                      calendars=(bavaria,))  # fmt: skip
    move = with_rules(schedule("move", crontab=crontab("0", "8", "Europe/Berlin"), interval=None), calendars=(bavaria,),
                      rule="move", jitter=60)  # fmt: skip
    until = dt.datetime(2026, 5, 26, 8, 2, tzinfo=berlin)
    skip_runs = [run for run in previewed(skip, 8) if dt.datetime.fromisoformat(run[0]) < until]
    move_runs = previewed(move, 2)
    tuesday = dt.datetime(2026, 5, 26, tzinfo=berlin)
    assert [dt.datetime.fromisoformat(at) for at, _ in skip_runs] == [
        dt.datetime(2026, 5, 22, 22, tzinfo=berlin),
        *(tuesday + n * 2 * HOUR for n in range(5)),
    ]  # Saturday to Whit Monday: skipped; on its grid again on Tuesday
    moved_at, moved_slot = move_runs[0]
    assert moved_slot == dt.datetime(2026, 5, 25, 6, tzinfo=UTC).isoformat()  # Sat, Sun, Mon: one run, Monday's
    assert tuesday <= dt.datetime.fromisoformat(moved_at) < tuesday + MINUTE
    assert move_runs[1][1] == dt.datetime(2026, 5, 26, 6, tzinfo=UTC).isoformat()  # Tuesday's own, jittered
    notes = [v.note for v in schedules.explain(PeriodicTask.objects.get(pk=skip.pk), 3)]
    assert notes[1] == "skipped: Saturday (Bavaria)"
    beat = started()
    assert sweep(beat, clock, until) < until + STEP
    assert sends_of(sent, "move") == move_runs
    assert sends_of(sent, "skip") == skip_runs
    beat.close()


# --- lateness is judged at the send moment ------------------------------------------------------------


def jittered_name(slot: dt.datetime, jitter: int, at_least: dt.timedelta) -> str:
    """A schedule name whose jitter sends `slot` at least `at_least` late (names choose it)."""
    hourly = slots.Interval(3600)
    for n in range(1000):
        name = f"jittered {n}"
        if rules.send_at(rules.for_schedule(hourly, name, jitter=jitter), slot) - slot >= at_least:
            return name
    raise AssertionError("no name found")


def state_of(task: PeriodicTask, now: dt.datetime) -> tuple[str, dt.datetime | None]:
    health.check_schedules(now)
    row = ScheduleHealth.objects.get(pk=task.pk)
    return row.state, row.expected_at


def started_run(task: PeriodicTask, at: dt.datetime) -> None:
    TaskResult.objects.create(
        task_id=f"{task.name} {at.isoformat()}",
        task_name=task.task,
        periodic_task_name=task.name,
        status="SUCCESS",
        date_started=at,
        date_done=at,
    )


def test_the_health_check_waits_for_the_jittered_send_and_ignores_skipped_slots(
    clock: time_machine.Traveller,
) -> None:
    eleven, noon = dt.datetime(2026, 6, 1, 11, tzinfo=UTC), dt.datetime(2026, 6, 1, 12, tzinfo=UTC)
    clock.move_to(eleven - 10 * MINUTE)
    jittered = with_rules(schedule(jittered_name(noon, 3000, 20 * MINUTE), 3600, last_run_at=eleven - HOUR),
                          jitter=3000)  # fmt: skip
    closes = BusinessCalendar.objects.create(name="Until noon", day_ends=dt.time(12))
    skipping = with_rules(schedule("closes at noon", 3600, last_run_at=eleven - HOUR), calendars=(closes,))
    twin = schedule("no calendar", 3600, last_run_at=eleven - HOUR)
    table = schedules.table_of(jittered)
    for task in (jittered, skipping, twin):
        started_run(task, rules.send_at(schedules.table_of(task), eleven))
    grace = 30 * MINUTE  # half the period
    assert state_of(jittered, noon + grace + MINUTE) == (ScheduleHealth.OK, None)  # within its jitter
    send = rules.send_at(table, noon)
    assert send - noon >= 20 * MINUTE
    assert state_of(jittered, send + grace - MINUTE) == (ScheduleHealth.OK, None)
    assert state_of(jittered, send + grace + MINUTE) == (ScheduleHealth.LATE, send)  # really missing
    started_run(jittered, send)
    assert state_of(jittered, send + grace + 2 * MINUTE) == (ScheduleHealth.OK, None)
    evening = dt.datetime(2026, 6, 1, 18, tzinfo=UTC)  # 12:00 to 18:00 skipped by the calendar: not late
    assert state_of(skipping, evening) == (ScheduleHealth.OK, None)
    assert state_of(twin, evening)[0] == ScheduleHealth.LATE


# --- failover in the middle of a jitter ---------------------------------------------------------------


def test_a_new_leader_sends_a_jittered_slot_at_its_moment_once_after_a_failover(
    clock: time_machine.Traveller, sent: list[dict[str, Any]]
) -> None:
    noon = dt.datetime(2026, 6, 1, 12, tzinfo=UTC)
    clock.move_to(noon - MINUTE)
    task = with_rules(schedule(jittered_name(noon, 1800, 5 * MINUTE), 3600, last_run_at=noon - HOUR), jitter=1800)
    send = rules.send_at(schedules.table_of(task), noon)
    first = started()
    clock.move_to(noon + MINUTE)  # after the slot, before its send moment
    first.tick()
    assert sent == []
    redis_client().delete(leader.LEASE_KEY)  # the leader stalls; its lease runs out
    first._next_housekeeping = float("inf")  # and it has not noticed
    heir = started()
    assert heir.lease.is_leader and sent == []
    clock.move_to(send - dt.timedelta(seconds=1))
    heir.tick()
    assert sent == []
    clock.move_to(send + dt.timedelta(seconds=1))
    heir.tick()
    first.tick()  # the stalled one wakes up: the fencing check refuses its claim
    heir.tick()
    assert [(h["scheduled_for"], h.get("slot")) for h in sent] == [(send.isoformat(), noon.isoformat())]
    assert not first.lease.is_leader
    first.close()
    heir.flush()
    assert PeriodicTask.objects.get(pk=task.pk).last_run_at == noon
    heir.close()


# --- edits of calendars and rules are picked up through the change log ----------------------------


def test_beat_picks_up_calendar_and_rule_edits_through_the_change_log(
    clock: time_machine.Traveller, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock.move_to(dt.datetime(2026, 6, 1, 9, 0, tzinfo=UTC))  # a Monday
    slot, tomorrow = dt.datetime(2026, 6, 1, 9, 30, tzinfo=UTC), dt.datetime(2026, 6, 2, 0, 30, tzinfo=UTC)
    task = with_rules(schedule("ruled", 3600, last_run_at=slot - HOUR))
    bystander = schedule("bystander", 3600, last_run_at=slot - HOUR)
    ops = BusinessCalendar.objects.create(name="Ops")
    beat = started()
    kept = beat.store.entries[bystander.pk]
    reloads: list[str] = []
    monkeypatch.setattr(beat, "load_all", lambda: reloads.append("full"))

    def entry_after_housekeeping() -> tuple[dt.datetime | None, dt.datetime | None]:
        beat.housekeeping()
        entry = beat.store.entries[task.pk]
        return entry.next_slot, entry.due_at

    assert entry_after_housekeeping() == (slot, slot)
    policy = SchedulePolicy.objects.get(pk=task.pk)
    policy.calendars.add(ops)  # attached: nothing excluded yet
    assert entry_after_housekeeping() == (slot, slot)
    assert beat.store.entries[task.pk].calendar_ids == (ops.pk,)
    CalendarExclusion.objects.create(calendar=ops, first_day=dt.date(2026, 6, 1), label="Maintenance")
    assert entry_after_housekeeping() == (tomorrow, tomorrow)  # today's slots skipped, on the grid
    policy.jitter = 600
    policy.save()
    jittered = rules.send_at(schedules.table_of(PeriodicTask.objects.get(pk=task.pk)), tomorrow)
    assert jittered > tomorrow
    assert entry_after_housekeeping() == (tomorrow, jittered)
    ops.exclusions.all().delete()
    assert entry_after_housekeeping()[0] == slot
    ops.policies.remove(policy)  # type: ignore[attr-defined]  # detached from the calendar's side (untyped m2m)
    policy.jitter = None
    policy.save()
    assert entry_after_housekeeping() == (slot, slot)
    assert beat.store.entries[task.pk].calendar_ids == ()
    assert beat.store.entries[bystander.pk] is kept and reloads == []  # row by row, never a full reload
    beat.close()
