"""The platform's companion to django-celery-beat's `PeriodicTask`.

One row per schedule, keyed one-to-one on it, for what django-celery-beat lacks: the
schedule's execution policy (each field empty = the task's own default, from its catalog
definition) and where a seeded schedule came from, with what seeding last wrote, so
re-seeding can tell an operator's edit from a stale default. Expiry, priority and queue
are django-celery-beat's own fields of the schedule.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models, transaction
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule
from django_celery_results.models import TaskResult

from scheduler_app.runs import pools, rates
from scheduler_app.runs.policy import CATCH_UP_CHOICES, OVERLAP_CHOICES, task_policy

MAX_JITTER_SECONDS = 86_400
CALENDAR_RULES = ("skip", "move")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # date.weekday() order
POLICY_FIELDS = (
    "overlap",
    "lock_ttl",
    "max_retries",
    "retry_backoff",
    "retry_backoff_max",
    "soft_time_limit",
    "time_limit",
    "catch_up",
    "pool_full",
)


POOL_NAME = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
    "A pool's name is letters, digits, '_', '.' and '-', starting with a letter or digit (e.g. exports).",
)


class Pool(models.Model):
    """A concurrency pool: at most `size` runs of it at once across every worker of the fleet
    (`runs.pools`). A task joins one by default (`platform_task(pool=...)`), a schedule by its
    policy. Saving publishes it to Redis, where the workers read it."""

    name = models.CharField(max_length=100, unique=True, validators=[POOL_NAME],
                            help_text="Letters, digits, '_', '.' and '-'; it cannot change once made.")  # fmt: skip
    size = models.PositiveIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(10_000)], help_text="Runs of the pool at once, 1 to 10000."
    )
    lease = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(3), MaxValueValidator(86_400)],
        help_text="Seconds a slot outlives a run that stopped renewing it (its worker died); 3 to 86400. "
        "A live run renews its slot every third of this.",
    )  # fmt: skip
    rate = models.CharField(
        max_length=40, blank=True,
        help_text="Fleet-wide starts of the pool's runs, e.g. 60/m, 5/s, 100/h, 1000/d or 10/30s; empty: none.",
    )  # fmt: skip
    description = models.CharField(max_length=500, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        super().save(*args, **kwargs)
        spec = self.spec()
        transaction.on_commit(lambda: pools.publish(spec), using=kwargs.get("using"))

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        name = self.name
        deleted = super().delete(*args, **kwargs)
        transaction.on_commit(lambda: pools.forget(name), using=kwargs.get("using"))
        return deleted

    def clean(self) -> None:
        if self.pk and Pool.objects.filter(pk=self.pk).exclude(name=self.name).exists():
            raise ValidationError({"name": "A pool's name cannot change (schedules join it by name); "
                                           "make a new pool and move the schedules to it."})  # fmt: skip
        if self.rate:
            try:
                rates.parse(self.rate)
            except ValueError as exc:
                raise ValidationError({"rate": str(exc)}) from None

    def spec(self) -> pools.PoolSpec:
        return pools.PoolSpec(self.name, self.size, self.lease, self.rate)


class SchedulePolicy(models.Model):
    periodic_task = models.OneToOneField(
        PeriodicTask, on_delete=models.CASCADE, primary_key=True, related_name="policy"
    )
    catalog_key = models.CharField(
        max_length=200,
        blank=True,
        db_index=True,
        help_text="The catalog definition this schedule was seeded from, if any.",
    )
    seeded_state: models.JSONField[dict[str, Any], dict[str, Any]] = models.JSONField(
        default=dict,
        blank=True,
        help_text="The fields as seeding last wrote them; a field that differs was edited.",
    )
    overlap = models.CharField(
        max_length=8,
        blank=True,
        choices=[(c, c) for c in OVERLAP_CHOICES],
        help_text="allow: runs may overlap; skip: a run finding the previous one still running is "
        "recorded as SKIPPED; wait: at most one run waits behind the running one.",
    )
    lock_ttl = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(3)],
        help_text="Seconds the overlap lock lives without renewal (it is renewed while the run is alive).",
    )
    max_retries = models.PositiveSmallIntegerField(null=True, blank=True, validators=[MaxValueValidator(100)])
    retry_backoff = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Seconds before the first retry; doubled for each next one, with jitter.",
    )
    retry_backoff_max = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0)])
    soft_time_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds; the task then gets SoftTimeLimitExceeded and can tidy up."
    )
    time_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Seconds; the run is then killed.")
    catch_up = models.CharField(
        max_length=8,
        blank=True,
        choices=[(c, c) for c in CATCH_UP_CHOICES],
        help_text="After beat was down: skip the missed slot (as cron does) or run it once now.",
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="owned_schedules",
        help_text="Who answers for this schedule.",
    )
    late_after = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(10)],
        help_text="Seconds a slot may go without a started run before the schedule is late; "
        "empty: half the period, between a minute and an hour.",
    )
    alert_after_failures = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Failed runs in a row that make the schedule failing; empty: 1.",
    )
    pause_after_failures = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Pause the schedule after this many failed runs in a row; empty: never.",
    )
    paused_at = models.DateTimeField(null=True, blank=True)
    paused_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    pause_note = models.CharField(max_length=500, blank=True)
    jitter = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(MAX_JITTER_SECONDS)],
        help_text="Seconds: each slot is sent up to this much later, by an amount derived from the schedule "
        "and the slot (the same on every beat). Less than the time between two slots; empty: none.",
    )
    calendars: models.ManyToManyField[Any, Any] = models.ManyToManyField(
        "BusinessCalendar",
        blank=True,
        related_name="policies",
        help_text="Business calendars whose excluded times this schedule keeps out of.",
    )
    calendar_rule = models.CharField(
        max_length=8,
        blank=True,
        choices=[(c, c) for c in CALENDAR_RULES],
        help_text="A slot in an excluded time: skip it (the default), or move it to the next allowed moment.",
    )
    pool = models.ForeignKey(
        Pool, to_field="name", db_column="pool", on_delete=models.PROTECT, null=True, blank=True,
        related_name="policies",
        help_text="The concurrency pool whose slot each run takes; empty: the task's own (if any).",
    )  # fmt: skip
    pool_full = models.CharField(
        "when the pool is full",
        max_length=8, blank=True, choices=[(c, c) for c in pools.POOL_FULL_CHOICES],
        help_text="The pool has no free slot: wait in line (the default) or skip the run.",
    )  # fmt: skip
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "schedule policy"
        verbose_name_plural = "schedule policies"
        # Run now, pause and resume: what an Operator does to a schedule it may not edit (`roles`).
        permissions = [("operate_schedule", "Can run now, pause and resume a schedule")]

    def __str__(self) -> str:
        return f"policy of {self.periodic_task.name}"

    def clean(self) -> None:
        # A policy made with its schedule in one form has no schedule yet: the form names the task.
        task = self.periodic_task.task if self.periodic_task_id else getattr(self, "task_for_checks", None)
        if task is None:
            return
        try:
            task_policy(task).with_overrides(self.overrides())
        except ValueError as exc:
            raise ValidationError(str(exc)) from None

    def overrides(self) -> dict[str, Any]:
        """The fields set on this schedule; the task's defaults apply to the rest."""
        values = {name: getattr(self, name) for name in POLICY_FIELDS}
        values["pool"] = self.pool_id  # the pool's name (the key it is joined on)
        return {name: value for name, value in values.items() if value not in (None, "")}


