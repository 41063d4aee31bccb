"""The API's shapes. Writes are checked by the same `ScheduleForm` as the admin's and
the same `SchedulePolicy` rules, so both doors accept and refuse the same schedules."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django_celery_beat.models import IntervalSchedule, PeriodicTask, SolarSchedule
from django_celery_results.models import TaskResult
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from scheduler_app import forms, limits, schedules, selectors, services
from scheduler_app.forms import KIND_FIELDS, KINDS, ScheduleForm, initial_schedule
from scheduler_app.models import CALENDAR_RULES, POLICY_FIELDS, BusinessCalendar, Pool, Run, SchedulePolicy
from scheduler_app.runs import history, states
from scheduler_app.runs.pools import POOL_FULL_CHOICES

POLICY_API_FIELDS = (*POLICY_FIELDS, "late_after", "alert_after_failures", "pause_after_failures")
MESSAGE_FIELDS = ("queue", "priority", "expires", "expire_seconds", "start_time", "one_off")
FORM_NAMES = {"timezone": "cron_timezone"}  # API name -> form name
API_NAMES = {form: api for api, form in FORM_NAMES.items()}


def refuse_unknown(serializer: serializers.BaseSerializer[Any], data: Any, echoed: Iterable[str] = ()) -> None:
    """A field the serializer does not take is refused, naming the ones it does: a typo
    (`enabeld`, `minuet`) must not be ignored in silence. The `echoed` names, read-only
    fields of what the API answers, are ignored: a client may send back what it read."""
    if not isinstance(data, Mapping):
        return  # DRF's own check answers "expected a dictionary"
    fields = getattr(serializer, "fields", {})
    allowed = [name for name, field in fields.items() if not field.read_only]
    unknown = sorted(str(name) for name in data if name not in allowed and name not in echoed)
    if unknown:
        hint = f"unknown field; the fields taken here are {', '.join(allowed)}."
        raise serializers.ValidationError({name: [hint] for name in unknown})


def check_json(field: str, value: Any, max_bytes: int = limits.MAX_JSON_BYTES) -> Any:
    try:
        limits.check_json(field, value, max_bytes=max_bytes)
    except limits.LimitExceeded as exc:
        raise serializers.ValidationError(str(exc)) from None
    return value


class PoolName(serializers.SlugRelatedField[Pool]):
    """A pool by its name, read from the policy's own column (no query per schedule listed)."""

    def get_attribute(self, instance: Any) -> Any:
        return instance.pool_id

    def to_representation(self, value: Any) -> Any:
        return value


class PolicySerializer(serializers.ModelSerializer[SchedulePolicy]):
    owner = serializers.SlugRelatedField(
        slug_field="username", queryset=get_user_model().objects.all(), required=False, allow_null=True
    )
    # The range is checked with the schedule (forms.jitter_problem), in the admin's words.
    jitter = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, max_value=2**31 - 1,
        help_text="Seconds: each slot is sent up to this much later (derived from the schedule and the slot); "
        "less than the time between two slots, at most 86400; null: none.",
    )  # fmt: skip
    calendars = serializers.SlugRelatedField(
        slug_field="name", many=True, queryset=BusinessCalendar.objects.all(), required=False,
        help_text="The names of the business calendars the schedule keeps out of (GET /api/calendars/); "
        "[] for none.",
    )  # fmt: skip
    calendar_rule = serializers.ChoiceField(
        choices=["", *CALENDAR_RULES], required=False, allow_blank=True,
        help_text="A slot in an excluded time: skip (the default, also \"\") or move it to the next allowed moment.",
    )  # fmt: skip

    pool = PoolName(
        slug_field="name", queryset=Pool.objects.all(), required=False, allow_null=True,
        help_text="The concurrency pool whose slot each run takes (GET /api/pools/); null: the task's own, if any.",
    )  # fmt: skip
    pool_full = serializers.ChoiceField(
        choices=["", *POOL_FULL_CHOICES], required=False, allow_blank=True,
        help_text="The pool has no free slot: wait in line (the default, also \"\") or skip the run.",
    )  # fmt: skip

    class Meta:
        model = SchedulePolicy
        fields = [*POLICY_API_FIELDS, "owner", "jitter", "calendars", "calendar_rule", "pool"]

    def to_internal_value(self, data: Any) -> Any:
        refuse_unknown(self, data)
        return super().to_internal_value(data)


