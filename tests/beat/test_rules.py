"""A schedule's own rules, pure: `H` hash values in crontab fields (`beat.hashing`), business
calendars (`beat.calendars`: weekdays, day windows, dates, a country's and region's public
holidays, zones, daylight saving time) and the wrapped timetable (`beat.rules`: jitter,
calendar skip and move, catch-up's latest slot). Through beat's real tick:
tests/beat/test_rules_beat.py."""

from __future__ import annotations

import datetime as dt
import os
import re
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from django_celery_beat.models import CrontabSchedule

from scheduler_app.beat import calendars, hashing, rules, slots

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
HOUR = dt.timedelta(hours=1)
WEEKDAYS = calendars.weekdays_of("mon,tue,wed,thu,fri")
HOURLY = slots.Interval(3600)
FRIDAY_EVENING = dt.datetime(2026, 3, 6, 20, 0, tzinfo=UTC)  # 21:00 in Berlin; the weekend follows
MONDAY = dt.datetime(2026, 3, 9, 0, 0, tzinfo=BERLIN)  # 23:00 UTC on Sunday


def business_days(zone: str = "Europe/Berlin", **fields: object) -> calendars.Calendars:
    one = calendars.Calendar(1, "Business days", zone=zone, weekdays=WEEKDAYS, **fields)  # type: ignore[arg-type]
    return calendars.Calendars((one,))


def upcoming(table: slots.Timetable, after: dt.datetime, count: int) -> list[dt.datetime]:
    return list(slots.upcoming(table, after, count))


# --- H ----------------------------------------------------------------------------------------


def test_it_resolves_each_form_of_h_within_its_field_and_range() -> None:
    for name in (f"job {n}" for n in range(200)):
        minute, hour, day, month, weekday = hashing.resolve("H H(9-17) H * H", name).split()
        assert 0 <= int(minute) <= 59 and 9 <= int(hour) <= 17 and 1 <= int(day) <= 28 and 0 <= int(weekday) <= 6
        assert month == "*"
        every, rest = hashing.resolve("H/15 H(1-23)/4 * * *", name).split()[:2]
        first, step = re.fullmatch(r"(\d+)-59/15", every).groups()[0], 15  # type: ignore[union-attr]
        assert 0 <= int(first) < step
        assert 1 <= int(re.fullmatch(r"(\d+)-23/4", rest).group(1)) <= 4  # type: ignore[union-attr]
        low, high = hashing.resolve("H(0-29),H(30-59) * * * *", name).split()[0].split(",")
        assert 0 <= int(low) <= 29 and 30 <= int(high) <= 59
        assert hashing.resolve("H(0-5)/2,7 * * * *", name).split()[0].endswith("-5/2,7")


