"""Fleet-wide rate limits: `platform_task(rate="60/m")` holds across every worker.

Celery's own `rate_limit` counts per worker process, so ten workers of four processes
start forty times the rate. Here every start of a rated task is a hit on one moving window
in Redis, kept by the `limits` library (its `MovingWindowRateLimiter`, an atomic Lua check
and push of a list of start times per task), through the platform's Redis client. A run over
the rate is not dropped: it is recorded WAITING with the reason and the moment it may start,
and sent again for then, without holding a worker process meanwhile.

The window is timed by the workers' clocks (limits stamps each hit with `time.time()`):
hosts whose clocks differ by d can start up to the rate plus the runs of d in one window.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from functools import cache

import limits
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from scheduler_app.connection import redis_client

PREFIX = "beatkeeper:rate"
SHORT_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}
SPREAD = 0.05  # seconds of jitter on a delayed run's next try, so waiters do not wake in step
_SHORT = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")


@cache  # read on every run of a rated task: a task has one rate
def parse(rate: str) -> limits.RateLimitItem:
    """`60/m`, `5/s`, `100/h`, `1000/d`, `10/30s`, or limits' own `60 per minute`. Raises
    ValueError naming what is allowed."""
    short = _SHORT.match(rate)
    text = f"{short[1]}/{short[2]} {SHORT_UNITS[short[3]]}" if short else rate
    try:
        item = limits.parse(text)
    except ValueError:
        raise ValueError(
            f"rate {rate!r} is not a rate; use a count per unit: 60/m, 5/s, 100/h, 1000/d or 10/30s"
        ) from None
    if item.amount < 1:
        raise ValueError(f"rate {rate!r} allows no run; the count must be at least 1")
    return item


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    retry_in: float = 0.0  # seconds until a start is free again (when not admitted)


@cache
def _limiter() -> MovingWindowRateLimiter:
    storage = RedisStorage("redis://", connection_pool=redis_client().connection_pool, key_prefix=PREFIX)
    return MovingWindowRateLimiter(storage)


def hit(scope: str, rate: str) -> Verdict:
    """Count a start of `scope` (a task's name) against `rate`, or say when to try again."""
    item = parse(rate)
    limiter = _limiter()
    if limiter.hit(item, scope):
        return Verdict(True)
    reset_at = limiter.get_window_stats(item, scope).reset_time
    return Verdict(False, max(0.0, reset_at - time.time()) + random.uniform(0, SPREAD))  # noqa: S311
