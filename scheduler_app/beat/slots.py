"""Where the run times of a schedule are computed: its slots.

Beat, `list_schedules --next`, the admin's preview and the API all ask this module, so
they agree. A slot is the moment a run is due, an aware datetime in UTC.

- interval: anchored on the previous slot (slot + every), so runs never drift;
- crontab: in the schedule's own time zone, through cronsim, with Debian cron's rules
  for daylight saving time. A slot at a fixed hour that falls in the skipped hour runs
  once, at the transition; one in the repeated hour runs once, at its first occurrence.
  An expression whose minute or hour field starts with `*` (`*`, `*/20`) follows real
  time, as cron does: it keeps running through the repeated hour (`*/20 1-3 * * *` runs
  02:00, 02:20 and 02:40 twice) and has nothing to run in the skipped one. Day of month
  and day of week must both match, as Celery's crontab has always meant;
- solar: Celery's solar schedule;
- clocked: its one moment.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias
from zoneinfo import ZoneInfo

from celery import current_app
from celery.schedules import solar
from cronsim import CronSim, CronSimError
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, SolarSchedule

from scheduler_app.beat import hashing

UTC = dt.UTC
MAX_INTERVAL_SECONDS = 100 * 366 * 86400
ScheduleRow: TypeAlias = IntervalSchedule | CrontabSchedule | SolarSchedule | ClockedSchedule


class Timetable(Protocol):
    @property
    def zone(self) -> str:
        """The time zone its slots are shown in (read-only here: most timetables are frozen dataclasses)."""

    def slot_after(self, moment: dt.datetime) -> dt.datetime | None:
        """The first slot strictly after `moment` (None: no more slots)."""

    def slot_following(self, last: dt.datetime, now: dt.datetime) -> dt.datetime | None:
        """The first slot strictly after `now`, in step with `last` (for skipping missed slots)."""


@dataclass(frozen=True)
class Interval:
    seconds: float
    zone: str = "UTC"
    step: dt.timedelta = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "step", dt.timedelta(seconds=self.seconds))  # frozen: set once, here

    def slot_after(self, moment: dt.datetime) -> dt.datetime | None:
        try:
            return moment + self.step
        except OverflowError:  # past the year 9999: no more slots
            return None

    def slot_following(self, last: dt.datetime, now: dt.datetime) -> dt.datetime:
        return self.on_grid_after(last, max(now, last))

    def on_grid_after(self, anchor: dt.datetime, moment: dt.datetime) -> dt.datetime:
        """The first slot of `anchor`'s grid (anchor + n intervals, n < 0 too) strictly after `moment`."""
        steps = math.floor((moment - anchor).total_seconds() / self.seconds) + 1
        return anchor + dt.timedelta(seconds=self.seconds * steps)

    def latest_until(self, slot: dt.datetime, now: dt.datetime) -> dt.datetime:
        return self.slot_following(slot, now) - dt.timedelta(seconds=self.seconds)