def test_it_gives_the_same_h_values_in_every_process_and_per_name() -> None:
    """SHA-256 of the name, not Python's hash(): another interpreter with another hash seed
    (beat restarted, a second beat, the admin) resolves the same values."""
    names = [f"report {n}" for n in range(50)]
    here = [hashing.resolve("H H * * H", name) for name in names]
    source = Path(hashing.__file__)
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('h', {str(source)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        f"print('|'.join(module.resolve('H H * * H', name) for name in {names!r}))\n"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip().split("|") == here
    assert len(set(here)) > 40  # the name chooses: fifty names, mostly different values
    assert hashing.resolve("H H * * H", "report 1") != hashing.resolve("H H * * H", "report 1 renamed")


def test_a_days_name_holding_an_h_is_no_hash_item() -> None:
    """`THU` (django-celery-beat takes day names in any case) is a day, not an H item."""
    assert not hashing.has_hash("0 9 * * THU") and hashing.resolve("0 9 * * THU", "x") == "0 9 * * THU"
    assert hashing.resolve("0 9 * * THU,H", "x").startswith("0 9 * * THU,")
    assert isinstance(slots.timetable(CrontabSchedule(minute="0", hour="9", day_of_week="THU")), slots.Cron)


def test_a_thousand_schedules_at_h_spread_over_every_minute_of_the_hour() -> None:
    minutes = Counter(int(hashing.resolve("H * * * *", f"schedule {n}").split()[0]) for n in range(1000))
    assert sorted(minutes) == list(range(60))
    expected = 1000 / 60
    chi_square = sum((minutes[m] - expected) ** 2 / expected for m in range(60))
    assert chi_square < 100, minutes  # 59 degrees of freedom: 100 is beyond p = 0.001 for a fair spread
    assert max(minutes.values()) < 3 * expected and statistics.pstdev(minutes.values()) < 7


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("H(5-70) * * * *", "minute H(5-70): the range must lie within 0-59, lowest first"),
        ("H(9-3) * * * *", "lowest first"),
        ("* H(0-24) * * *", "hour H(0-24): the range must lie within 0-23"),
        ("* * H(0-31) * *", "day_of_month H(0-31): the range must lie within 1-31"),
        ("* * * * H(0-7)", "day_of_week H(0-7): the range must lie within 0-6"),
        ("H/0 * * * *", "minute H/0: the step must be 1 to 60"),
        ("* H/25 * * *", "hour H/25: the step must be 1 to 24"),
        ("Hx * * * *", "H is written H, H(a-b), H/n or H(a-b)/n"),
        ("H * * *", "five fields expected"),
    ],
)
def test_it_refuses_a_bad_h_saying_what_is_allowed(expression: str, says: str) -> None:
    with pytest.raises(hashing.HashSyntaxError, match=re.escape(says)):
        hashing.resolve(expression, "a schedule")
    with pytest.raises(slots.InvalidSchedule, match="crontab"):
        slots.HashedCron(expression, "UTC")


def test_each_schedule_gets_its_own_crontab_from_a_shared_h_row_and_says_so() -> None:
    template = slots.HashedCron("H H(1-5) * * *", "Europe/Berlin")
    with pytest.raises(slots.InvalidSchedule, match="needs the schedule's name"):
        template.slot_after(FRIDAY_EVENING)
    table = rules.for_schedule(template, "nightly export")
    minute, hour = hashing.resolve("H H(1-5) * * *", "nightly export").split()[:2]
    (first,) = upcoming(table, FRIDAY_EVENING, 1)
    assert (first.astimezone(BERLIN).minute, first.astimezone(BERLIN).hour) == (int(minute), int(hour))
    assert hashing.chosen_by_hash("H H(1-5) * * *", "nightly export") == (
        f"minute {minute}, hour {hour} chosen by hash of the name"
    )
    assert rules.send_at(table, first) == first  # H alone moves no send


# --- jitter -------------------------------------------------------------------------------------


def test_jitter_sends_each_slot_within_its_jitter_by_a_hash_of_name_and_slot() -> None:
    table = rules.for_schedule(HOURLY, "sync", jitter=300)
    again = rules.for_schedule(slots.Cron("0 * * * *", "UTC"), "sync", jitter=300)  # another table, same slots
    other = rules.for_schedule(HOURLY, "sync 2", jitter=300)
    grid = upcoming(HOURLY, FRIDAY_EVENING, 300)
    offsets = [(rules.send_at(table, slot) - slot).total_seconds() for slot in grid]
    assert all(0 <= offset < 300 for offset in offsets)
    assert max(offsets) - min(offsets) > 200 and len(set(offsets)) > 250  # spread, not one fixed delay
    assert [rules.send_at(again, slot) for slot in grid] == [rules.send_at(table, slot) for slot in grid]
    assert [rules.send_at(other, slot) for slot in grid[:20]] != [rules.send_at(table, slot) for slot in grid[:20]]
    assert upcoming(table, FRIDAY_EVENING, 5) == grid[:5]  # the slots stay on the grid
    assert rules.for_schedule(HOURLY, "no rules") is HOURLY


def test_min_gap_is_the_shortest_time_between_slots() -> None:
    assert rules.min_gap(HOURLY, FRIDAY_EVENING) == 3600
    assert rules.min_gap(slots.Cron("0,10 * * * *", "UTC"), FRIDAY_EVENING) == 600
    assert rules.min_gap(slots.Clocked(FRIDAY_EVENING + HOUR), FRIDAY_EVENING) is None


# --- calendars ----------------------------------------------------------------------------------


