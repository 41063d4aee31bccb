"""The schedule form, shared by the admin and the API (the same checks at both doors):
the task picked from the registered ones, the schedule written in place (crontab fields,
interval, one-off moment or solar event) and checked field by field, arguments checked as
JSON of the right shape, and a preview of the next runs.

The form finds or creates the shared schedule row (`CrontabSchedule` and friends), so an
operator never picks one from a drop-down of every row (django-celery-beat #407)."""

from __future__ import annotations

import datetime as dt
import json
import math
import zoneinfo
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django_celery_beat import validators
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

from scheduler_app import limits, schedules, services, signatures
from scheduler_app.beat import calendars, hashing, rules, slots
from scheduler_app.models import (
    MAX_JITTER_SECONDS,
    WEEKDAYS,
    BusinessCalendar,
    CalendarExclusion,
    Pool,
    SchedulePolicy,
)
from scheduler_app.runs import rates

KINDS = [("crontab", "crontab"), ("interval", "interval"), ("clocked", "one-off (at a moment)"), ("solar", "solar")]
CRON_FIELDS = {
    "minute": (validators.minute_validator, "0-59", "*/15 or 0,30"),
    "hour": (validators.hour_validator, "0-23", "9-17 or */2"),
    "day_of_month": (validators.day_of_month_validator, "1-31", "1,15"),
    "month_of_year": (validators.month_of_year_validator, "1-12", "*/3"),
    "day_of_week": (validators.day_of_week_validator, "0-6 (0 = Sunday) or mon-sun", "mon-fri"),
}
KIND_FIELDS = {
    "crontab": ("minute", "hour", "day_of_month", "month_of_year", "day_of_week", "cron_timezone"),
    "interval": ("every", "period"),
    "clocked": ("clocked_time",),
    "solar": ("solar_event", "latitude", "longitude"),
}
PREVIEW_COUNT = 5
HASH_ALLOWED = "H, H(a-b), H/n or H(a-b)/n (a value chosen by a hash of the schedule's name)"

if TYPE_CHECKING:  # Django's classes take no type arguments at run time (no django_stubs_ext.monkeypatch)
    PeriodicTaskForm = forms.ModelForm[PeriodicTask]
    CalendarModelForm = forms.ModelForm[BusinessCalendar]
    ExclusionModelForm = forms.ModelForm[CalendarExclusion]
    PoolModelForm = forms.ModelForm[Pool]
else:
    PeriodicTaskForm = CalendarModelForm = ExclusionModelForm = PoolModelForm = forms.ModelForm


@cache
def zone_choices() -> list[tuple[str, str]]:
    return [(zone, zone) for zone in sorted(zoneinfo.available_timezones())]


def task_choices(current: str | None = None) -> list[tuple[str, str]]:
    names = services.registered_tasks()
    choices = [(name, name) for name in names]
    if current and current not in names:
        choices.insert(0, (current, f"{current} (not registered)"))
    return [("", "---------"), *choices]


