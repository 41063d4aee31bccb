"""Concurrency pools as the doors see them: what a pool is, who uses it and what it holds now.

The slots themselves are `runs.pools` (Redis, on the workers); the pools are `models.Pool`
rows. This module joins the two: the loader the workers ask for a definition missing from
Redis, the publication of every pool when a worker starts, each pool's fields for the audit
trail and the API, the schedules and tasks that use it, and its occupancy with the runs'
names for the console and `GET /api/pools/{name}/`.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import redis
from celery import current_app
from celery.signals import worker_ready
from django.db import DatabaseError
from django_celery_results.models import TaskResult

from scheduler_app.models import Pool, SchedulePolicy
from scheduler_app.runs import pools
from scheduler_app.runs.policy import RunPolicy

logger = logging.getLogger(__name__)
FIELDS = ("name", "size", "lease", "rate", "description")


def definition_from_db(name: str) -> pools.PoolSpec | None:
    row = Pool.objects.filter(name=name).first()
    return row.spec() if row is not None else None


def install() -> None:
    """Let the workers read a pool missing from Redis from the database (apps.ready)."""
    pools.set_loader(definition_from_db)


@worker_ready.connect
def publish_all(sender: Any = None, **kwargs: Any) -> None:
    """Every pool, as the database has it, into Redis when a worker starts (a Redis that was
    replaced or flushed gets the sizes back before the first run asks)."""
    try:
        for row in Pool.objects.all():
            pools.publish(row.spec())
    except (DatabaseError, redis.RedisError) as exc:
        logger.warning("pools not published at start-up (%s): each is read when a run first asks", exc)


def fields_of(pool: Pool) -> dict[str, Any]:
    return {name: getattr(pool, name) for name in FIELDS}


def schedules_of(pool: Pool) -> list[str]:
    """The names of the schedules whose policy puts them in this pool."""
    return sorted(SchedulePolicy.objects.filter(pool=pool).values_list("periodic_task__name", flat=True))


def tasks_of(name: str) -> list[str]:
    """The registered tasks that join this pool by default (`platform_task(pool=...)`)."""
    return sorted(task for task, policy in declared_pools().items() if policy.pool == name)


def in_use(pool: Pool) -> str:
    """Why the pool may not be deleted (schedules or tasks join it), or "" if it may."""
    schedules, tasks = schedules_of(pool), tasks_of(pool.name)
    users = [f"the schedules {', '.join(schedules)}" if schedules else "",
             f"the tasks {', '.join(tasks)} (by default, in their code)" if tasks else ""]  # fmt: skip
    if not schedules and not tasks:
        return ""
    return (f"Pool {pool.name} is used by {' and '.join(u for u in users if u)}; take them out of it first "
            "(a schedule's policy, a task's platform_task(pool=...)).")  # fmt: skip


def declared_pools() -> dict[str, RunPolicy]:
    """The policy of every registered task that names a pool."""
    found = {name: getattr(task, "policy", None) for name, task in current_app.tasks.items()}
    return {name: policy for name, policy in found.items() if isinstance(policy, RunPolicy) and policy.pool}


def missing_pools() -> dict[str, list[str]]:
    """Pools that registered tasks name but that do not exist: {pool: [tasks]} (their runs fail)."""
    named: dict[str, list[str]] = {}
    for task, policy in declared_pools().items():
        named.setdefault(policy.pool, []).append(task)
    existing = set(Pool.objects.filter(name__in=named).values_list("name", flat=True))
    return {pool: sorted(tasks) for pool, tasks in sorted(named.items()) if pool not in existing}


@dataclass(frozen=True)
class Recorded:
    """A run as the ledger has it so far (a run not recorded yet: its id alone)."""

    task_id: str
    run_pk: int | None = None
    task_name: str = ""
    schedule: str = ""


@dataclass(frozen=True)
class Holder:
    run: Recorded
    lease_ends: dt.datetime


@dataclass(frozen=True)
class Waiter:
    position: int
    run: Recorded
    since: dt.datetime


@dataclass(frozen=True)
class Status:
    size: int
    holders: list[Holder]
    waiting: list[Waiter]
    error: str = ""  # Redis could not be read: what the page says instead of the slots

    @property
    def in_use(self) -> int:
        return len(self.holders)


def status(pool: Pool) -> Status:
    """The runs holding a slot of the pool now and those waiting, in order, with their task and
    schedule as recorded (a run not yet recorded shows its id alone)."""
    try:
        now = pools.occupancy(pool.name)
    except redis.RedisError as exc:
        return Status(pool.size, [], [], error=f"Redis could not be read ({exc}); the slots are not shown.")
    ids = [run for run, _ in now.holders] + [run for run, _ in now.waiting]
    found = TaskResult.objects.filter(task_id__in=ids).values_list("task_id", "pk", "task_name", "periodic_task_name")
    rows = {task_id: Recorded(task_id, pk, name or "", schedule or "") for task_id, pk, name, schedule in found}
    holders = [Holder(rows.get(run) or Recorded(run), moment(ends)) for run, ends in now.holders]
    waiting = [
        Waiter(n, rows.get(run) or Recorded(run), moment(since)) for n, (run, since) in enumerate(now.waiting, 1)
    ]
    return Status(pool.size, holders, waiting)


def moment(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