def test_a_calendar_says_why_a_moment_is_excluded() -> None:
    office = calendars.Calendar(
        1, "Office", zone="America/New_York", weekdays=WEEKDAYS, day_starts=dt.time(9), day_ends=dt.time(17),
        excluded=(calendars.Excluded(dt.date(2026, 3, 10), dt.date(2026, 3, 12), "Release freeze"),),
    )  # fmt: skip
    assert office.why_excluded(dt.datetime(2026, 3, 9, 12, tzinfo=NEW_YORK)) is None
    assert office.why_excluded(dt.datetime(2026, 3, 7, 12, tzinfo=NEW_YORK)) == "Saturday (Office)"
    assert office.why_excluded(dt.datetime(2026, 3, 9, 8, 59, tzinfo=NEW_YORK)) == "before 09:00 (Office)"
    assert office.why_excluded(dt.datetime(2026, 3, 9, 17, 0, tzinfo=NEW_YORK)) == "after 17:00 (Office)"
    for day in (10, 11, 12):
        assert office.why_excluded(dt.datetime(2026, 3, day, 12, tzinfo=NEW_YORK)) == "Release freeze (Office)"
    assert office.why_excluded(dt.datetime(2026, 3, 13, 12, tzinfo=NEW_YORK)) is None
    # the calendar's own zone decides: 02:00 UTC on Tuesday is still Monday 22:00 in New York
    assert office.why_excluded(dt.datetime(2026, 3, 10, 2, tzinfo=UTC)) == "after 17:00 (Office)"
    assert office.why_excluded(dt.datetime(2026, 3, 9, 23, tzinfo=UTC)) == "after 17:00 (Office)"


def test_public_holidays_follow_the_country_and_its_region() -> None:
    bavaria = calendars.Calendar(1, "Munich", zone="Europe/Berlin", country="DE", subdivision="BY")
    berlin = calendars.Calendar(2, "Berlin", zone="Europe/Berlin", country="DE", subdivision="BE")
    epiphany = dt.datetime(2026, 1, 6, 10, tzinfo=BERLIN)
    assert bavaria.why_excluded(epiphany) == "Epiphany, DE-BY"
    assert berlin.why_excluded(epiphany) is None
    women = dt.datetime(2026, 3, 9, 10, tzinfo=BERLIN) - dt.timedelta(days=1)  # 8 March: a holiday in Berlin only
    assert berlin.why_excluded(women) is not None and bavaria.why_excluded(women) is None
    christmas = dt.datetime(2026, 12, 25, 10, tzinfo=BERLIN)
    assert bavaria.why_excluded(christmas) == berlin.why_excluded(christmas).replace("BE", "BY")  # type: ignore[union-attr]
    assert bavaria.next_allowed(dt.datetime(2026, 12, 25, 10, tzinfo=BERLIN)) == dt.datetime(
        2026, 12, 27, tzinfo=BERLIN
    )
    calendars.check_holidays("de", "by")
    with pytest.raises(ValueError, match="unknown country 'XX'"):
        calendars.check_holidays("XX", "")
    with pytest.raises(ValueError, match="unknown region 'ZZ' of DE: one of .*BY"):
        calendars.check_holidays("DE", "ZZ")
    with pytest.raises(ValueError, match="unknown day 'fry'; use mon, tue"):
        calendars.weekdays_of("mon,fry")