class ScheduleWriteSerializer(serializers.Serializer[PeriodicTask]):
    """A schedule to create or change. `kind` picks which schedule fields apply."""

    name = serializers.CharField(max_length=200)
    task = serializers.CharField(max_length=200, help_text="A registered task (GET /api/tasks/).")
    description = serializers.CharField(required=False, allow_blank=True, max_length=limits.MAX_TEXT)
    enabled = serializers.BooleanField(required=False)
    kind = serializers.ChoiceField(choices=[k for k, _ in KINDS])
    minute = serializers.CharField(required=False, max_length=240)
    hour = serializers.CharField(required=False, max_length=96)
    day_of_month = serializers.CharField(required=False, max_length=124)
    month_of_year = serializers.CharField(required=False, max_length=64)
    day_of_week = serializers.CharField(required=False, max_length=64)
    timezone = serializers.CharField(required=False, max_length=63, help_text="IANA zone of a crontab.")
    every = serializers.IntegerField(required=False, min_value=1, max_value=2**31 - 1)
    period = serializers.ChoiceField(required=False, choices=[p for p, _ in IntervalSchedule.PERIOD_CHOICES])
    clocked_time = serializers.DateTimeField(required=False)
    solar_event = serializers.ChoiceField(
        required=False, choices=[e for e, _ in SolarSchedule._meta.get_field("event").choices]
    )
    latitude = serializers.DecimalField(required=False, max_digits=9, decimal_places=6, min_value=-90, max_value=90)
    longitude = serializers.DecimalField(required=False, max_digits=9, decimal_places=6, min_value=-180, max_value=180)
    args = serializers.JSONField(required=False, help_text="A JSON list.")
    kwargs = serializers.JSONField(required=False, help_text="A JSON object.")
    headers = serializers.JSONField(required=False, help_text="A JSON object: extra message headers.")
    queue = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=200)
    priority = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=9)
    expires = serializers.DateTimeField(required=False, allow_null=True)
    expire_seconds = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=2**31 - 1)
    start_time = serializers.DateTimeField(required=False, allow_null=True)
    one_off = serializers.BooleanField(required=False)
    policy = PolicySerializer(required=False)

    def to_internal_value(self, data: Any) -> Any:
        refuse_unknown(self, data, echoed=ScheduleSerializer.Meta.fields)  # what GET answers may come back
        return super().to_internal_value(data)

    def validate_args(self, value: Any) -> Any:
        return check_json("args", value)

    def validate_kwargs(self, value: Any) -> Any:
        return check_json("kwargs", value)

    def validate_headers(self, value: Any) -> Any:
        return check_json("headers", value, limits.MAX_HEADERS_BYTES)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        refuse_other_kinds(attrs, self.instance, self.initial_data)
        form = ScheduleForm(form_data(attrs, self.instance), instance=self.instance)
        if not form.is_valid():
            raise serializers.ValidationError(api_errors(form.errors))
        rules = given_rules(attrs.get("policy"), self.instance)
        problems = forms.policy_problems(form.schedule_row, form.cleaned_data["name"], rules)
        if problems:  # the admin's words (forms.policy_problems), under the policy's field
            raise serializers.ValidationError({"policy": {field: [text] for field, text in problems.items()}})
        attrs["form"], attrs["rules"] = form, rules
        return attrs

    @transaction.atomic
    def create(self, validated: dict[str, Any]) -> PeriodicTask:
        task = validated["form"].save()
        save_policy(task, validated.get("policy"))
        return task

    @transaction.atomic
    def update(self, task: PeriodicTask, validated: dict[str, Any]) -> PeriodicTask:
        task = validated["form"].save()
        if "policy" in validated:
            save_policy(task, validated["policy"])
        if task.enabled:
            services.clear_pause(task)
        return task

    def to_representation(self, task: PeriodicTask) -> dict[str, Any]:
        form = getattr(self, "_validated_data", {}).get("form")
        warnings = form.warnings if form is not None else []
        return {**ScheduleSerializer(task, context=self.context).data, "warnings": warnings}


def given_rules(policy: dict[str, Any] | None, instance: PeriodicTask | None) -> forms.Rules:
    """The schedule's jitter, calendars and rule as the request leaves them: what it sends,
    the schedule's own for the rest (a partial update)."""
    saved = forms.rules_of(getattr(instance, "policy", None) if instance is not None else None)
    sent = policy or {}
    return forms.Rules(
        sent.get("jitter", saved.jitter),
        tuple(sent["calendars"]) if "calendars" in sent else saved.calendars,
        sent.get("calendar_rule", saved.rule),
    )