@dataclass
class Cron:
    expression: str  # minute hour day-of-month month day-of-week
    zone: str
    _tz: ZoneInfo = field(init=False, repr=False)
    _memo: dict[dt.datetime, dt.datetime | None] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._tz = ZoneInfo(self.zone)
        self._iterate(dt.datetime.now(UTC))  # raises InvalidSchedule for a bad expression

    def _iterate(self, moment: dt.datetime, reverse: bool = False) -> CronSim:
        try:
            sim = CronSim(self.expression, moment.astimezone(self._tz), reverse=reverse)
        except CronSimError as exc:
            raise InvalidSchedule(f"crontab {self.expression!r}: {exc}") from None
        sim.day_and = True  # Celery's crontab: day of month AND day of week
        return sim

    def slot_after(self, moment: dt.datetime) -> dt.datetime | None:
        """Slots are whole minutes, so the answer depends only on the minute of `moment`:
        schedules sharing this crontab share the work (memoised per minute)."""
        minute = moment.astimezone(UTC).replace(second=0, microsecond=0)
        if minute not in self._memo:
            if len(self._memo) > 4096:
                self._memo.clear()
            self._memo[minute] = self._first_after(minute)
        return self._memo[minute]

    def _first_after(self, moment: dt.datetime) -> dt.datetime | None:
        """cronsim walks local wall time: started inside a repeated hour it may answer with
        the hour's first pass, an instant before `moment`. Walk on until it is after."""
        try:
            for found in self._iterate(moment):
                if found.astimezone(UTC) > moment:
                    return found.astimezone(UTC)
        except (OverflowError, ValueError):  # past the year 9999: no more slots
            return None
        return None

    def slot_following(self, last: dt.datetime, now: dt.datetime) -> dt.datetime | None:
        return self.slot_after(now)

    def slot_before(self, moment: dt.datetime) -> dt.datetime | None:
        """The last slot strictly before `moment`."""
        try:
            for found in self._iterate(moment, reverse=True):
                if found.astimezone(UTC) < moment:
                    return found.astimezone(UTC)
        except (OverflowError, ValueError):  # before the year 1
            return None
        return None

    def latest_until(self, slot: dt.datetime, now: dt.datetime) -> dt.datetime:
        start = now.replace(microsecond=0) + dt.timedelta(seconds=1)  # reverse: strictly before the start
        for found in self._iterate(start, reverse=True):
            if found.astimezone(UTC) <= now:
                return max(found.astimezone(UTC), slot)
        return slot


@dataclass(frozen=True)
class HashedCron:
    """A crontab row with H in it (`hashing`): a template, the same for every schedule that
    shares the row; each schedule's own `Cron` comes from its name (`rules.for_schedule`)."""

    expression: str
    zone: str

    def __post_init__(self) -> None:
        self.named("example")  # the syntax and ranges, whatever the name

    def named(self, name: str) -> Cron:
        try:
            return shared_cron(hashing.resolve(self.expression, name), self.zone)
        except hashing.HashSyntaxError as exc:
            raise InvalidSchedule(f"crontab {self.expression!r}: {exc}") from None

    def slot_after(self, moment: dt.datetime) -> dt.datetime | None:
        raise InvalidSchedule("a crontab with H needs the schedule's name (rules.for_schedule)")

    def slot_following(self, last: dt.datetime, now: dt.datetime) -> dt.datetime | None:
        raise InvalidSchedule("a crontab with H needs the schedule's name (rules.for_schedule)")


_CRONS: dict[tuple[str, str], Cron] = {}


def shared_cron(expression: str, zone: str) -> Cron:
    """One Cron per expression and zone: 1,000 schedules written `H * * * *` share at most 60."""
    key = (expression, zone)
    if key not in _CRONS:
        if len(_CRONS) > 100_000:
            _CRONS.clear()
        _CRONS[key] = Cron(expression, zone)
    return _CRONS[key]


@dataclass(frozen=True)
class Solar:
    event: str
    latitude: float
    longitude: float
    zone: str = "UTC"

    def slot_after(self, moment: dt.datetime) -> dt.datetime:
        now = timezone.now()
        schedule = solar(
            self.event,  # type: ignore[arg-type]  # celery-types: solar() takes any str, ValueError if unknown
            self.latitude,
            self.longitude,
            app=current_app,
            nowfun=lambda: now,
        )
        return now + schedule.remaining_estimate(moment)

    def slot_following(self, last: dt.datetime, now: dt.datetime) -> dt.datetime:
        return self.slot_after(now)


@dataclass(frozen=True)
class Clocked:
    at: dt.datetime
    zone: str = "UTC"

    def slot_after(self, moment: dt.datetime) -> dt.datetime | None:
        return self.at if moment < self.at else None

    def slot_following(self, last: dt.datetime, now: dt.datetime) -> dt.datetime | None:
        return None


class InvalidSchedule(ValueError):
    pass


def cron_expression(row: CrontabSchedule) -> str:
    return f"{row.minute} {row.hour} {row.day_of_month} {row.month_of_year} {row.day_of_week}"