def test_next_allowed_finds_the_first_allowed_moment_across_daylight_saving_time() -> None:
    office = business_days("America/New_York", day_starts=dt.time(9), day_ends=dt.time(17))
    # Saturday 7 March; New York springs forward on Sunday 8 March: Monday 09:00 is EDT
    assert office.next_allowed(dt.datetime(2026, 3, 7, 12, tzinfo=UTC)) == dt.datetime(2026, 3, 9, 13, tzinfo=UTC)
    assert office.next_allowed(dt.datetime(2026, 3, 6, 16, tzinfo=NEW_YORK)) == dt.datetime(
        2026, 3, 6, 16, tzinfo=NEW_YORK
    )
    # Saturday 24 October; Berlin falls back on the 25th: Monday 09:00 is CET, 08:00 UTC (07:00 the Friday before)
    office = business_days(day_starts=dt.time(9))
    assert office.next_allowed(dt.datetime(2026, 10, 24, 12, tzinfo=UTC)) == dt.datetime(2026, 10, 26, 8, tzinfo=UTC)
    # a day that opens at 02:30 on the night 02:00-03:00 does not exist opens at the jump, 03:00 CEST
    night = calendars.Calendars((calendars.Calendar(2, "Night", zone="Europe/Berlin", day_starts=dt.time(2, 30)),))
    opens = night.next_allowed(dt.datetime(2026, 3, 29, 0, 0, tzinfo=UTC))
    assert opens == dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC) and night.why_excluded(opens) is None
    assert night.why_excluded(opens - dt.timedelta(seconds=1)) is not None
    closed = calendars.Calendar(3, "Never", weekdays=frozenset({0}), excluded=(
        calendars.Excluded(dt.date(2026, 1, 1), dt.date(2030, 1, 1), "closed"),))  # fmt: skip
    with pytest.raises(calendars.NothingAllowed, match="'Never' allows no time"):
        closed.next_allowed(FRIDAY_EVENING)


def test_several_calendars_exclude_what_any_of_them_excludes() -> None:
    both = calendars.Calendars((
        calendars.Calendar(1, "Weekdays", zone="Europe/Berlin", weekdays=WEEKDAYS),
        calendars.Calendar(2, "Mornings", zone="America/New_York", day_starts=dt.time(6), day_ends=dt.time(12)),
    ))  # fmt: skip
    assert both.why_excluded(dt.datetime(2026, 3, 7, 14, tzinfo=UTC)) == "Saturday (Weekdays)"
    assert both.why_excluded(dt.datetime(2026, 3, 9, 5, tzinfo=UTC)) == "before 06:00 (Mornings)"
    found = both.next_allowed(dt.datetime(2026, 3, 6, 20, tzinfo=UTC))  # Friday 21:00 in Berlin
    assert found == dt.datetime(2026, 3, 9, 6, tzinfo=NEW_YORK)  # Monday 06:00 EDT, 11:00 in Berlin
    assert both.why_excluded(found) is None and both.why_excluded(found - dt.timedelta(seconds=1)) is not None


# --- skip and move -----------------------------------------------------------------------------


def test_skip_leaves_the_excluded_slots_out_and_the_interval_on_its_grid() -> None:
    table = rules.for_schedule(HOURLY, "hourly", calendars=business_days())
    found = upcoming(table, FRIDAY_EVENING, 4)
    assert found == [FRIDAY_EVENING + HOUR, FRIDAY_EVENING + 2 * HOUR, MONDAY, MONDAY + HOUR]
    following = table.slot_following(FRIDAY_EVENING, dt.datetime(2026, 3, 7, 5, 30, tzinfo=UTC))
    assert following == MONDAY
    assert isinstance(table, rules.Ruled)
    latest = table.latest_until(FRIDAY_EVENING, dt.datetime(2026, 3, 8, 12, tzinfo=UTC))
    assert latest == FRIDAY_EVENING + 2 * HOUR  # the last slot sent before the weekend
    offset = slots.Interval(3600)  # on a grid of :17 past: the first Monday slot is 00:17, not 00:00
    table = rules.for_schedule(offset, "hourly at 17", calendars=business_days())
    assert upcoming(table, FRIDAY_EVENING + dt.timedelta(minutes=17), 3)[2] == MONDAY + dt.timedelta(minutes=17)
    verdicts = list(table.explain(FRIDAY_EVENING + dt.timedelta(minutes=17), 4))  # type: ignore[attr-defined]
    assert [v.at is None for v in verdicts] == [False, False, True, True]
    assert verdicts[2].note == "skipped: Saturday (Business days)"


def test_skip_with_jitter_judges_the_send_moment() -> None:
    """A slot just before the calendar opens is sent when its jittered moment is allowed."""
    table = rules.for_schedule(HOURLY, "jittered", jitter=1800, calendars=business_days())
    assert isinstance(table, rules.Ruled)
    for slot in upcoming(table, FRIDAY_EVENING, 30):
        assert business_days().why_excluded(table.send_at(slot)) is None
    grid = upcoming(HOURLY, FRIDAY_EVENING, 80)
    sent = {slot for slot in grid if business_days().why_excluded(rules.send_at(table, slot)) is None}
    assert set(upcoming(table, FRIDAY_EVENING, len(sent))) == sent  # every allowed slot, none other