def refuse_other_kinds(attrs: dict[str, Any], instance: PeriodicTask | None, sent: Any) -> None:
    """A field of another kind than the schedule's (`minute` with `kind: interval`) would be
    ignored: refuse it. The kind is the one sent, or the schedule's own."""
    kind = attrs.get("kind") or (initial_schedule(instance).get("kind") if instance is not None else None)
    errors = {}
    for other, names in KIND_FIELDS.items():
        for name in (API_NAMES.get(form, form) for form in names):
            if other != kind and isinstance(sent, Mapping) and sent.get(name) is not None:
                errors[name] = [f"a field of a {other} schedule, and this schedule is {kind}: leave it out, "
                                f"or send kind: {other} with it."]  # fmt: skip
    if errors:
        raise serializers.ValidationError(errors)


def form_data(attrs: dict[str, Any], instance: PeriodicTask | None) -> dict[str, Any]:
    """The form's fields: the schedule as it stands (for a partial update), then the request's."""
    data: dict[str, Any] = {}
    if instance is not None:
        data |= {f: getattr(instance, f) for f in ("name", "task", "description", "enabled", *MESSAGE_FIELDS)}
        data |= {"args": instance.args, "kwargs": instance.kwargs, "headers": instance.headers or "{}"}
        data |= initial_schedule(instance)
    else:
        data["enabled"] = True
    for key, value in attrs.items():
        if key == "policy":
            continue
        if value is None:
            value = ""  # an explicit null clears the field, as an empty form field does
        data[FORM_NAMES.get(key, key)] = json.dumps(value) if key in ("args", "kwargs", "headers") else value
    return {key: value for key, value in data.items() if value is not None and value is not False}


def api_errors(errors: dict[str, Any]) -> dict[str, Any]:
    return {API_NAMES.get(field, "non_field_errors" if field == "__all__" else field): list(messages)
            for field, messages in errors.items()}  # fmt: skip


def save_policy(task: PeriodicTask, values: dict[str, Any] | None) -> None:
    policy = services.policy_of(task)
    attached = (values or {}).get("calendars")
    for field, value in (values or {}).items():
        if field != "calendars":
            setattr(policy, field, value)
    try:
        policy.full_clean()
    except DjangoValidationError as exc:
        raise serializers.ValidationError({"policy": exc.messages}) from None
    policy.save()
    if attached is not None:
        policy.calendars.set(attached)
    task.policy = policy  # the answer shows the policy as saved, not the one read while validating


class ScheduleSerializer(serializers.ModelSerializer[PeriodicTask]):
    """A schedule as read: its schedule in words and in fields, next run, policy, health."""

    schedule = serializers.SerializerMethodField()
    next_run = serializers.SerializerMethodField()
    policy = serializers.SerializerMethodField()
    paused = serializers.SerializerMethodField()
    health = serializers.SerializerMethodField()
    args = serializers.SerializerMethodField()
    kwargs = serializers.SerializerMethodField()
    headers = serializers.SerializerMethodField()

    class Meta:
        model = PeriodicTask
        fields = [
            "id",
            "name",
            "task",
            "description",
            "enabled",
            "paused",
            "schedule",
            "next_run",
            "args",
            "kwargs",
            "headers",
            *MESSAGE_FIELDS,
            "last_run_at",
            "total_run_count",
            "date_changed",
            "policy",
            "health",
        ]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_schedule(self, task: PeriodicTask) -> dict[str, Any]:
        fields = initial_schedule(task)
        if "cron_timezone" in fields:
            fields["timezone"] = fields.pop("cron_timezone")
        return {**fields, "words": schedules.shown_description(task), "zone": schedules.zone_of(task),
                "chosen_by_hash": chosen_by_hash(task)}  # fmt: skip

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_next_run(self, task: PeriodicTask) -> dict[str, Any]:
        """When beat sends it next (`at`: the send moment, its jitter or calendar move in), the
        nominal `slot` where that differs, and the `note` ("jitter +37s", "moved: ...")."""
        upcoming = schedules.shown_next_run(task)
        local = upcoming.local()
        slot = upcoming.slot if upcoming.slot is not None and upcoming.slot != upcoming.at else None
        return {"at": upcoming.at, "local": local.isoformat() if local else None, "zone": upcoming.zone,
                "reason": upcoming.reason, "slot": slot, "note": upcoming.note}  # fmt: skip

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_policy(self, task: PeriodicTask) -> dict[str, Any]:
        policy = getattr(task, "policy", None)
        return PolicySerializer(policy).data if policy else {}

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_paused(self, task: PeriodicTask) -> dict[str, Any] | None:
        policy = getattr(task, "policy", None)
        if policy is None or policy.paused_at is None:
            return None
        by = policy.paused_by.get_username() if policy.paused_by else None
        return {"at": policy.paused_at, "by": by, "note": policy.pause_note}

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_health(self, task: PeriodicTask) -> dict[str, Any] | None:
        health = getattr(task, "health", None)
        if health is None:
            return None
        return {"state": health.state, "since": health.since, "expected_at": health.expected_at,
                "failures": health.failures, "checked_at": health.checked_at}  # fmt: skip

    @extend_schema_field(OpenApiTypes.ANY)
    def get_args(self, task: PeriodicTask) -> Any:
        return loads_or_text(task.args)

    @extend_schema_field(OpenApiTypes.ANY)
    def get_kwargs(self, task: PeriodicTask) -> Any:
        return loads_or_text(task.kwargs)

    @extend_schema_field(OpenApiTypes.ANY)
    def get_headers(self, task: PeriodicTask) -> Any:
        return loads_or_text(task.headers or "{}")


