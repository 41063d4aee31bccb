"""The platform's companion to django-celery-beat's `PeriodicTask`.

One row per schedule, keyed one-to-one on it, for what django-celery-beat lacks. Today:
where a seeded schedule came from and what seeding last wrote, so re-seeding can tell an
operator's edit from a stale default. The runtime policy (overlap, catch-up, ...) joins
it in a later release.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django_celery_beat.models import PeriodicTask


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
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "schedule policy"
        verbose_name_plural = "schedule policies"

    def __str__(self) -> str:
        return f"policy of {self.periodic_task.name}"
