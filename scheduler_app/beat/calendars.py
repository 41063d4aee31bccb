"""Business calendars as beat reads them: whether a moment is excluded, why, and the next
moment the calendar allows.

A calendar excludes, in its own time zone: the dates and date ranges listed on it, the
days of the week not allowed, the time of day outside `day_starts`..`day_ends`, and the
public holidays of a country and region (the `holidays` package, which computes each
year's holidays on first use). Several calendars on one schedule exclude what any of them
excludes. Every surface reads calendars through here: beat, the previews, the health
check and backfill.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import holidays

from scheduler_app.models import WEEKDAYS

if TYPE_CHECKING:
    from scheduler_app.models import BusinessCalendar

UTC = dt.UTC
MAX_DAYS = 3 * 366  # how far ahead an allowed moment is looked for before a calendar counts as closed
ONE_DAY = dt.timedelta(days=1)
EPSILON = dt.timedelta(microseconds=1)
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class NothingAllowed(ValueError):
    """The calendars allow no moment within MAX_DAYS: nothing can run."""


@dataclass(frozen=True)
class Excluded:
    first: dt.date
    last: dt.date
    label: str


@dataclass(frozen=True, eq=False)
class Calendar:
    pk: int
    name: str
    zone: str = "UTC"
    weekdays: frozenset[int] = frozenset()  # allowed days (0 = Monday); empty: every day
    day_starts: dt.time | None = None
    day_ends: dt.time | None = None
    excluded: tuple[Excluded, ...] = ()
    country: str = ""
    subdivision: str = ""
    _tz: ZoneInfo = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tz", ZoneInfo(self.zone))

    @cached_property
    def public_holidays(self) -> holidays.HolidayBase | None:
        if not self.country:
            return None
        return holidays.country_holidays(self.country, subdiv=self.subdivision or None)

    def why_excluded(self, moment: dt.datetime) -> str | None:
        """Why `moment` is excluded ("Christmas Day, DE"), or None when it is allowed."""
        local = moment.astimezone(self._tz)
        reason = self.day_excluded(local.date())
        if reason:
            return reason
        if self.day_starts and local.time() < self.day_starts:
            return f"before {self.day_starts:%H:%M} ({self.name})"
        if self.day_ends and local.time() >= self.day_ends:
            return f"after {self.day_ends:%H:%M} ({self.name})"
        return None

    def day_excluded(self, day: dt.date) -> str | None:
        for item in self.excluded:
            if item.first <= day <= item.last:
                return f"{item.label or 'excluded date'} ({self.name})"
        if self.weekdays and day.weekday() not in self.weekdays:
            return f"{DAY_NAMES[day.weekday()]} ({self.name})"
        found = self.public_holidays.get(day) if self.public_holidays is not None else None
        if found:
            region = f"-{self.subdivision}" if self.subdivision else ""
            return f"{found}, {self.country}{region}"
        return None

    def next_allowed(self, moment: dt.datetime) -> dt.datetime:
        """The first moment at or after `moment` that this calendar allows."""
        day = moment.astimezone(self._tz).date()
        for _ in range(MAX_DAYS):
            if not self.day_excluded(day):
                opens = self.at(day, self.day_starts or dt.time(0))
                closes = self.at(day, self.day_ends) if self.day_ends else self.at(day + ONE_DAY, dt.time(0))
                candidate = max(moment, opens)
                if candidate < closes:
                    return candidate
            day += ONE_DAY
        raise NothingAllowed(f"calendar {self.name!r} allows no time in the next {MAX_DAYS} days")

    def previous_allowed(self, moment: dt.datetime) -> dt.datetime | None:
        """The last moment before `moment` that this calendar allows (None: none in MAX_DAYS)."""
        day = moment.astimezone(self._tz).date()
        for _ in range(MAX_DAYS):
            if not self.day_excluded(day):
                opens = self.at(day, self.day_starts or dt.time(0))
                closes = self.at(day, self.day_ends) if self.day_ends else self.at(day + ONE_DAY, dt.time(0))
                last = min(moment, closes) - EPSILON
                if last >= opens:
                    return last
            day -= ONE_DAY
        return None

    def at(self, day: dt.date, time: dt.time) -> dt.datetime:
        """`time` on `day` in the calendar's zone, in UTC (a time in a skipped hour: the jump
        itself, the first moment whose local time is at or after it)."""
        wall = dt.datetime.combine(day, time)
        found = wall.replace(tzinfo=self._tz).astimezone(UTC)
        if found.astimezone(self._tz).replace(tzinfo=None) == wall:
            return found
        before = wall.replace(tzinfo=self._tz, fold=1).astimezone(UTC)  # in the gap: the jump lies between
        while found - before > dt.timedelta(seconds=1):
            middle = before + (found - before) / 2
            if middle.astimezone(self._tz).replace(tzinfo=None) >= wall:
                found = middle
            else:
                before = middle
        return found.replace(microsecond=0) if found.microsecond else found


@dataclass(frozen=True, eq=False)
class Calendars:
    """The calendars of one schedule, read together."""

    items: tuple[Calendar, ...]

    def __bool__(self) -> bool:
        return bool(self.items)

    def why_excluded(self, moment: dt.datetime) -> str | None:
        for calendar in self.items:
            reason = calendar.why_excluded(moment)
            if reason:
                return reason
        return None

    def previous_allowed(self, moment: dt.datetime) -> dt.datetime | None:
        """The last moment before `moment` that every calendar allows (None: none found)."""
        candidate: dt.datetime | None = moment - EPSILON
        for _ in range(MAX_DAYS):
            moved = candidate
            for calendar in self.items:
                if moved is not None and calendar.why_excluded(moved):
                    moved = calendar.previous_allowed(moved)
            if moved is None or moved == candidate:
                return moved
            candidate = moved
        return None

    def next_allowed(self, moment: dt.datetime) -> dt.datetime:
        """The first moment at or after `moment` that every calendar allows."""
        for _ in range(MAX_DAYS):
            moved = moment
            for calendar in self.items:
                moved = calendar.next_allowed(moved)
            if moved == moment:
                return moment
            moment = moved
        raise NothingAllowed(f"the calendars {', '.join(c.name for c in self.items)} allow no time together")


def weekdays_of(text: str) -> frozenset[int]:
    """`mon,tue,...` (as stored) as date.weekday() numbers; raises ValueError naming what is wrong."""
    names = [part.strip().lower()[:3] for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in WEEKDAYS]
    if unknown:
        raise ValueError(f"unknown day {unknown[0]!r}; use mon, tue, wed, thu, fri, sat, sun")
    return frozenset(WEEKDAYS.index(name) for name in names)


def from_row(row: BusinessCalendar, exclusions: Iterable[Any] | None = None) -> Calendar:
    """Beat's calendar from its row (exclusions: its CalendarExclusion rows, if fetched already)."""
    found = row.exclusions.all() if exclusions is None else exclusions
    return Calendar(
        pk=row.pk,
        name=row.name,
        zone=row.timezone or "UTC",
        weekdays=weekdays_of(row.weekdays),
        day_starts=row.day_starts,
        day_ends=row.day_ends,
        excluded=tuple(Excluded(x.first_day, x.last_day or x.first_day, x.label) for x in found),
        country=row.holiday_country.upper(),
        subdivision=row.holiday_subdivision.upper(),
    )


def check_holidays(country: str, subdivision: str) -> None:
    """Raise ValueError with what is allowed when the holidays package does not know them."""
    supported = holidays.list_supported_countries()
    if country.upper() not in supported:
        raise ValueError(f"unknown country {country!r}: use an ISO 3166 code the holidays package knows, e.g. DE, US")
    regions: Sequence[str] = supported[country.upper()]
    if subdivision and subdivision.upper() not in regions:
        raise ValueError(f"unknown region {subdivision!r} of {country.upper()}: one of {', '.join(regions)}")
