"""The schedule form, shared by the admin and the API (the same checks at both doors):
the task picked from the registered ones, the schedule written in place (crontab fields,
interval, one-off moment or solar event) and checked field by field, arguments checked as
JSON of the right shape, and a preview of the next runs.

The form finds or creates the shared schedule row (`CrontabSchedule` and friends), so an
operator never picks one from a drop-down of every row (django-celery-beat #407)."""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from functools import cache
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django_celery_beat import validators
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

from scheduler_app import limits, schedules, services, signatures
from scheduler_app.beat import slots

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

if TYPE_CHECKING:  # Django's classes take no type arguments at run time (no django_stubs_ext.monkeypatch)
    PeriodicTaskForm = forms.ModelForm[PeriodicTask]
else:
    PeriodicTaskForm = forms.ModelForm


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
        for name, (validate, allowed, example) in CRON_FIELDS.items():
            values[name] = (data.get(name) or "").strip() or "*"
            try:
                validate(values[name])
            except ValidationError as exc:
                self.add_error(name, f"{' '.join(exc.messages).rstrip('.')}. Allowed: {allowed}, e.g. {example}.")
                valid = False
        zone = (data.get("cron_timezone") or "").strip() or "UTC"
        if zone not in zoneinfo.available_timezones():
            self.add_error("cron_timezone", f"Unknown time zone {zone!r}; use an IANA name such as Europe/Berlin.")
            valid = False
        if not valid:
            return None
        row = CrontabSchedule(timezone=zone, **values)
        try:
            slots.Cron(slots.cron_expression(row), zone)
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
    def preview(self, now: dt.datetime | None = None, editing: PeriodicTask | None = None) -> dict[str, Any]:
        """The next runs of the schedule as the form stands, in its zone and UTC: what beat
        will send once it is saved (`schedules.next_runs`, as every preview), from the last
        run and with the catch-up policy of the schedule being edited, if any."""
        now = now or timezone.now()
        table = slots.timetable(self.schedule_row)
        task = PeriodicTask(
            pk=editing.pk if editing else None,  # its policy, read as beat reads it
            task=self.cleaned_data.get("task") or "",
            enabled=True,  # a preview of when it runs, whether or not it is enabled now (saved so, it runs)
            one_off=bool(self.cleaned_data.get("one_off")) or self.cleaned_data.get("kind") == "clocked",
            start_time=self.cleaned_data.get("start_time"),
            expires=self.cleaned_data.get("expires"),
            last_run_at=editing.last_run_at if editing else None,
            date_changed=now,  # saving it now
        )
        times = [run.at for run in schedules.next_runs(task, PREVIEW_COUNT, now, table) if run.at]
        return {"zone": table.zone, "runs": slots.describe_offsets(times, table.zone)}


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
