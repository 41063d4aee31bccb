"""The platform's companion to django-celery-beat's `PeriodicTask`.

One row per schedule, keyed one-to-one on it, for what django-celery-beat lacks: the
schedule's execution policy (each field empty = the task's own default, from its catalog
definition) and where a seeded schedule came from, with what seeding last wrote, so
re-seeding can tell an operator's edit from a stale default. Expiry, priority and queue
are django-celery-beat's own fields of the schedule.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

from scheduler_app.policy import CATCH_UP_CHOICES, OVERLAP_CHOICES, task_policy

POLICY_FIELDS = (
    "overlap",
    "lock_ttl",
    "max_retries",
    "retry_backoff",
    "retry_backoff_max",
    "soft_time_limit",
    "time_limit",
    "catch_up",
)


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
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "schedule policy"
        verbose_name_plural = "schedule policies"

    def __str__(self) -> str:
        return f"policy of {self.periodic_task.name}"

    def clean(self) -> None:
        try:
            task_policy(self.periodic_task.task).with_overrides(self.overrides())
        except ValueError as exc:
            raise ValidationError(str(exc)) from None

    def overrides(self) -> dict[str, Any]:
        """The fields set on this schedule; the task's defaults apply to the rest."""
        values = {name: getattr(self, name) for name in POLICY_FIELDS}
        return {name: value for name, value in values.items() if value not in (None, "")}


class ScheduleChange(models.Model):
    """The change log that lets beat reload only what changed.

    One row per saved or deleted schedule, policy or shared schedule object (written by
    `scheduler_app.changes`); beat reads the rows after the last one it saw. Rows are kept
    for an hour (`beat.CHANGE_LOG_RETENTION`) and then pruned by the leading beat."""

    TASK, INTERVAL, CRONTAB, SOLAR, CLOCKED = "task", "interval", "crontab", "solar", "clocked"
    BEAT = "beat"  # a schedule beat itself disabled (one-off sent, expired)
    KINDS = (TASK, INTERVAL, CRONTAB, SOLAR, CLOCKED, BEAT)

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