def chosen_by_hash(task: PeriodicTask) -> str:
    """The H values of a crontab in words ("minute 37 chosen by hash of the name"), or ""."""
    return forms.hashed_words(task.crontab, task.name) if task.crontab_id else ""


def run_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The preview's rows as the API answers them (next-runs, preview): the send moment in the
    zone and UTC, the nominal slot where it differs, the note; a skipped slot has `skipped`."""
    return [{"local": row["local"].isoformat(), "utc": row["utc"].isoformat(), "dst_change": row["dst_change"],
             "skipped": row["skipped"], "note": row["note"],
             "slot": row["slot_utc"].isoformat() if row["slot_utc"] else None,
             "slot_local": row["slot_local"].isoformat() if row["slot_local"] else None} for row in rows]  # fmt: skip


def loads_or_text(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except (ValueError, RecursionError):  # stored before the doors limited depth
        return text


class PauseSerializer(serializers.Serializer[dict[str, Any]]):
    note = serializers.CharField(required=False, allow_blank=True, max_length=limits.MAX_NOTE)

    def to_internal_value(self, data: Any) -> Any:
        refuse_unknown(self, data)
        return super().to_internal_value(data)


class RunNowSerializer(serializers.Serializer[dict[str, Any]]):
    args = serializers.ListField(
        required=False, child=serializers.JSONField(),
        help_text="Replaces the schedule's for this run; needs the permission to change the schedule.",
    )  # fmt: skip
    kwargs = serializers.DictField(
        required=False, child=serializers.JSONField(),
        help_text="Replaces the schedule's for this run; needs the permission to change the schedule.",
    )  # fmt: skip

    def to_internal_value(self, data: Any) -> Any:
        refuse_unknown(self, data)
        return super().to_internal_value(data)

    def validate_args(self, value: Any) -> Any:
        return check_json("args", value)

    def validate_kwargs(self, value: Any) -> Any:
        return check_json("kwargs", value)


class RunSerializer(serializers.ModelSerializer[Run]):  # the API shows Runs (TaskResult's proxy)
    """A recorded run, with the platform's context and its progress while it runs."""

    schedule = serializers.CharField(source="periodic_task_name", read_only=True)
    state = serializers.CharField(source="status", read_only=True)
    context = serializers.SerializerMethodField()  # type: ignore[assignment]  # DRF's metaclass takes it off the class
    progress = serializers.SerializerMethodField()
    duration = serializers.SerializerMethodField()
    result = serializers.SerializerMethodField()
    task_args = serializers.SerializerMethodField()
    task_kwargs = serializers.SerializerMethodField()
    task_args_truncated = serializers.SerializerMethodField()
    task_kwargs_truncated = serializers.SerializerMethodField()

    class Meta:
        model = TaskResult
        fields = [
            "id",
            "task_id",
            "task_name",
            "schedule",
            "state",
            "worker",
            "date_created",
            "date_started",
            "date_done",
            "duration",
            "context",
            "progress",
            "task_args",
            "task_kwargs",
            "task_args_truncated",
            "task_kwargs_truncated",
            "result",
            "traceback",
        ]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.ANY)
    def get_task_args(self, run: Run) -> Any:
        """The run's positional arguments as data; their recorded text when it was cut."""
        return history.recorded_arguments(run.task_args)[0]

    @extend_schema_field(OpenApiTypes.ANY)
    def get_task_kwargs(self, run: Run) -> Any:
        return history.recorded_arguments(run.task_kwargs)[0]

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_task_args_truncated(self, run: Run) -> bool:
        """True when Celery recorded the arguments cut short: `task_args` is then their text."""
        return history.recorded_arguments(run.task_args)[1]

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_task_kwargs_truncated(self, run: Run) -> bool:
        return history.recorded_arguments(run.task_kwargs)[1]

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_context(self, run: Run) -> dict[str, Any]:
        return history.run_context(run)

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_progress(self, run: Run) -> dict[str, Any] | None:
        data = loads_or_text(run.result)
        return data if run.status == states.PROGRESS and isinstance(data, dict) else None

    @extend_schema_field(OpenApiTypes.NUMBER)
    def get_duration(self, run: Run) -> float | None:
        return selectors.duration(run.date_started, run.date_done)

    @extend_schema_field(OpenApiTypes.ANY)
    def get_result(self, run: Run) -> Any:
        return loads_or_text(run.result)