class BusinessCalendar(models.Model):
    """Times a schedule keeps out of: dates and date ranges (holidays, freeze windows), days
    of the week and hours outside the allowed ones, and a country's public holidays (the
    `holidays` package), all read in the calendar's time zone (`beat.calendars`)."""

    name = models.CharField(max_length=100, unique=True)
    description = models.CharField(max_length=500, blank=True)
    timezone = models.CharField(max_length=63, default="UTC", help_text="An IANA zone, e.g. Europe/Berlin.")
    weekdays = models.CharField(
        max_length=27,
        blank=True,
        help_text="The allowed days, e.g. mon,tue,wed,thu,fri; empty: every day.",
    )
    day_starts = models.TimeField(null=True, blank=True, help_text="Allowed from this time of day; empty: 00:00.")
    day_ends = models.TimeField(null=True, blank=True, help_text="Allowed until this time of day; empty: midnight.")
    holiday_country = models.CharField(
        max_length=3, blank=True, help_text="Exclude this country's public holidays: an ISO code such as DE or US."
    )
    holiday_subdivision = models.CharField(
        max_length=10, blank=True, help_text="Its region, as the holidays package names it (e.g. BY, CA)."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "business calendar"

    def __str__(self) -> str:
        return self.name


class CalendarExclusion(models.Model):
    """A date or a range of dates (inclusive, in the calendar's zone) that is excluded."""

    calendar = models.ForeignKey(BusinessCalendar, on_delete=models.CASCADE, related_name="exclusions")
    first_day = models.DateField()
    last_day = models.DateField(null=True, blank=True, help_text="Inclusive; empty: the first day only.")
    label = models.CharField(max_length=100, blank=True, help_text="Shown on skipped slots, e.g. Release freeze.")

    class Meta:
        ordering = ["first_day", "pk"]
        verbose_name = "excluded date"

    def __str__(self) -> str:
        last = f" to {self.last_day}" if self.last_day and self.last_day != self.first_day else ""
        return f"{self.label or 'excluded'}: {self.first_day}{last}"

    def clean(self) -> None:
        if self.last_day is not None and self.first_day is not None and self.last_day < self.first_day:
            raise ValidationError({"last_day": "The last day comes before the first; give a later one, or none."})


class Backfill(models.Model):
    """Runs of a schedule for every slot between two moments, as if beat had sent them.
    Beat's leader sends them, at most `max_concurrent` at a time (`beat.backfills`)."""

    RUNNING, FINISHED, CANCELLED = "running", "finished", "cancelled"
    STATES = (RUNNING, FINISHED, CANCELLED)

    periodic_task = models.ForeignKey(PeriodicTask, on_delete=models.CASCADE, related_name="backfills")
    schedule_name = models.CharField(max_length=200)
    start = models.DateTimeField(help_text="Slots from this moment (inclusive).")
    end = models.DateTimeField(help_text="Slots up to this moment (inclusive).")
    newest_first = models.BooleanField(default=False)
    max_concurrent = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    rerun = models.BooleanField(default=False, help_text="Also run slots that already have a finished run.")
    state = models.CharField(max_length=10, choices=[(s, s) for s in STATES], default=RUNNING, db_index=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    requested_by_name = models.CharField(max_length=150, blank=True)
    via = models.CharField(max_length=10, default="api")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancelled_by_name = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        permissions = [("run_backfill", "Can start and cancel a backfill")]

    def __str__(self) -> str:
        return f"backfill {self.pk} of {self.schedule_name}"


class BackfillSlot(models.Model):
    """One slot of a backfill: waiting, claimed by beat (its run id chosen), sent, skipped
    (it already had a finished run) or cancelled."""

    WAITING, CLAIMED, SENT, SKIPPED, CANCELLED = "waiting", "claimed", "sent", "skipped", "cancelled"
    STATES = (WAITING, CLAIMED, SENT, SKIPPED, CANCELLED)

    backfill = models.ForeignKey(Backfill, on_delete=models.CASCADE, related_name="slots")
    slot = models.DateTimeField()
    at = models.DateTimeField(
        null=True, blank=True, help_text="The moment it is sent for (`scheduled_for`), as the confirmation showed it."
    )
    position = models.PositiveIntegerField(help_text="The order in which it is sent.")
    state = models.CharField(max_length=10, choices=[(s, s) for s in STATES], default=WAITING)
    task_id = models.CharField(max_length=255, blank=True, db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    finished = models.BooleanField(default=False, help_text="Its run has ended (any final state).")

    class Meta:
        ordering = ["backfill", "position"]
        constraints = [models.UniqueConstraint(fields=["backfill", "slot"], name="bk_backfill_slot_once")]
        indexes = [models.Index(fields=["backfill", "state", "position"], name="bk_backfill_slot_state")]

    def __str__(self) -> str:
        return f"{self.slot.isoformat()} ({self.state})"


class ScheduleChange(models.Model):
    """The change log that lets beat reload only what changed.

    One row per inserted, deleted or changed schedule, policy, link to a calendar, shared
    schedule object or business calendar, written by the database's row triggers
    (`scheduler_app.beat.triggers`), whoever wrote the row; beat reads the rows after the last
    one it saw. Rows are kept for an hour (`beat.change_reader.CHANGE_LOG_RETENTION`) and then
    pruned by the leading beat."""

    TASK, INTERVAL, CRONTAB, SOLAR, CLOCKED = "task", "interval", "crontab", "solar", "clocked"
    CALENDAR = "calendar"  # a business calendar or its dates: its schedules are reloaded
    KINDS = (TASK, INTERVAL, CRONTAB, SOLAR, CLOCKED, CALENDAR)

    kind = models.CharField(max_length=8, choices=[(k, k) for k in KINDS])
    object_id = models.BigIntegerField()
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = "schedule change"

    def __str__(self) -> str:
        return f"{self.kind} {self.object_id} changed at {self.at:%Y-%m-%d %H:%M:%S}"


# The schedule objects several schedules may share, by their change-log kind.
SHARED_SCHEDULES: dict[str, type[models.Model]] = {
    ScheduleChange.INTERVAL: IntervalSchedule,
    ScheduleChange.CRONTAB: CrontabSchedule,
    ScheduleChange.SOLAR: SolarSchedule,
    ScheduleChange.CLOCKED: ClockedSchedule,
}


class ScheduleHealth(models.Model):
    """What the last check (`monitoring.check_schedules`) found of a schedule: on time,
    late (its expected run has not started within the grace time) or failing (its last
    runs failed). Written with `QuerySet.update()`, so beat's change log never sees it."""

    OK, LATE, FAILING = "ok", "late", "failing"
    STATES = (OK, LATE, FAILING)

    periodic_task = models.OneToOneField(
        PeriodicTask, on_delete=models.CASCADE, primary_key=True, related_name="health"
    )
    state = models.CharField(max_length=8, choices=[(s, s) for s in STATES], default=OK, db_index=True)
    since = models.DateTimeField(help_text="When the schedule entered this state.")
    expected_at = models.DateTimeField(null=True, blank=True, help_text="The slot that has not started (late).")
    failures = models.PositiveIntegerField(default=0, help_text="Failed runs in a row, newest first.")
    next_at = models.DateTimeField(null=True, blank=True, db_index=True, help_text="Its next run, as last checked.")
    checked_at = models.DateTimeField()

    class Meta:
        verbose_name = "schedule health"
        verbose_name_plural = "schedule health"

    def __str__(self) -> str:
        return f"{self.periodic_task_id}: {self.state}"


class Run(TaskResult):
    """A recorded run, as the operations console shows it (django-celery-results' row)."""

    class Meta:
        proxy = True
        verbose_name = "run"
        permissions = [
            ("retry_run", "Can retry a run"),
            ("revoke_run", "Can revoke a run"),
            ("control_workers", "Can control workers"),  # the Workers page's remote control
            ("purge_queue", "Can purge a queue"),  # the Queues page's purge
        ]


class Incident(models.Model):
    """One transition of a schedule's health: it became late, it became failing, or it
    recovered. Written by `monitoring` once per transition; alerts are sent from it."""

    LATE, FAILING, RECOVERED = "late", "failing", "recovered"
    KINDS = (LATE, FAILING, RECOVERED)

    periodic_task = models.ForeignKey(
        PeriodicTask, on_delete=models.SET_NULL, null=True, blank=True, related_name="incidents"
    )
    schedule_name = models.CharField(max_length=200, help_text="The schedule's name when it happened.")
    kind = models.CharField(max_length=10, choices=[(k, k) for k in KINDS])
    at = models.DateTimeField(db_index=True)
    detail: models.JSONField[dict[str, Any], dict[str, Any]] = models.JSONField(default=dict, blank=True)
    auto_paused = models.BooleanField(default=False)
    deliveries: models.JSONField[dict[str, Any], dict[str, Any]] = models.JSONField(
        default=dict, blank=True, help_text="Per channel: sent, or the last error."
    )

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["periodic_task", "-at"], name="bk_incident_schedule_at")]

    def __str__(self) -> str:
        return f"{self.schedule_name} {self.kind} at {self.at:%Y-%m-%d %H:%M:%S}"


class AuditEntry(models.Model):
    """Who changed what, when, and through which door (API, admin, command)."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    actor_name = models.CharField(max_length=150, blank=True)
    via = models.CharField(max_length=10, default="api")
    action = models.CharField(max_length=20)
    object_type = models.CharField(max_length=40)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200, blank=True)
    changes: models.JSONField[dict[str, Any], dict[str, Any]] = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-pk"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.actor_name or 'system'} {self.action} {self.object_type} {self.object_id}"


class ScheduleVersion(models.Model):
    """A schedule and its policy whole, as one write through any door left them (written by
    `audit.record`), with who, when, through which door and what changed since the version
    before ({"schedule.minute": [old, new], ...}). Kept after the schedule is deleted."""

    periodic_task = models.ForeignKey(
        PeriodicTask, on_delete=models.SET_NULL, null=True, blank=True, related_name="versions"
    )
    schedule_name = models.CharField(max_length=200, help_text="The schedule's name in this version.")
    number = models.PositiveIntegerField(help_text="1 for the schedule's first version, then one more each time.")
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    actor_name = models.CharField(max_length=150, blank=True)
    via = models.CharField(max_length=10, default="api")
    action = models.CharField(max_length=20)
    audit_entry = models.ForeignKey(AuditEntry, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    restored_from = models.PositiveIntegerField(null=True, blank=True)
    snapshot: models.JSONField[dict[str, Any], dict[str, Any]] = models.JSONField(default=dict)
    changes: models.JSONField[dict[str, Any], dict[str, Any]] = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["periodic_task", "number"], name="bk_version_number_per_schedule")
        ]

    def __str__(self) -> str:
        return f"version {self.number} of {self.schedule_name}"
