"""Seeding: turn the catalog into django-celery-beat schedules, idempotently.

Each seeded field is merged three ways: the catalog's value, the value seeding last
wrote (`SchedulePolicy.seeded_state`) and the row's value now. A field still as seeding
left it follows the catalog; a field an operator changed is kept, unless `reset`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from django.db import transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from scheduler_app import catalog
from scheduler_app.catalog import Cron, Every, TaskDefinition
from scheduler_app.models import SchedulePolicy
from scheduler_app.schedules import interval_seconds

Outcome = Literal["created", "updated", "unchanged"]
State = dict[str, Any]
_NEVER_SEEDED = object()


@dataclass
class Plan:
    definition: TaskDefinition
    outcome: Outcome
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # field: (now, new)
    kept: list[str] = field(default_factory=list)  # operator-edited fields left alone


@dataclass
class SeedReport:
    plans: list[Plan]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for plan in self.plans if plan.outcome == outcome)


def seed_default_tasks(*, reset: bool = False, dry_run: bool = False) -> SeedReport:
    plans = []
    with transaction.atomic():
        for definition in catalog.definitions():
            task = find_seeded(definition)
            plan = plan_for(definition, task, reset=reset)
            if not dry_run and plan.outcome != "unchanged":
                apply(plan, task)
            plans.append(plan)
    return SeedReport(plans)


def find_seeded(definition: TaskDefinition) -> PeriodicTask | None:
    by_key = PeriodicTask.objects.filter(policy__catalog_key=definition.key).first()
    return by_key or PeriodicTask.objects.filter(name=definition.name).first()


def plan_for(definition: TaskDefinition, task: PeriodicTask | None, *, reset: bool) -> Plan:
    desired = desired_state(definition)
    if task is None:
        return Plan(definition, "created", {k: (None, v) for k, v in desired.items()})
    current = state_of(task)
    seeded = seeded_state_of(task)
    plan = Plan(definition, "unchanged")
    for name, value in desired.items():
        if current.get(name) == value:
            continue
        if reset or current.get(name) == seeded.get(name, _NEVER_SEEDED):
            plan.changes[name] = (current.get(name), value)
        else:
            plan.kept.append(name)
    if plan.changes:
        plan.outcome = "updated"
    return plan


def apply(plan: Plan, task: PeriodicTask | None) -> None:
    desired = desired_state(plan.definition)
    if task is None:
        task = PeriodicTask(name=plan.definition.name)
    for name, (_, value) in plan.changes.items():
        _set_field(task, name, value, plan.definition)
    task.save()
    SchedulePolicy.objects.update_or_create(
        periodic_task=task,
        defaults={"catalog_key": plan.definition.key, "seeded_state": desired},
    )


def desired_state(definition: TaskDefinition) -> State:
    return {
        "task": definition.task,
        "schedule": schedule_key(definition.schedule),
        "kwargs": dict(definition.kwargs),
        "queue": definition.queue,
        "expire_seconds": definition.expires,
        "description": definition.description,
        "enabled": True,
    }


def state_of(task: PeriodicTask) -> State:
    return {
        "task": task.task,
        "schedule": _row_schedule_key(task),
        "kwargs": _json_or_raw(task.kwargs),
        "queue": task.queue or None,
        "expire_seconds": task.expire_seconds,
        "description": task.description,
        "enabled": task.enabled,
    }


def seeded_state_of(task: PeriodicTask) -> State:
    try:
        return dict(task.policy.seeded_state)
    except SchedulePolicy.DoesNotExist:
        return {}  # a row with the catalog's name that seeding never wrote: all its own


def schedule_key(schedule: Every | Cron) -> str:
    if isinstance(schedule, Every):
        return f"every {schedule.seconds}s"
    fields: tuple[str, ...] = (schedule.minute, schedule.hour, schedule.day_of_month)
    fields += (schedule.month_of_year, schedule.day_of_week)
    return f"cron {' '.join(fields)} {schedule.timezone}"


def _row_schedule_key(task: PeriodicTask) -> str:
    if task.interval_id:
        return f"every {interval_seconds(task.interval.every, task.interval.period):g}s"
    if task.crontab_id:
        c = task.crontab
        return f"cron {c.minute} {c.hour} {c.day_of_month} {c.month_of_year} {c.day_of_week} {c.timezone}"
    if task.clocked_id:
        return f"clocked {task.clocked.clocked_time.isoformat()}"
    if task.solar_id:
        return f"solar {task.solar.event} {task.solar.latitude} {task.solar.longitude}"
    return "none"


def _json_or_raw(text: str) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return text


def _set_field(task: PeriodicTask, name: str, value: Any, definition: TaskDefinition) -> None:
    if name == "schedule":
        _set_schedule(task, definition.schedule)
    elif name == "kwargs":
        task.kwargs = json.dumps(value, sort_keys=True)
    elif name == "queue":
        task.queue = value
    else:
        setattr(task, name, value)


def _set_schedule(task: PeriodicTask, schedule: Every | Cron) -> None:
    task.interval = task.crontab = task.clocked = task.solar = None
    if isinstance(schedule, Every):
        every, period = schedule.as_interval()
        task.interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=period)
        return
    task.crontab, _ = CrontabSchedule.objects.get_or_create(
        minute=schedule.minute,
        hour=schedule.hour,
        day_of_month=schedule.day_of_month,
        month_of_year=schedule.month_of_year,
        day_of_week=schedule.day_of_week,
        timezone=schedule.timezone,
    )
