"""Concurrency pools: at most `size` runs of a pool at once, across every worker of the fleet.

A pool's slots are leases in Redis: one sorted set per pool, its members the run ids holding
a slot, each scored by the moment its lease ends. A live run renews its lease from a thread
(every third of the lease, as the overlap lock does); a run whose worker died stops renewing
and its slot is free once the lease ends. Runs that find the pool full wait in a second sorted
set, in the order they came, and are admitted in that order as slots free up: a newcomer never
passes a run that waits. A waiting run is not holding a worker process: it is recorded WAITING
and its message is sent again to ask once more (`runtime`). A waiter that stops asking (its
message revoked or expired, its worker gone) leaves the line at once where the worker hears
of it (`leave_line`), and otherwise once it has not asked for `STALE_SECONDS`.

Each step (prune the ended leases and the stale waiters, then admit or queue) is one Lua
script (redis-py's `register_script`), timed by Redis' own clock (`TIME`), so workers' clocks
do not matter and two workers never both take the last slot. This is the "fair semaphore" of
Redis in Action (6.3), with leases in place of its counter; no well-kept Python library does a
leased, ordered, counting semaphore (python-redis-lock and redis-py's `Lock` hold one owner).

The pools themselves are rows in the database (`scheduler_app.models.Pool`), which this layer
does not read: their sizes are published to one Redis hash when a pool is saved and when a
worker starts, and a definition missing from it, or published over a minute ago, is asked of
the loader the app registers (so a publication lost to a Redis outage is caught up).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Literal, cast

import redis

from scheduler_app.connection import redis_client

logger = logging.getLogger(__name__)
DEFINITIONS = "beatkeeper:pools"
PREFIX = "beatkeeper:pool:"
REFRESH_SECONDS = 60  # a published definition older than this is read from the database again
STALE_SECONDS = 15  # a waiter that has not asked again for this long leaves the line (it asks every second)
PoolFull = Literal["wait", "skip"]
POOL_FULL_CHOICES = ("wait", "skip")


@dataclass(frozen=True)
class PoolSpec:
    name: str
    size: int
    lease: int = 60  # seconds a slot is held without renewal
    rate: str = ""  # the pool's fleet-wide starts (runs/rates.py), e.g. "60/m"

    def as_json(self) -> str:
        return json.dumps({"size": self.size, "lease": self.lease, "rate": self.rate, "at": time.time()})


@dataclass(frozen=True)
class Admission:
    admitted: bool
    in_use: int  # slots held, this run's included when admitted
    position: int = 0  # its place in line, 1 the first (waiting); 0 when admitted or skipped
    joined: bool = False  # it came to the line just now (it was not waiting before)


_loader: Callable[[str], PoolSpec | None] | None = None


@cache
def run_client() -> redis.Redis:
    """The client of the runs' own calls (admission, renewal, release), made once per process:
    a client per run would open a connection per run (redis-py's pool reconnects after a fork)."""
    return redis_client()


def set_loader(load: Callable[[str], PoolSpec | None]) -> None:
    """Where a definition missing from Redis is read from (the app's `pools.definition_from_db`)."""
    global _loader
    _loader = load


def holders_key(name: str) -> str:
    return f"{PREFIX}{name}:holders"


def line_key(name: str) -> str:
    return f"{PREFIX}{name}:line"


def seen_key(name: str) -> str:
    return f"{PREFIX}{name}:seen"


def publish(spec: PoolSpec, client: redis.Redis | None = None) -> None:
    (client or redis_client()).hset(DEFINITIONS, spec.name, spec.as_json())


def unpublish(name: str, client: redis.Redis | None = None) -> None:
    (client or redis_client()).hdel(DEFINITIONS, name)


def definition(name: str, client: redis.Redis | None = None) -> PoolSpec | None:
    """The pool named `name` as published; else, or when published more than REFRESH_SECONDS
    ago (a save whose publication failed is then caught up), as the loader reads it, published
    again. With the database unreachable, the published one holds."""
    client = client or run_client()
    raw = cast("bytes | None", client.hget(DEFINITIONS, name))
    published = json.loads(raw) if raw is not None else None
    if published is not None and (_loader is None or time.time() - float(published.get("at", 0)) < REFRESH_SECONDS):
        return _spec(name, published)
    try:
        spec = _loader(name) if _loader is not None else None
    except Exception as exc:  # noqa: BLE001  (the database down: what was published holds)
        logger.warning("pool %s not read from the database (%s); using what was published", name, exc)
        return _spec(name, published) if published is not None else None
    if spec is not None:
        publish(spec, client)
    elif published is not None:
        unpublish(name, client)  # deleted while its deletion did not reach Redis
    return spec


LOCAL_SECONDS = 2.0  # a worker process reuses a definition it read this long (a change lands within it)
_read: dict[str, tuple[float, PoolSpec | None]] = {}


def definition_for_run(name: str) -> PoolSpec | None:
    """`definition`, kept by the process for LOCAL_SECONDS: one Redis call less per run."""
    now = time.monotonic()
    found = _read.get(name)
    if found is not None and now - found[0] < LOCAL_SECONDS:
        return found[1]
    spec = definition(name)
    _read[name] = (now, spec)
    return spec


def _spec(name: str, values: dict[str, object]) -> PoolSpec:
    return PoolSpec(name, int(str(values["size"])), int(str(values["lease"])), str(values.get("rate") or ""))


# KEYS: holders, line, seen. ARGV: run id, size, lease ms, stale ms, "wait" or "skip".
# Returns {admitted (0/1), slots in use, position in line (waiting), joined the line now (0/1)}.
_ACQUIRE = """
local holders, line, seen = KEYS[1], KEYS[2], KEYS[3]
local owner, size, lease, stale = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)
local gone = redis.call('ZRANGEBYSCORE', seen, '-inf', now - stale)
for _, id in ipairs(gone) do redis.call('ZREM', line, id) end
redis.call('ZREMRANGEBYSCORE', seen, '-inf', now - stale)
if redis.call('ZSCORE', holders, owner) then
  redis.call('ZADD', holders, now + lease, owner)
  return {1, redis.call('ZCARD', holders), 0, 0}
end
local free = size - redis.call('ZCARD', holders)
local joined = 0
if ARGV[5] == 'wait' then
  -- in line by when it joined, to the microsecond: two runs joining in one millisecond keep their order
  joined = redis.call('ZADD', line, 'NX', tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000, owner)
  redis.call('ZADD', seen, now, owner)
end
local ahead = redis.call('ZRANK', line, owner) or redis.call('ZCARD', line)
if ahead < free then
  redis.call('ZADD', holders, now + lease, owner)
  redis.call('ZREM', line, owner)
  redis.call('ZREM', seen, owner)
  return {1, redis.call('ZCARD', holders), 0, 0}
end
local position = 0
if ARGV[5] == 'wait' then position = ahead + 1 end
return {0, size - free, position, joined}
"""

# KEYS: holders. ARGV: run id, lease ms. 1: renewed; 0: the lease had ended (the slot is lost).
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not ends or tonumber(ends) < now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""


@dataclass
class PoolSlot:
    """One run's place in a pool: `acquire` admits it or says where it waits; the slot is
    renewed while held and given back by `release`."""

    spec: PoolSpec
    owner: str  # the run's task id: a retry or a redelivery of the run finds its own slot
    client: redis.Redis = field(default_factory=run_client)
    held: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _renewer: threading.Thread | None = None

    def acquire(self, when_full: PoolFull = "wait") -> Admission:
        script = self.client.register_script(_ACQUIRE)  # EVALSHA: the script is sent once per connection
        keys = [holders_key(self.spec.name), line_key(self.spec.name), seen_key(self.spec.name)]
        stale_ms = STALE_SECONDS * 1000
        answer = cast(
            "list[int]",
            script(keys=keys, args=[self.owner, self.spec.size, self.spec.lease * 1000, stale_ms, when_full]),
        )
        admitted, in_use, position, joined = (int(value) for value in answer)
        if admitted:
            self.held = True
            self._stop.clear()
            self._renewer = threading.Thread(target=self._renew, name=f"pool-renewer:{self.spec.name}", daemon=True)
            self._renewer.start()
        return Admission(bool(admitted), in_use, position, bool(joined))

    def _renew(self) -> None:
        script = self.client.register_script(_RENEW)
        while not self._stop.wait(self.spec.lease / 3):
            try:
                if not script(keys=[holders_key(self.spec.name)], args=[self.owner, self.spec.lease * 1000]):
                    logger.error("the slot of %s in pool %s was lost: another run may take it", self.owner,
                                 self.spec.name)  # fmt: skip
                    return
            except redis.RedisError as exc:
                logger.warning("the slot of %s in pool %s not renewed this time: %s", self.owner, self.spec.name, exc)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join()
        if self.held:
            self.held = False
            try:
                self.client.zrem(holders_key(self.spec.name), self.owner)
            except redis.RedisError as exc:  # the run is over: its slot frees itself when the lease ends
                logger.warning("the slot of %s in pool %s not given back (%s); it frees at its lease's end",
                               self.owner, self.spec.name, exc)  # fmt: skip


@dataclass(frozen=True)
class Occupancy:
    """What a pool holds now: the runs with a slot (and when each lease ends, in Redis' clock)
    and the runs waiting, first first (and since when they wait)."""

    holders: list[tuple[str, float]]
    waiting: list[tuple[str, float]]


def occupancy(name: str, client: redis.Redis | None = None) -> Occupancy:
    """The pool's holders whose lease has not ended and its waiters, as the next admission sees them."""
    client = client or redis_client()
    now_s, now_us = client.time()
    now_ms = now_s * 1000 + now_us // 1000
    held = cast("list[tuple[bytes, float]]", client.zrangebyscore(holders_key(name), now_ms, "+inf", withscores=True))
    line = cast("list[tuple[bytes, float]]", client.zrange(line_key(name), 0, -1, withscores=True))
    return Occupancy(
        [(run.decode(), ends / 1000) for run, ends in held], [(run.decode(), at / 1000) for run, at in line]
    )


def leave_line(name: str, owner: str) -> None:
    """A waiting run that will not ask again (revoked, expired, not sent again) leaves the line;
    Redis unreachable, it leaves when it goes stale."""
    if not name:
        return
    try:
        client = run_client()
        client.zrem(line_key(name), owner)
        client.zrem(seen_key(name), owner)
    except redis.RedisError as exc:
        logger.warning("run %s not taken out of pool %s's line (%s)", owner, name, exc)


def forget(name: str, client: redis.Redis | None = None) -> None:
    """A deleted pool's leases, line and definition."""
    client = client or redis_client()
    client.delete(holders_key(name), line_key(name), seen_key(name))
    unpublish(name, client)
