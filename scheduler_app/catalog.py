"""The catalog: every task that ships with a default schedule and policy.

A task declares itself with `@platform_task(...)`; the declaration registers a Celery
task with the policy (retries with backoff, time limits) and a `TaskDefinition` that
`seed_default_tasks` turns into a django-celery-beat schedule.

This is the module a task author imports from: `platform_task`, `Every`, `Cron`, and, from
the worker side, `PlatformTask` (for `@shared_task(base=PlatformTask)`), `report_progress` and,
for an `async def` task, `areport_progress`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, ParamSpec, TypeVar

from celery import current_app, shared_task

from scheduler_app.runs.policy import RunPolicy
from scheduler_app.runs.runtime import TRANSIENT_ERRORS, PlatformTask, areport_progress, report_progress

__all__ = [
    "Cron", "Every", "PlatformTask", "TaskDefinition", "areport_progress", "definitions", "discover", "platform_task",
    "register", "report_progress",
]  # fmt: skip

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True)
class Every:
    """An interval schedule, in seconds."""

    seconds: int

    def __post_init__(self) -> None:
        if self.seconds < 1:
            raise ValueError(f"an interval must be at least 1 second, not {self.seconds}")

    def as_interval(self) -> tuple[int, str]:
        """(every, period) in the largest whole unit, as django-celery-beat stores it."""
        for period, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
            if self.seconds % size == 0:
                return self.seconds // size, period
        return self.seconds, "seconds"


@dataclass(frozen=True)
class Cron:
    """A crontab schedule, evaluated in its own time zone."""

    minute: str = "*"
    hour: str = "*"
    day_of_month: str = "*"
    month_of_year: str = "*"
    day_of_week: str = "*"
    timezone: str = "UTC"


@dataclass(frozen=True)
class TaskDefinition:
    key: str  # stable identity of the seeded schedule, e.g. "maintenance.cleanup_old_runs"
    name: str  # the schedule's name as operators see it
    task: str  # the registered Celery task name
    schedule: Every | Cron
    description: str = ""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    expires: int | None = None  # seconds after dispatch; a run not started by then is EXPIRED
    policy: RunPolicy = RunPolicy()


_definitions: dict[str, TaskDefinition] = {}


def register(definition: TaskDefinition) -> None:
    existing = _definitions.get(definition.key)
    if existing is not None and existing != definition:
        raise ValueError(f"two catalog definitions share the key {definition.key!r}")
    _definitions[definition.key] = definition


def definitions() -> list[TaskDefinition]:
    """Every declared definition, every installed app's tasks module imported first."""
    discover()
    return sorted(_definitions.values(), key=lambda d: d.key)


@cache
def discover() -> None:
    """Import the tasks module of every installed app (INSTALLED_APPS, BEATKEEPER_APPS), as a
    worker does at start-up, once per process: what they declare is then registered here and
    in Celery, with no apps.py `ready()` needed."""
    current_app.loader.import_default_modules()


def platform_task(
    *,
    name: str,
    schedule: Every | Cron | None = None,
    schedule_name: str = "",
    expires: int | None = None,
    queue: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
    retry_for: tuple[type[Exception], ...] = TRANSIENT_ERRORS,
    **policy: Any,
) -> Callable[[Callable[_P, _R]], PlatformTask[_P, _R]]:
    """Register a platform task named `name` with its policy (see RunPolicy for the
    keywords), and, given a `schedule`, its default schedule in the catalog."""
    run_policy = RunPolicy(**policy)

    def decorate(func: Callable[_P, _R]) -> PlatformTask[_P, _R]:
        task = shared_task(
            name=name,
            base=PlatformTask,
            policy=run_policy,
            retry_for=retry_for,
            max_retries=run_policy.max_retries,
            soft_time_limit=run_policy.soft_time_limit,  # type: ignore[arg-type]  # celery-types: None (no limit) valid
            time_limit=run_policy.time_limit,  # type: ignore[arg-type]  # celery-types: None (no limit) valid
        )(func)
        if schedule is not None:
            register(_definition(func, name, schedule, schedule_name, expires, queue, kwargs, run_policy))
        return task

    return decorate


def _definition(func: Callable[..., Any], name: str, schedule: Every | Cron, schedule_name: str,
                expires: int | None, queue: str | None, kwargs: Mapping[str, Any] | None,
                policy: RunPolicy) -> TaskDefinition:  # fmt: skip
    doc = (func.__doc__ or "").strip()
    return TaskDefinition(
        key=name,
        name=schedule_name or name,
        task=name,
        schedule=schedule,
        description=doc.splitlines()[0] if doc else "",
        kwargs=dict(kwargs or {}),
        queue=queue,
        expires=expires,
        policy=policy,
    )