class RunCreatedSerializer(serializers.Serializer[dict[str, Any]]):
    run = serializers.CharField(help_text="The new run's id (task_id).")
    warnings = serializers.ListField(
        child=serializers.CharField(), help_text="Queued all the same, but worth a word: no worker online."
    )


# --- /api/stats/ (shapes of the answer; the figures are `selectors`', as the dashboard's) --------


class RunFiguresSerializer(serializers.Serializer[dict[str, Any]]):
    """The runs created in the window: the dashboard's figures (`selectors.run_figures`)."""

    runs = serializers.IntegerField(help_text="Runs created in the window, in any state.")
    successes = serializers.IntegerField()
    failures = serializers.IntegerField()
    error_rate = serializers.FloatField(allow_null=True, help_text="failures / (successes + failures); null: none.")
    mean_seconds = serializers.FloatField(allow_null=True, help_text="Mean duration of the finished runs.")
    p50_seconds = serializers.FloatField(
        allow_null=True, help_text="Median duration of the finished runs (SUCCESS, FAILURE), interpolated."
    )
    p95_seconds = serializers.FloatField(allow_null=True, help_text="95th percentile duration (percentile_cont).")
    throughput_per_hour = serializers.FloatField(help_text="Runs per hour over the window.")
    peak_concurrency = serializers.IntegerField(
        help_text="The most runs running at one moment (a run still running counts up to now)."
    )
    running = serializers.IntegerField(help_text="Runs of the window running now (STARTED or PROGRESS).")
    sampled = serializers.BooleanField(
        help_text="Durations and concurrency over the window's newest 100,000 runs only (not on PostgreSQL)."
    )


class TaskFiguresSerializer(RunFiguresSerializer):
    task = serializers.CharField(help_text='The task\'s name ("?": runs without one).')


class ScheduleFiguresSerializer(serializers.Serializer[dict[str, Any]]):
    """A schedule as the console's schedule list shows it (`selectors.schedule_figures`)."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    task = serializers.CharField()
    enabled = serializers.BooleanField()
    last_run = serializers.DictField(allow_null=True, help_text="`state` and `at` of its newest run; null: none.")
    next_run = serializers.DictField(help_text="`at` (UTC, null: none), `local`, `zone`, `reason` (why none).")
    success_rate = serializers.FloatField(allow_null=True, help_text="Of the finished runs among its last 20.")
    median_seconds = serializers.FloatField(allow_null=True, help_text="Of the finished runs among its last 20.")
    recent_runs = serializers.IntegerField(help_text="How many runs those figures are of (at most 20).")


class SchedulePageSerializer(serializers.Serializer[dict[str, Any]]):
    count = serializers.IntegerField(help_text="Schedules in all.")
    page = serializers.IntegerField()
    page_size = serializers.IntegerField()
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = ScheduleFiguresSerializer(many=True)


class StatsSerializer(serializers.Serializer[dict[str, Any]]):
    window = serializers.CharField()
    since = serializers.DateTimeField(help_text="The window's start: runs created since.")
    now = serializers.DateTimeField(help_text="When the figures were computed (shared 5 s; 60 s for 7d).")
    runs = RunFiguresSerializer(help_text="Every task's runs.")
    tasks = TaskFiguresSerializer(many=True, help_text="Per task, the busiest first.")
    queues = serializers.DictField(
        child=serializers.IntegerField(allow_null=True), allow_null=True,
        help_text="Messages waiting per queue; null (or a queue's null): Redis did not answer (see broker_error).",
    )  # fmt: skip
    workers_online = serializers.IntegerField(allow_null=True, help_text="null: Redis did not answer.")
    workers = serializers.ListField(child=serializers.DictField(), allow_null=True,
                                    help_text="The workers that answered, with the queues they consume.")  # fmt: skip
    broker_error = serializers.CharField(allow_null=True, help_text="Why queues or workers are unknown.")
    schedules = SchedulePageSerializer(
        allow_null=True, help_text="A page of schedules (?page, ?page_size); null without the permission to view them."
    )
