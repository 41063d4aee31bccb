"""Slots: when a schedule runs. Crontabs in their own zone across real daylight saving
transitions (Europe/Berlin, America/New_York, Australia/Sydney), intervals anchored on
their previous slot, start times, and Celery's day-of-month AND day-of-week."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from scheduler_app.beat import slots

UTC = dt.UTC


def local_runs(expression: str, zone: str, after: dt.datetime, count: int) -> list[str]:
    table = slots.Cron(expression, zone)
    tz = ZoneInfo(zone)
    return [slot.astimezone(tz).isoformat() for slot in slots.upcoming(table, after.astimezone(UTC), count)]


def at(zone: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone))


def test_it_runs_a_slot_in_the_skipped_hour_once_at_the_transition() -> None:
    runs = local_runs("30 2 * * *", "Europe/Berlin", at("Europe/Berlin", 2026, 3, 27, 12), 3)
    assert runs == ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]


def test_it_runs_a_slot_in_the_repeated_hour_once() -> None:
    runs = local_runs("30 2 * * *", "Europe/Berlin", at("Europe/Berlin", 2026, 10, 24, 12), 2)
    assert runs == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    runs = local_runs("30 1 * * *", "America/New_York", at("America/New_York", 2026, 10, 31, 12), 2)
    assert runs == ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]


def test_it_follows_real_time_through_the_transitions_when_the_hour_is_a_wildcard() -> None:
    fall = local_runs("*/30 * * * *", "America/New_York", at("America/New_York", 2026, 11, 1, 0, 45), 5)
    assert fall == [
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:30:00-04:00",
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T01:30:00-05:00",
        "2026-11-01T02:00:00-05:00",
    ]
    spring = local_runs("0 * * * *", "America/New_York", at("America/New_York", 2026, 3, 8, 0, 30), 3)
    assert spring == ["2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T04:00:00-04:00"]


def test_it_handles_the_southern_hemisphere_the_same_way() -> None:
    autumn = local_runs("30 2 * * *", "Australia/Sydney", at("Australia/Sydney", 2026, 4, 4, 12), 2)
    assert autumn == ["2026-04-05T02:30:00+11:00", "2026-04-06T02:30:00+10:00"]
    spring = local_runs("30 2 * * *", "Australia/Sydney", at("Australia/Sydney", 2026, 10, 3, 12), 2)
    assert spring == ["2026-10-04T03:00:00+11:00", "2026-10-05T02:30:00+11:00"]


def test_its_slots_are_strictly_increasing_in_utc_across_a_whole_year() -> None:
    table = slots.Cron("*/20 0-3 * * *", "Europe/Berlin")
    runs = list(slots.upcoming(table, dt.datetime(2026, 1, 1, tzinfo=UTC), 365 * 12))
    assert all(later > earlier for earlier, later in zip(runs, runs[1:], strict=False))


def test_it_requires_both_day_of_month_and_day_of_week_as_celery_does() -> None:
    runs = local_runs("0 9 13 * 5", "UTC", dt.datetime(2026, 1, 1, tzinfo=UTC), 2)
    assert runs == ["2026-02-13T09:00:00+00:00", "2026-03-13T09:00:00+00:00"]  # Fridays the 13th


def test_it_marks_the_runs_after_a_daylight_saving_change() -> None:
    table = slots.Cron("0 12 * * *", "Europe/Berlin")
    runs = list(slots.upcoming(table, at("Europe/Berlin", 2026, 3, 27, 13), 3))
    marks = [row["dst_change"] for row in slots.describe_offsets(runs, "Europe/Berlin")]
    assert marks == [False, True, False]  # 28 March at +01:00, 29 March at +02:00


def test_it_rejects_a_bad_expression_with_the_reason() -> None:
    with pytest.raises(slots.InvalidSchedule, match="'61 \\* \\* \\* \\*'"):
        slots.Cron("61 * * * *", "UTC")


def test_an_interval_is_anchored_on_its_previous_slot_and_keeps_its_phase() -> None:
    table = slots.Interval(600)
    last = dt.datetime(2026, 6, 1, 12, 0, 7, tzinfo=UTC)
    assert table.slot_after(last) == last + dt.timedelta(minutes=10)
    now = last + dt.timedelta(hours=5, minutes=3)
    assert table.slot_following(last, now) == dt.datetime(2026, 6, 1, 17, 10, 7, tzinfo=UTC)


def test_a_schedule_with_a_start_time_runs_first_at_it() -> None:
    start = dt.datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    created = start - dt.timedelta(days=3)
    interval = slots.first_slot(slots.Interval(3600), last_run_at=None, start_time=start, created=created)
    cron = slots.first_slot(slots.Cron("15 * * * *", "UTC"), last_run_at=None, start_time=start, created=created)
    assert (interval, cron) == (start, start + dt.timedelta(minutes=15))


def test_a_clocked_schedule_has_one_slot() -> None:
    moment = dt.datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    table = slots.Clocked(moment)
    assert table.slot_after(moment - dt.timedelta(days=1)) == moment
    assert table.slot_after(moment) is None


def test_a_slot_asked_for_inside_the_repeated_hour_is_still_after_the_moment() -> None:
    table = slots.Cron("45 1 * * *", "America/New_York")
    moment = dt.datetime(2026, 11, 1, 6, 30, tzinfo=UTC)  # 01:30 EST, the second pass of 01:xx
    assert table.slot_after(moment) == dt.datetime(2026, 11, 2, 6, 45, tzinfo=UTC)


def test_an_interval_that_ran_before_its_new_start_time_runs_first_at_it() -> None:
    start = dt.datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    ran = start - dt.timedelta(days=2)
    assert slots.first_slot(slots.Interval(3600), last_run_at=ran, start_time=start, created=ran) == start


def test_the_latest_missed_slot_stands_for_a_backlog() -> None:
    now = dt.datetime(2026, 6, 1, 12, 30, tzinfo=UTC)
    cron = slots.Cron("0 * * * *", "Europe/Berlin")
    interval = slots.Interval(3600)
    first = dt.datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    assert slots.latest_until(cron, first, now) == dt.datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert slots.latest_until(interval, first, now) == dt.datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
