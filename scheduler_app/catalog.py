"""The catalog: every task that ships with a default schedule and policy.

A task declares itself with `@platform_task(...)`; the declaration registers a Celery
task with the policy (retries with backoff, time limits) and a `TaskDefinition` that
`seed_default_tasks` turns into a django-celery-beat schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import shared_task
from celery.app.task import Task
from django.db import OperationalError

# Failures worth another attempt: the database or broker was briefly unavailable.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (OperationalError, ConnectionError, TimeoutError)


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
    expires: int | None = None  # seconds after dispatch; a run not started by then is dropped
    max_retries: int = 3
    soft_time_limit: int | None = None
    time_limit: int | None = None


_definitions: dict[str, TaskDefinition] = {}


def register(definition: TaskDefinition) -> None:
    existing = _definitions.get(definition.key)
    if existing is not None and existing != definition:
        raise ValueError(f"two catalog definitions share the key {definition.key!r}")
    _definitions[definition.key] = definition


def definitions() -> list[TaskDefinition]:
    return sorted(_definitions.values(), key=lambda d: d.key)


def platform_task(
    *,
    name: str,
    schedule_name: str,
    schedule: Every | Cron,
    max_retries: int = 3,
    soft_time_limit: int | None = None,
    time_limit: int | None = None,
    expires: int | None = None,
    queue: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> Callable[[Callable[..., Any]], Task]:
    """Register a Celery task named `name` and its default schedule in the catalog."""

    def decorate(func: Callable[..., Any]) -> Task:
        task = shared_task(
            name=name,
            autoretry_for=TRANSIENT_ERRORS,
            max_retries=max_retries,
            retry_backoff=True,
            retry_backoff_max=600,
            retry_jitter=True,
            soft_time_limit=soft_time_limit,
            time_limit=time_limit,
        )(func)
        register(
            TaskDefinition(
                key=name,
                name=schedule_name,
                task=name,
                schedule=schedule,
                description=(func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else "",
                kwargs=dict(kwargs or {}),
                queue=queue,
                expires=expires,
                max_retries=max_retries,
                soft_time_limit=soft_time_limit,
                time_limit=time_limit,
            )
        )
        return task

    return decorate