class ScheduleForm(PeriodicTaskForm):
    check_queue = True  # ask the workers whether they consume the queue (a warning if none does)
    task = forms.ChoiceField(help_text="One of the tasks the workers of this project can run.")
    description = forms.CharField(
        required=False, max_length=limits.MAX_TEXT, widget=forms.Textarea(attrs={"rows": 2, "cols": 60})
    )
    kind = forms.ChoiceField(choices=KINDS, initial="crontab", label="Schedule", widget=forms.RadioSelect)
    minute = forms.CharField(initial="*", required=False, max_length=240)
    hour = forms.CharField(initial="*", required=False, max_length=96)
    day_of_month = forms.CharField(initial="*", required=False, max_length=124, label="Day of month")
    month_of_year = forms.CharField(initial="*", required=False, max_length=64, label="Month")
    day_of_week = forms.CharField(initial="*", required=False, max_length=64, label="Day of week")
    cron_timezone = forms.CharField(
        initial="UTC", required=False, label="Time zone", help_text="An IANA zone, e.g. Europe/Berlin."
    )
    every = forms.IntegerField(required=False, min_value=1, max_value=2**31 - 1, label="Every")
    period = forms.ChoiceField(choices=IntervalSchedule.PERIOD_CHOICES, required=False, initial="minutes")
    clocked_time: forms.Field = forms.DateTimeField(required=False, label="Run at", help_text="In the server's zone.")
    solar_event = forms.ChoiceField(choices=SolarSchedule._meta.get_field("event").choices, required=False)
    latitude = forms.DecimalField(required=False, min_value=-90, max_value=90, decimal_places=6)
    longitude = forms.DecimalField(required=False, min_value=-180, max_value=180, decimal_places=6)

    class Meta:
        model = PeriodicTask
        fields = ["name", "task", "description", "enabled", "args", "kwargs", "queue", "priority", "expires",
                  "expire_seconds", "start_time", "one_off", "headers"]  # fmt: skip
        widgets = {
            "args": forms.Textarea(attrs={"rows": 2, "cols": 60}),
            "kwargs": forms.Textarea(attrs={"rows": 3, "cols": 60}),
            "headers": forms.Textarea(attrs={"rows": 2, "cols": 60}),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        task_field = cast(forms.ChoiceField, self.fields["task"])  # declared above as a ChoiceField
        task_field.choices = task_choices(self.instance.task if self.instance.pk else None)
        # "%(value)s" is the choice given (ChoiceField formats it); "%%" keeps a task name's own "%".
        listed = services.unregistered("%(value)s").replace("%", "%%").replace("%%(value)s", "%(value)s")
        task_field.error_messages["invalid_choice"] = listed[0].upper() + listed[1:]
        self.fields["cron_timezone"].widget.attrs["list"] = "beatkeeper-zones"
        if "priority" in self.fields:  # not on a read-only page (the admin leaves out its model fields)
            self.fields["priority"].help_text = "0 (first) to 9 (last); empty: 5."
        self.schedule_row: slots.ScheduleRow | None = None
        self.warnings: list[str] = []  # accepted, but worth a word (a queue no worker reads)
        if self.instance.pk:  # bound too: what changed is judged against the schedule as it was
            self.initial.update(initial_schedule(self.instance))

    # --- field checks --------------------------------------------------------------------
    def clean_args(self) -> str:
        return json_text("args", self.cleaned_data.get("args"), list, 'a JSON list, e.g. [1, "two"]', "[]")

    def clean_kwargs(self) -> str:
        return json_text("kwargs", self.cleaned_data.get("kwargs"), dict, 'a JSON object, e.g. {"days": 7}', "{}")

    def clean_headers(self) -> str:
        raw = self.cleaned_data.get("headers")
        expected = 'a JSON object, e.g. {"team": "ops"}'
        return json_text("headers", raw, dict, expected, "{}", max_bytes=limits.MAX_HEADERS_BYTES)

    def clean_priority(self) -> int | None:
        priority = self.cleaned_data.get("priority")
        if priority is not None and not 0 <= priority <= 9:
            raise ValidationError("Priority runs from 0 (first) to 9 (last).")
        return priority

    def clean(self) -> dict[str, Any]:
        data = cast(dict[str, Any], super().clean())  # BaseModelForm.clean returns cleaned_data, never None
        kind = data.get("kind")
        build = {"crontab": self._crontab, "interval": self._interval, "clocked": self._clocked, "solar": self._solar}
        if kind in build:
            self.refuse_other_kinds(cast(str, kind), data)
            self.schedule_row = build[kind](data)
        if data.get("expires") and data.get("expire_seconds") is not None:
            self.add_error("expire_seconds", "Give an expiry time or expiry seconds, not both.")
        self.refuse_the_past(data)
        if kind == "clocked":
            data["one_off"] = True  # a clocked schedule runs once: one-off by itself
        if self.check_queue and data.get("queue") and (not self.instance.pk or "queue" in self.changed_data):
            self.warnings += services.queue_warnings(data["queue"])
        self.check_signature(data)
        if self.schedule_row is not None:
            try:
                slots.timetable(self.schedule_row)
            except slots.InvalidSchedule as exc:
                self.add_error(None, str(exc))
        if self.schedule_row is not None:  # the model's own check wants exactly one schedule
            self.instance.interval = self.instance.crontab = self.instance.solar = self.instance.clocked = None
            setattr(self.instance, cast(str, kind), self.schedule_row)  # a row was built: kind is one of build's
            self.instance.one_off = self.instance.one_off or kind == "clocked"
        return data

    def check_signature(self, data: dict[str, Any]) -> None:
        """The arguments against the task's signature (a new schedule, or a changed task or
        arguments): an unknown or missing keyword argument is refused here, not by every run."""
        if not data.get("task") or {"task", "args", "kwargs"} & set(self.errors):
            return
        if self.instance.pk and not {"task", "args", "kwargs"} & set(self.changed_data):
            return
        try:
            signatures.check(data["task"], json.loads(data.get("args") or "[]"), json.loads(data.get("kwargs") or "{}"))
        except signatures.ArgumentsRefused as exc:
            self.add_error("kwargs", str(exc))

    def refuse_other_kinds(self, kind: str, data: dict[str, Any]) -> None:
        """A value set in another kind's fields is left out, and said so in a warning. Not
        refused: the admin's page posts every kind's fields and hides the others' (a value
        typed before the kind was switched is still sent), so only a value set here (not
        the field's default, nor what the schedule had before its kind changed) is named.
        The API, which knows what was sent, refuses such a field (api/serializers.py)."""
        named = []
        for other, names in KIND_FIELDS.items():
            for name in names if other != kind else ():
                value = data.get(name)
                if value in (None, "") or value == self.fields[name].initial or name not in self.changed_data:
                    continue
                named.append(f"{self.fields[name].label or name} ({other})")
        if named:
            self.warnings.append(f"Left out, as the schedule is {kind}: {', '.join(named)}.")

    def refuse_the_past(self, data: dict[str, Any]) -> None:
        """An expiry or a one-off moment already past, set now, means a schedule that never
        runs. One kept as it was (an expired schedule edited otherwise) is no news."""
        now, task = timezone.now(), self.instance
        expires = data.get("expires")
        if expires and expires <= now and not same_moment(expires, task.expires if task.pk else None):
            self.add_error("expires", f"{expires:%Y-%m-%d %H:%M %Z} is in the past: the schedule would never run. "
                                      "Give a later moment, or none.")  # fmt: skip
        moment = data.get("clocked_time")
        before = task.clocked.clocked_time if task.pk and task.clocked_id else None
        if data.get("kind") == "clocked" and moment and moment <= now and not same_moment(moment, before):
            self.add_error("clocked_time", f"{moment:%Y-%m-%d %H:%M %Z} is in the past: the one run would never "
                                           "happen. Give a later moment.")  # fmt: skip

    def _crontab(self, data: dict[str, Any]) -> CrontabSchedule | None:
        values, valid = {}, True
        named = str(data.get("name") or "")
        for name, (validate, allowed, example) in CRON_FIELDS.items():
            values[name] = (data.get(name) or "").strip() or "*"
            try:
                validate(resolved_field(values[name], named, name))  # H items: the rest checked as stock
            except hashing.HashSyntaxError as exc:
                self.add_error(name, f"{str(exc)[0].upper()}{str(exc)[1:]}. Allowed: {allowed}, or {HASH_ALLOWED}.")
                valid = False
            except ValidationError as exc:
                self.add_error(name, f"{' '.join(exc.messages).rstrip('.')}. Allowed: {allowed}, e.g. {example}, "
                                     f"or {HASH_ALLOWED}.")  # fmt: skip
                valid = False
        zone = (data.get("cron_timezone") or "").strip() or "UTC"
        if zone not in zoneinfo.available_timezones():
            self.add_error("cron_timezone", f"Unknown time zone {zone!r}; use an IANA name such as Europe/Berlin.")
            valid = False
        if not valid:
            return None
        row = CrontabSchedule(timezone=zone, **values)
        try:
            slots.Cron(hashing.resolve(slots.cron_expression(row), named), zone)
        except slots.InvalidSchedule as exc:
            self.add_error("day_of_month", f"{exc}: these days never occur together; check day of month and month.")
            return None
        return row

    def _interval(self, data: dict[str, Any]) -> IntervalSchedule | None:
        every, period = data.get("every"), data.get("period")
        if not every:
            self.add_error("every", "Say how often: a whole number, 1 or more.")
        if not period:
            self.add_error("period", "Pick a unit.")
        return IntervalSchedule(every=every, period=period) if every and period else None

    def _clocked(self, data: dict[str, Any]) -> ClockedSchedule | None:
        moment = data.get("clocked_time")
        if moment is None:
            self.add_error("clocked_time", "Give the date and time of the one run.")
            return None
        return ClockedSchedule(clocked_time=moment)

    def _solar(self, data: dict[str, Any]) -> SolarSchedule | None:
        event, lat, lon = data.get("solar_event"), data.get("latitude"), data.get("longitude")
        missing = [field for field, value in (("solar_event", event), ("latitude", lat), ("longitude", lon))
                   if value in (None, "")]  # fmt: skip
        for field in missing:
            self.add_error(field, "Needed for a solar schedule.")
        return None if missing else SolarSchedule(event=event, latitude=lat, longitude=lon)

    def validate_unique(self) -> None:
        """Without a valid schedule the schedule's own fields already say what is wrong; the
        model's "one of clocked, interval, crontab, or solar must be set" would only repeat it."""
        if self.schedule_row is not None:
            super().validate_unique()
            return
        try:
            exclude = self._get_validation_exclusions()  # type: ignore[attr-defined]  # private; not in django-stubs
            models.Model.validate_unique(self.instance, exclude=exclude)
        except ValidationError as exc:
            self._update_errors(exc)  # type: ignore[attr-defined]  # private; not in django-stubs

    # --- saving --------------------------------------------------------------------------
    def save(self, commit: bool = True) -> PeriodicTask:
        task = super().save(commit=False)
        task.interval = task.crontab = task.solar = task.clocked = None
        setattr(task, self.cleaned_data["kind"], shared_row(self.schedule_row))
        task.one_off = task.one_off or self.cleaned_data["kind"] == "clocked"  # django-celery-beat's rule
        if task.one_off and task.enabled:  # saved enabled, it is to run (beat disables a one-off that has run)
            task.total_run_count = 0
        if commit:
            task.save()
        return task

    # --- preview -------------------------------------------------------------------------
    def preview(self, now: dt.datetime | None = None, editing: PeriodicTask | None = None,
                given: Rules | None = None) -> dict[str, Any]:  # fmt: skip
        """The next slots of the schedule as the form stands, in its zone and UTC, with what
        becomes of each (`schedules.explain`, as every preview): the moment beat sends it
        (its jitter in), the slot where that differs, and the calendar's skipped and moved
        slots. From the last run and with the catch-up policy of the schedule being edited,
        if any; `given`: the rules as the page or the request has them (default: the edited
        schedule's saved ones)."""
        now = now or timezone.now()
        name = str(self.cleaned_data.get("name") or (editing.name if editing else ""))
        if given is None:
            given = rules_of(getattr(editing, "policy", None) if editing is not None else None)
        table = table_with(self.schedule_row, name, given)
        task = PeriodicTask(
            pk=editing.pk if editing else None,  # its policy, read as beat reads it
            name=name,
            task=self.cleaned_data.get("task") or "",
            enabled=True,  # a preview of when it runs, whether or not it is enabled now (saved so, it runs)
            one_off=bool(self.cleaned_data.get("one_off")) or self.cleaned_data.get("kind") == "clocked",
            start_time=self.cleaned_data.get("start_time"),
            expires=self.cleaned_data.get("expires"),
            last_run_at=editing.last_run_at if editing else None,
            date_changed=now,  # saving it now
        )
        verdicts = schedules.explain(task, PREVIEW_COUNT, now, table)
        return {
            "zone": table.zone,
            "runs": preview_rows(verdicts, table.zone),
            "hashed": hashed_words(self.schedule_row, name),
        }


# --- a schedule's own rules (H, jitter, calendars) at every door -----------------------------


@dataclass(frozen=True)
class Rules:
    """A schedule's own rules as a form or a request has them, before they are saved."""

    jitter: int | None = None
    calendars: tuple[BusinessCalendar, ...] = ()
    rule: str = ""


def rules_of(policy: SchedulePolicy | None) -> Rules:
    if policy is None or policy.pk is None:
        return Rules()
    return Rules(policy.jitter, tuple(policy.calendars.all()), policy.calendar_rule)


def resolved_field(text: str, name: str, field: str) -> str:
    """A crontab field with its H items resolved for the schedule `name` (HashSyntaxError
    says what is wrong); a field without H as it is."""
    return hashing.resolve_field(text, name, hashing.FIELD_INDEX[field]) if hashing.field_has_hash(text) else text


def table_with(row: slots.ScheduleRow | None, name: str, given: Rules) -> slots.Timetable:
    """The timetable beat will read for a schedule named `name` on `row` with these rules."""
    if row is None:
        raise ValueError("the form has no valid schedule")
    found = schedules.calendars_of(list(given.calendars)) if given.calendars else None
    return rules.for_schedule(slots.timetable(row), name, jitter=float(given.jitter or 0), calendars=found,
                              move=given.rule == "move")  # fmt: skip


def jitter_problem(jitter: int | None, row: slots.ScheduleRow | None, name: str,
                   now: dt.datetime | None = None) -> str | None:  # fmt: skip
    """Why this jitter is refused for this schedule, or None. One wording for the admin and
    the API: at most MAX_JITTER_SECONDS, and less than the shortest time between two of
    the schedule's slots (else a slot could be sent after the next one)."""
    if not jitter:
        return None
    if jitter > MAX_JITTER_SECONDS:
        return f"Jitter is at most {MAX_JITTER_SECONDS} seconds (a day), not {jitter}."
    if row is None:
        return None  # no valid schedule: its own fields say what is wrong
    try:
        gap = rules.min_gap(table_with(row, name, Rules()), now or timezone.now())
    except (slots.InvalidSchedule, ValueError, OverflowError):
        return None
    if gap is not None and jitter >= gap:
        most = max(0, math.ceil(gap) - 1)
        return (f"Jitter must be less than the shortest time between two slots of this schedule ({gap:g} s), "
                f"or a slot could be sent after the next one: give at most {most} seconds.")  # fmt: skip
    return None


def calendars_problem(given: Rules, now: dt.datetime | None = None) -> str | None:
    """Several calendars that together allow no time would leave the schedule never running."""
    if len(given.calendars) < 2:  # noqa: PLR2004  (one calendar was checked when it was saved)
        return None
    try:
        schedules.calendars_of(list(given.calendars)).next_allowed(now or timezone.now())
    except calendars.NothingAllowed as exc:
        return f"{exc}: the schedule would never run. Attach fewer calendars, or widen one."
    return None


def policy_problems(row: slots.ScheduleRow | None, name: str, given: Rules) -> dict[str, str]:
    """The policy's rules that a schedule refuses, by field (`jitter`, `calendars`)."""
    problems = {"jitter": jitter_problem(given.jitter, row, name), "calendars": calendars_problem(given)}
    return {field: problem for field, problem in problems.items() if problem}


def hashed_words(row: slots.ScheduleRow | None, name: str) -> str:
    """The H values in words ("minute 37 chosen by hash of the name"), or "" without H."""
    if not isinstance(row, CrontabSchedule):
        return ""
    expression = slots.cron_expression(row)
    try:
        return hashing.chosen_by_hash(expression, name) if hashing.has_hash(expression) else ""
    except hashing.HashSyntaxError as exc:
        return f"invalid H: {exc}"


def preview_rows(verdicts: list[rules.Verdict], zone: str) -> list[dict[str, Any]]:
    """The preview's rows (admin, API, list_schedules): each slot's send moment in the zone
    and UTC (a skipped slot: the slot itself), the nominal slot where it differs, and the
    note (jitter +37s; skipped: Christmas Day, DE; moved: ...)."""
    marks = slots.describe_offsets([verdict.at or verdict.slot for verdict in verdicts], zone)
    rows = []
    for verdict, mark in zip(verdicts, marks, strict=True):
        moved = verdict.at is not None and verdict.at != verdict.slot
        slot = slots.describe_offsets([verdict.slot], zone)[0] if moved else None
        rows.append({**mark, "skipped": verdict.at is None, "note": verdict.note,
                     "slot_local": slot and slot["local"], "slot_utc": slot and slot["utc"]})  # fmt: skip
    return rows


# --- business calendars ------------------------------------------------------------------------


class CalendarForm(CalendarModelForm):
    """A business calendar, shared by the admin and the API: a known zone, known weekdays
    (stored as `mon,tue,...`), a day that ends after it starts, a country and region the
    `holidays` package knows. Its dates are checked with it (`calendar_problem`)."""

    class Meta:
        model = BusinessCalendar
        fields = ["name", "description", "timezone", "weekdays", "day_starts", "day_ends", "holiday_country",
                  "holiday_subdivision"]  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "timezone" in self.fields:  # not on a page that only shows the calendar
            self.fields["timezone"].widget.attrs["list"] = "beatkeeper-zones"

    def clean_timezone(self) -> str:
        zone = (self.cleaned_data.get("timezone") or "").strip() or "UTC"
        if zone not in zoneinfo.available_timezones():
            raise ValidationError(f"Unknown time zone {zone!r}; use an IANA name such as Europe/Berlin.")
        return zone

    def clean_weekdays(self) -> str:
        try:
            days = calendars.weekdays_of(self.cleaned_data.get("weekdays") or "")
        except ValueError as exc:
            raise ValidationError(f"{str(exc)[0].upper()}{str(exc)[1:]}, comma-separated; empty: every day.") from None
        return ",".join(WEEKDAYS[day] for day in sorted(days))

    def clean_holiday_country(self) -> str:
        return (self.cleaned_data.get("holiday_country") or "").strip().upper()

    def clean_holiday_subdivision(self) -> str:
        return (self.cleaned_data.get("holiday_subdivision") or "").strip().upper()

    def clean(self) -> dict[str, Any]:
        data = cast(dict[str, Any], super().clean())
        starts, ends = data.get("day_starts"), data.get("day_ends")
        if starts is not None and ends is not None and starts >= ends:
            self.add_error("day_ends", f"The day must end after it starts ({starts:%H:%M}); give a later time, "
                                       "or none (allowed until midnight).")  # fmt: skip
        country, region = data.get("holiday_country") or "", data.get("holiday_subdivision") or ""
        if region and not country:
            self.add_error("holiday_subdivision", "A region needs its country: give the holiday country too.")
        for field, args in (("holiday_country", (country, "")), ("holiday_subdivision", (country, region))):
            if country and field not in self.errors:
                try:
                    calendars.check_holidays(*args)
                except ValueError as exc:
                    self.add_error(field, f"{str(exc)[0].upper()}{str(exc)[1:]}.")
                    break
        return data


class ExclusionForm(ExclusionModelForm):
    """An excluded date or range of a calendar (its model says a range ends on or after it starts)."""

    class Meta:
        model = CalendarExclusion
        fields = ["first_day", "last_day", "label"]


def calendar_problem(row: BusinessCalendar, exclusions: list[CalendarExclusion],
                     now: dt.datetime | None = None) -> str | None:  # fmt: skip
    """A calendar (as its form left it, with these dates) that allows no time at all is refused."""
    try:
        calendars.from_row(row, exclusions).next_allowed(now or timezone.now())
    except calendars.NothingAllowed:
        return (f"This calendar allows no time in the next {calendars.MAX_DAYS} days: its days, hours and dates "
                "exclude everything, so a schedule on it would never run. Allow some time.")  # fmt: skip
    except (ValueError, KeyError, zoneinfo.ZoneInfoNotFoundError):
        return None  # a field of its own is wrong, and says so
    return shared_calendar_problem(row, exclusions, now or timezone.now()) if row.pk else None


def shared_calendar_problem(row: BusinessCalendar, exclusions: list[CalendarExclusion],
                            now: dt.datetime) -> str | None:  # fmt: skip
    """The calendar as edited, with the other calendars of each schedule that uses it: a
    change that would leave one of them no allowed time is refused, naming the schedule
    (each combination of calendars is tried once)."""
    edited = calendars.from_row(row, exclusions)
    users = SchedulePolicy.objects.filter(calendars=row.pk).select_related("periodic_task")
    tried: set[tuple[int, ...]] = set()
    for policy in users.prefetch_related("calendars__exclusions"):
        others = [c for c in policy.calendars.all() if c.pk != row.pk]
        key = tuple(sorted(c.pk for c in others))
        if not others or key in tried:
            continue
        tried.add(key)
        try:
            calendars.Calendars((edited, *schedules.calendars_of(others).items)).next_allowed(now)
        except calendars.NothingAllowed:
            return (f"With the other calendars of schedule {policy.periodic_task.name!r} "
                    f"({', '.join(c.name for c in others)}), this calendar would allow no time: that schedule would "
                    "never run. Allow some time, or detach a calendar from it first.")  # fmt: skip
    return None


def calendar_fields(row: BusinessCalendar) -> dict[str, Any]:
    """A calendar as the audit trail keeps it (both doors): its fields and its dates."""
    stored = BusinessCalendar.objects.prefetch_related("exclusions").get(pk=row.pk)
    data: dict[str, Any] = {field: getattr(stored, field) for field in CalendarForm.Meta.fields}
    for field in ("day_starts", "day_ends"):
        data[field] = data[field].isoformat() if data[field] else None
    data["exclusions"] = [{"first_day": x.first_day.isoformat(), "last_day": x.last_day.isoformat() if x.last_day
                           else None, "label": x.label} for x in stored.exclusions.all()]  # fmt: skip
    return data


def upcoming_exclusions(row: BusinessCalendar, today: dt.date, days: int = 60) -> list[tuple[dt.date, str]]:
    """The dates and public holidays the calendar excludes in the next `days` days (its
    excluded weekdays and hours are said once, not listed day by day)."""
    found = calendars.from_row(row)
    listed = []
    for offset in range(days):
        day = today + dt.timedelta(days=offset)
        named = [f"{item.label or 'excluded date'}" for item in found.excluded if item.first <= day <= item.last]
        holiday = found.public_holidays.get(day) if found.public_holidays is not None else None
        if holiday:
            named.append(f"{holiday} ({found.country}{'-' + found.subdivision if found.subdivision else ''})")
        if named:
            listed.append((day, "; ".join(named)))
    return listed


def json_text(field: str, raw: str | None, shape: type, expected: str, empty: str,
              max_bytes: int = limits.MAX_JSON_BYTES) -> str:  # fmt: skip
    text = (raw or "").strip() or empty
    try:
        value = limits.check_json_text(field, text, max_bytes=max_bytes)
    except limits.LimitExceeded as exc:
        raise ValidationError(str(exc)) from None
    except ValueError as exc:
        raise ValidationError(f"Not valid JSON ({exc.args[0]}); write {expected}.") from None
    if not isinstance(value, shape):
        raise ValidationError(f"Must be {expected}, not a JSON {type(value).__name__}.")
    return text


def same_moment(new: dt.datetime, old: dt.datetime | None) -> bool:
    """The moment as it was, give or take the seconds' fraction a form does not show."""
    return old is not None and abs(new - old) < dt.timedelta(seconds=1)


def initial_schedule(task: PeriodicTask) -> dict[str, Any]:
    if task.crontab_id:
        c = task.crontab
        return {
            "kind": "crontab",
            "minute": c.minute,
            "hour": c.hour,
            "day_of_month": c.day_of_month,
            "month_of_year": c.month_of_year,
            "day_of_week": c.day_of_week,
            "cron_timezone": str(c.timezone),
        }
    if task.interval_id:
        return {"kind": "interval", "every": task.interval.every, "period": task.interval.period}
    if task.clocked_id:
        return {"kind": "clocked", "clocked_time": timezone.localtime(task.clocked.clocked_time)}
    if task.solar_id:
        s = task.solar
        return {"kind": "solar", "solar_event": s.event, "latitude": s.latitude, "longitude": s.longitude}
    return {}


def shared_row(row: slots.ScheduleRow | None) -> slots.ScheduleRow:
    """The stored row equal to `row`, created if there is none (rows are shared)."""
    if row is None:
        raise ValueError("the form has no valid schedule")
    model = type(row)
    fields = {f.name: getattr(row, f.name) for f in model._meta.concrete_fields if not f.primary_key}
    existing = model.objects.filter(**fields).order_by("pk").first()
    if existing is not None:
        return existing
    row.save()
    return row


class PoolForm(PoolModelForm):
    """A concurrency pool, shared by the admin and the API: a name of letters, digits, `_`,
    `.` and `-` that never changes once made (schedules join a pool by its name), a size of
    1 to 10000, a lease of 3 s to a day, and a rate in the forms `runs/rates.py` reads."""

    class Meta:
        model = Pool
        fields = ["name", "size", "lease", "rate", "description"]

    def clean_name(self) -> str:
        name = str(self.cleaned_data.get("name") or "").strip()
        if self.instance.pk and name != self.instance.name:
            raise ValidationError(
                f"A pool's name cannot change (schedules join it by name): keep {self.instance.name!r}, "
                "or make a new pool and move the schedules to it."
            )
        return name

    def clean_rate(self) -> str:
        rate = str(self.cleaned_data.get("rate") or "").strip()
        if rate:
            try:
                rates.parse(rate)
            except ValueError as exc:
                raise ValidationError(f"{str(exc)[0].upper()}{str(exc)[1:]}; empty: no rate.") from None
        return rate