def test_move_collapses_a_weekend_of_hourly_slots_into_mondays_first_slot() -> None:
    table = rules.for_schedule(HOURLY, "hourly", calendars=business_days(), move=True)
    assert isinstance(table, rules.Ruled)
    found = upcoming(table, FRIDAY_EVENING, 4)
    assert found == [FRIDAY_EVENING + HOUR, FRIDAY_EVENING + 2 * HOUR, MONDAY, MONDAY + HOUR]
    assert [table.send_at(slot) for slot in found] == found
    weekend = list(table.explain(FRIDAY_EVENING + 2 * HOUR, 49))  # up to Monday 00:00
    assert {v.at for v in weekend} == {MONDAY} and weekend[-1].slot == MONDAY
    assert weekend[0].note == "moved: Saturday (Business days); one run with the slot of 2026-03-08 23:00 UTC"


def test_move_sends_a_weekend_of_daily_slots_once_at_the_opening() -> None:
    daily = slots.Cron("0 3 * * *", "Europe/Berlin")
    table = rules.for_schedule(daily, "daily", calendars=business_days(), move=True)
    assert isinstance(table, rules.Ruled)
    found = upcoming(table, FRIDAY_EVENING, 3)
    saturday, sunday, monday, tuesday = (dt.datetime(2026, 3, d, 3, tzinfo=BERLIN) for d in (7, 8, 9, 10))
    assert found == [sunday, monday, tuesday]  # Saturday's is one run with Sunday's
    assert [table.send_at(slot) for slot in found] == [MONDAY, monday, tuesday]
    assert table.verdict(saturday).note == "moved: Saturday (Business days)"
    assert table.latest_until(saturday, MONDAY) == sunday  # a backlog's latest slot sent by then
    assert table.latest_until(saturday, MONDAY - dt.timedelta(seconds=1)) == saturday  # nothing sent yet
    early = rules.for_schedule(daily, "early", calendars=business_days(day_starts=dt.time(6)), move=True)
    opening = dt.datetime(2026, 3, 9, 6, tzinfo=BERLIN)  # every 03:00 is before the opening: moved to 06:00
    assert upcoming(early, FRIDAY_EVENING, 2) == [monday, tuesday]
    assert [rules.send_at(early, slot) for slot in (monday, tuesday)] == [opening, opening + dt.timedelta(days=1)]


def test_move_with_jitter_sends_after_the_opening_within_the_jitter() -> None:
    table = rules.for_schedule(HOURLY, "moved", jitter=600, calendars=business_days(), move=True)
    assert isinstance(table, rules.Ruled)
    for slot in upcoming(table, FRIDAY_EVENING, 10):
        at = table.send_at(slot)
        assert slot <= at < max(slot, MONDAY) + dt.timedelta(seconds=600)
        assert business_days().why_excluded(at) is None
    sends = [table.send_at(slot) for slot in upcoming(table, FRIDAY_EVENING, 10)]
    assert sends == sorted(sends) and len(set(sends)) == len(sends)  # each once, in order


def test_the_rules_of_a_schedule_survive_the_repeated_hour_in_new_york() -> None:
    """Jitter and a skipping calendar on a crontab through the night New York falls back."""
    cron = slots.Cron("30 1 * * *", "America/New_York")
    table = rules.for_schedule(cron, "night", jitter=120, calendars=business_days("America/New_York"))
    found = upcoming(table, dt.datetime(2026, 10, 30, 12, tzinfo=NEW_YORK), 2)
    assert found == [dt.datetime(2026, 11, 2, 1, 30, tzinfo=NEW_YORK), dt.datetime(2026, 11, 3, 1, 30, tzinfo=NEW_YORK)]
    for slot in found:
        assert dt.timedelta(0) <= rules.send_at(table, slot) - slot < dt.timedelta(seconds=120)