def timetable(row: ScheduleRow) -> Timetable:
    """The timetable of a django-celery-beat schedule row."""
    if isinstance(row, IntervalSchedule):
        try:
            seconds = dt.timedelta(**{row.period: row.every}).total_seconds()
        except (OverflowError, TypeError):
            seconds = math.inf
        if not 1 <= seconds <= MAX_INTERVAL_SECONDS:
            raise InvalidSchedule(f"an interval must be 1 second to 100 years, not {row.every} {row.period}")
        return Interval(seconds, default_zone())
    if isinstance(row, CrontabSchedule):
        expression = cron_expression(row)
        if hashing.has_hash(expression):
            return HashedCron(expression, str(row.timezone))
        return Cron(expression, str(row.timezone))
    if isinstance(row, SolarSchedule):
        return Solar(row.event, float(row.latitude), float(row.longitude), default_zone())
    if isinstance(row, ClockedSchedule):
        return Clocked(row.clocked_time.astimezone(UTC), default_zone())
    raise InvalidSchedule(f"not a schedule: {row!r}")


def latest_until(table: Timetable, slot: dt.datetime, now: dt.datetime) -> dt.datetime:
    """The last slot at or before `now`, from `slot` on: the one that stands for a backlog
    (a schedule's own rules, `beat.rules`: the last one sent by `now`)."""
    own = getattr(table, "latest_until", None)
    if own is not None:
        found: dt.datetime = own(slot, now)
        return found
    for _ in range(10_000):
        following = table.slot_after(slot)
        if following is None or following > now:
            break
        slot = following
    return slot


def default_zone() -> str:
    return timezone.get_default_timezone_name()


def upcoming(table: Timetable, after: dt.datetime, count: int) -> Iterator[dt.datetime]:
    """The next `count` slots strictly after `after`."""
    moment: dt.datetime | None = after
    for _ in range(count):
        moment = table.slot_after(moment) if moment else None
        if moment is None:
            return
        yield moment


def first_slot(table: Timetable, *, last_run_at: dt.datetime | None, start_time: dt.datetime | None,
               created: dt.datetime) -> dt.datetime | None:  # fmt: skip
    """The schedule's next slot from what the database says of it.

    A schedule that never ran counts from when it was last changed (django-celery-beat's
    rule); nothing runs before its start time. An interval that never ran runs first at its
    start time, and then every interval from it; a start time already past when the
    schedule was saved sets the phase: the first run is the first of start time + n
    intervals after the save. A crontab runs at its first slot from the start time on. A
    clocked schedule is due at its moment, however long ago that was (beat sends it once;
    enabled again, once more). A schedule's own rules (`beat.rules`) then leave out a slot
    its calendars exclude."""
    base = getattr(table, "base", None)
    if base is not None:  # rules.Ruled: the first slot of its timetable that it sends
        found = first_slot(base, last_run_at=last_run_at, start_time=start_time, created=created)
        admitted: dt.datetime | None = table.admit(found)  # type: ignore[attr-defined]
        return admitted
    if isinstance(table, Clocked):
        return table.at  # whether it already ran is the one-off rule's business (beat, marks)
    if isinstance(table, Interval) and last_run_at is None and start_time is not None:
        return start_time if start_time >= created else table.slot_following(start_time, created)
    slot = table.slot_after(last_run_at or created)
    if start_time is None or (slot is not None and slot >= start_time):
        return slot
    return start_time if isinstance(table, Interval) else table.slot_after(start_time - dt.timedelta(microseconds=1))


def describe_offsets(slots: list[dt.datetime], zone: str) -> list[dict[str, Any]]:
    """Slots in the schedule's zone and UTC, each marked where the zone's UTC offset
    differs from the slot before it (a daylight saving transition in between)."""
    tz = ZoneInfo(zone)
    rows: list[dict[str, Any]] = []
    previous: dt.timedelta | None = None
    for slot in slots:
        local = slot.astimezone(tz)
        offset = local.utcoffset()
        rows.append({"local": local, "utc": slot.astimezone(UTC), "dst_change": previous not in (None, offset)})
        previous = offset
    return rows
