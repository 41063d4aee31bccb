"""Beat: where beat decides what is due and what a dispatch carries.

`Scheduler` is django-celery-beat's `DatabaseScheduler` with the platform's entry:
- every dispatch carries the `beatkeeper` header: trigger `beat`, the schedule, the
  slot it was scheduled for, and the schedule's policy overrides (overlap, retries,
  lock TTL, ...), so the worker applies them without reading the database;
- per-schedule soft and hard time limits go on the message, where Celery enforces them;
- catch-up: a slot found due more than BEAT_CATCH_UP_GRACE_SECONDS late (beat was down,
  or the schedule was just re-enabled) runs once now under `once`, and is skipped under
  `skip` (the default, as cron does); never a burst of missed slots.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from celery import current_app
from celery.beat import ScheduleEntry
from celery.schedules import schedstate
from celery.utils.time import maybe_make_aware
from django.conf import settings
from django.db.models import QuerySet
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from scheduler_app.history import HEADER
from scheduler_app.models import SchedulePolicy
from scheduler_app.policy import RunPolicy

logger = logging.getLogger(__name__)


def task_policy(task_name: str) -> RunPolicy:
    task = current_app.tasks.get(task_name)
    return getattr(task, "policy", None) or RunPolicy()


def policy_overrides(model: PeriodicTask) -> dict[str, Any]:
    try:
        return model.policy.overrides()
    except SchedulePolicy.DoesNotExist:
        return {}


class PlatformEntry(ModelEntry):  # type: ignore[misc]
    def __init__(self, model: PeriodicTask, app: Any = None) -> None:
        super().__init__(model, app)
        self.overrides = policy_overrides(model)
        try:
            self.policy = task_policy(self.task).with_overrides(self.overrides)
        except ValueError as exc:  # a bad row never stops beat: the task's own policy applies
            logger.error("ignoring the policy of schedule %s: %s; fix it in the admin", self.name, exc)
            self.overrides, self.policy = {}, task_policy(self.task)
        if "soft_time_limit" in self.overrides or "time_limit" in self.overrides:
            self.options["soft_time_limit"] = self.policy.soft_time_limit
            self.options["time_limit"] = self.policy.time_limit

    def scheduled_for(self) -> dt.datetime:
        """The slot this entry is (or next will be) due for."""
        now = self._default_now()
        last = maybe_make_aware(self.last_run_at).astimezone(self.app.timezone)
        return now + self.schedule.remaining_estimate(last)

    def is_due(self) -> schedstate:
        due, next_check = super().is_due()
        if not due or self.policy.catch_up == "once":
            return schedstate(due, next_check)
        late = (self._default_now() - self.scheduled_for()).total_seconds()
        if late <= settings.BEAT_CATCH_UP_GRACE_SECONDS:
            return schedstate(due, next_check)
        logger.info("skipping the missed slot of %s (%.0fs late; catch-up is 'skip')", self.name, late)
        self._skip_to_now()
        return schedstate(False, max(0.0, self.schedule.remaining_estimate(self.last_run_at).total_seconds()))

    def _skip_to_now(self) -> None:
        self.last_run_at = self.model.last_run_at = self._default_now()
        PeriodicTask.objects.filter(pk=self.model.pk).update(last_run_at=self.last_run_at)

    def dispatch_header(self, scheduled_for: dt.datetime) -> dict[str, Any]:
        return {
            "trigger": "beat",
            "schedule": self.name,
            "scheduled_for": scheduled_for.isoformat(),
            "policy": self.overrides,
        }


class Scheduler(DatabaseScheduler):  # type: ignore[misc]
    Entry = PlatformEntry

    def enabled_models_qs(self) -> QuerySet[PeriodicTask]:
        related = ("policy", "interval", "crontab", "solar", "clocked")
        return super().enabled_models_qs().select_related(*related)

    def reserve(self, entry: ScheduleEntry) -> ScheduleEntry:
        """Advance the entry and stamp the slot being sent. `tick` sends the entry it had,
        `apply_async(advance=True)` the advanced one: both carry the header."""
        header = entry.dispatch_header(entry.scheduled_for())
        new_entry = super().reserve(entry)
        for sent in (entry, new_entry):
            sent.options["headers"] = {**sent.options.get("headers", {}), HEADER: header}
        return new_entry
