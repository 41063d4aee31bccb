"""The execution policy of a run: overlap, lock TTL, retries, time limits, catch-up.

A task declares its defaults (`platform_task(...)` or `PlatformTask.policy`); a schedule
may override any of them (`SchedulePolicy`); beat sends the overrides in the message's
`beatkeeper` header, so the worker needs no database read to know them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from scheduler_app.runs import rates
from scheduler_app.runs.pools import POOL_FULL_CHOICES, PoolFull

Overlap = Literal["allow", "skip", "wait"]
CatchUp = Literal["skip", "once"]
OVERLAP_CHOICES = ("allow", "skip", "wait")
CATCH_UP_CHOICES = ("skip", "once")


@dataclass(frozen=True)
class RunPolicy:
    overlap: Overlap = "allow"
    lock_ttl: int = 60  # seconds; renewed every third of it while the run is alive
    max_retries: int = 3
    retry_backoff: float = 2.0  # seconds before the first retry; doubles each time
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    soft_time_limit: int | None = None
    time_limit: int | None = None
    catch_up: CatchUp = "skip"
    rate: str = ""  # fleet-wide starts of the task, e.g. "60/m" (runs/rates.py); the task's own, never a schedule's
    pool: str = ""  # the concurrency pool whose slot a run takes (runs/pools.py); a schedule may pick another
    pool_full: PoolFull = "wait"  # the pool has no free slot: wait in line (WAITING) or skip (SKIPPED)

    def __post_init__(self) -> None:
        if self.overlap not in OVERLAP_CHOICES:
            raise ValueError(f"overlap must be one of {OVERLAP_CHOICES}, not {self.overlap!r}")
        if self.catch_up not in CATCH_UP_CHOICES:
            raise ValueError(f"catch_up must be one of {CATCH_UP_CHOICES}, not {self.catch_up!r}")
        if self.lock_ttl < 3:
            raise ValueError(f"lock_ttl must be at least 3 seconds, not {self.lock_ttl}")
        if self.soft_time_limit and self.time_limit and self.soft_time_limit >= self.time_limit:
            raise ValueError("soft_time_limit must be below time_limit, so the task can tidy up")
        if self.rate:
            rates.parse(self.rate)
        if self.pool_full not in POOL_FULL_CHOICES:
            raise ValueError(f"pool_full must be one of {POOL_FULL_CHOICES}, not {self.pool_full!r}")

    def with_overrides(self, overrides: dict[str, Any] | None) -> RunPolicy:
        """This policy with a schedule's overrides. A hard limit set below the inherited
        soft limit brings the soft limit down to 90 % of it, so the task can still tidy up."""
        known = {f.name for f in fields(self)} - {"rate"}  # one rate per task: a schedule cannot lift it
        changes = {k: v for k, v in (overrides or {}).items() if k in known and v is not None}
        hard, soft = changes.get("time_limit"), changes.get("soft_time_limit", self.soft_time_limit)
        if hard and "soft_time_limit" not in changes and soft and soft >= hard:
            changes["soft_time_limit"] = max(1, int(hard * 0.9)) if hard > 1 else None
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def task_policy(task_name: str, app: Any = None) -> RunPolicy:
    """The policy a registered task declares (the default policy for any other task)."""
    if app is None:
        from celery import current_app as app
    task = app.tasks.get(task_name)
    return getattr(task, "policy", None) or RunPolicy()
