"""What every variant's task body does, so that the bench sees when runs end: one Redis
round trip (a pipeline: the count, the first and the last end time)."""

from __future__ import annotations

import os
import time

import redis

DONE, FIRST, LAST = "bench:done", "bench:first", "bench:last"
_client: redis.Redis | None = None


def count() -> None:
    global _client  # noqa: PLW0603  (one connection per worker process)
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_COUNTER"])
    now = time.time()
    pipe = _client.pipeline(transaction=False)
    pipe.incr(DONE)
    pipe.set(FIRST, now, nx=True)
    pipe.set(LAST, now)
    pipe.execute()
