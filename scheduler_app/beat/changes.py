"""The change log beat reloads from: every save or delete of a schedule, its policy, or a
shared schedule object (interval, crontab, solar, clocked) writes one `ScheduleChange`;
so does a business calendar, its dates, and the link between a schedule and its calendars.

Django sends these signals for `save()`, `delete()` and `QuerySet.delete()`. A bulk
`QuerySet.update()` sends none; django-celery-beat's own admin follows one with
`PeriodicTasks.update_changed()`, which beat notices and answers with a full reload.
"""

from __future__ import annotations

from typing import Any

from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver
from django_celery_beat.models import PeriodicTask

from scheduler_app.models import SHARED_SCHEDULES, BusinessCalendar, CalendarExclusion, ScheduleChange, SchedulePolicy

KIND_OF = {model: kind for kind, model in SHARED_SCHEDULES.items()}


def log(kind: str, object_id: int) -> None:
    ScheduleChange.objects.create(kind=kind, object_id=object_id)


@receiver(post_save, sender=PeriodicTask)
@receiver(post_delete, sender=PeriodicTask)
def periodic_task_changed(instance: PeriodicTask, **kwargs: Any) -> None:
    log(ScheduleChange.TASK, instance.pk)


@receiver(post_save, sender=SchedulePolicy)
@receiver(post_delete, sender=SchedulePolicy)
def policy_changed(instance: SchedulePolicy, **kwargs: Any) -> None:
    log(ScheduleChange.TASK, instance.periodic_task_id)


@receiver(post_save, sender=BusinessCalendar)
@receiver(post_delete, sender=BusinessCalendar)
def calendar_changed(instance: BusinessCalendar, **kwargs: Any) -> None:
    log(ScheduleChange.CALENDAR, instance.pk)


@receiver(post_save, sender=CalendarExclusion)
@receiver(post_delete, sender=CalendarExclusion)
def exclusion_changed(instance: CalendarExclusion, **kwargs: Any) -> None:
    log(ScheduleChange.CALENDAR, instance.calendar_id)


@receiver(m2m_changed, sender=SchedulePolicy.calendars.through)
def calendars_attached(instance: Any, action: str, pk_set: set[int] | None, **kwargs: Any) -> None:
    """A schedule's calendars changed (from either side of the link)."""
    if not action.startswith("post_"):
        return
    if isinstance(instance, SchedulePolicy):
        log(ScheduleChange.TASK, instance.periodic_task_id)
    else:
        log(ScheduleChange.CALENDAR, instance.pk)


def shared_schedule_changed(sender: type, instance: Any, **kwargs: Any) -> None:
    log(KIND_OF[sender], instance.pk)


for model in KIND_OF:
    post_save.connect(shared_schedule_changed, sender=model, dispatch_uid=f"beatkeeper-change-{model.__name__}")
    post_delete.connect(shared_schedule_changed, sender=model, dispatch_uid=f"beatkeeper-delete-{model.__name__}")
