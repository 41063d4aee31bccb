"""Which beat dispatches, and the record of what it dispatched: the leader lease, the
fencing token, the per-schedule slot marks and the heartbeat, all in Redis.

- The lease is a redis-py `Lock` whose value is `<fencing token>:<node>`; the token comes
  from a counter that only grows, so each new leadership has a larger one.
- Before it sends anything, the leader claims the slots it is about to send in one Lua
  script that first checks the lease still holds its own value (the fencing check): a
  beat that lost the lease while paused (SIGSTOP, a long GC, a network partition) can
  claim nothing. A claim raises the schedule's mark, the last slot sent, and only a slot
  later than the mark is granted: so a failover, a restart or a second beat never sends
  a slot twice, whatever the database's `last_run_at` says.
- The heartbeat says who leads, when each beat last ticked, and how late its last
  dispatches were; `/readyz` and the dashboard read it (`heartbeat()`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis.lock import Lock

from scheduler_app.connection import redis_client

logger = logging.getLogger(__name__)
PREFIX = "beatkeeper:beat:"
LEASE_KEY = PREFIX + "leader"
FENCE_KEY = PREFIX + "fence"
MARKS_KEY = PREFIX + "marks"  # hash: schedule id -> last slot sent, in epoch microseconds
HEARTBEAT_KEY = PREFIX + "heartbeat"  # hash: node -> JSON of its last tick
HEARTBEAT_TTL = 120  # seconds a silent beat stays listed

# KEYS: lease, marks. ARGV: lease value, then (schedule id, slot in microseconds) pairs.
# Returns -1 if the lease is not ours, else one 1 (granted) or 0 (already sent) per pair.
CLAIM_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local granted = {}
for i = 2, #ARGV, 2 do
  local mark = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > mark then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    granted[#granted + 1] = 1
  else
    granted[#granted + 1] = 0
  end
end
return granted
"""


class NotLeader(Exception):
    """The lease is no longer ours: stop dispatching."""


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def to_us(moment: dt.datetime) -> int:
    """A slot as whole microseconds since the epoch (exact, and below 2**53 for Lua)."""
    return (moment - EPOCH) // dt.timedelta(microseconds=1)


def from_us(value: int | bytes | str) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=int(value))


@dataclass
class Lease:
    ttl: float  # seconds; a leader that stops renewing loses the lease after this long
    node: str = field(default_factory=lambda: f"beat-{uuid.uuid4().hex[:8]}")
    client: redis.Redis = field(default_factory=redis_client)
    token: int | None = None  # the fencing token of our current leadership
    _lock: Lock | None = None
    _renewed: float = 0.0  # monotonic time of the last renewal

    @property
    def value(self) -> str:
        return f"{self.token}:{self.node}"

    @property
    def is_leader(self) -> bool:
        return self._lock is not None

    def hold(self) -> bool:
        """Renew the lease if we hold it, else try to take it. True while we lead."""
        try:
            return self._renew() if self._lock is not None else self._acquire()
        except redis.RedisError as exc:
            logger.warning("beat %s cannot reach Redis for its lease: %s", self.node, exc)
            return self._lock is not None and self._still_valid()

    def _acquire(self) -> bool:
        lock = self.client.lock(LEASE_KEY, timeout=self.ttl, blocking=False, thread_local=False)
        if self.client.exists(LEASE_KEY):
            return False
        token = int(self.client.incr(FENCE_KEY))
        if not lock.acquire(token=f"{token}:{self.node}"):
            return False
        self._lock, self.token, self._renewed = lock, token, time.monotonic()
        logger.info("beat %s is now the leader (fencing token %d)", self.node, token)
        return True

    def _renew(self) -> bool:
        assert self._lock is not None  # noqa: S101
        try:
            self._lock.reacquire()
        except redis.exceptions.LockError:
            logger.warning("beat %s lost the lease (token %s): another beat leads now", self.node, self.token)
            self._lock = None
            return False
        self._renewed = time.monotonic()
        return True

    def _still_valid(self) -> bool:
        """Without Redis we cannot renew; we lead until the lease would have run out."""
        if time.monotonic() - self._renewed < self.ttl:
            return True
        self._lock = None
        return False

    def release(self) -> None:
        if self._lock is None:
            return
        try:
            self._lock.release()
        except redis.RedisError:
            pass
        self._lock = None


@dataclass
class SlotLedger:
    """The per-schedule marks: the last slot each schedule was sent for."""

    lease: Lease

    def claim(self, slots: Sequence[tuple[int, dt.datetime]]) -> list[bool]:
        """Claim (schedule id, slot) pairs under the fencing check; which may be sent."""
        if not slots:
            return []
        argv: list[Any] = [self.lease.value]
        for pk, slot in slots:
            argv += [pk, to_us(slot)]
        answer = self.lease.client.eval(CLAIM_SCRIPT, 2, LEASE_KEY, MARKS_KEY, *argv)
        if answer == -1:
            raise NotLeader(self.lease.node)
        return [bool(flag) for flag in answer]

    def marks(self, pks: Iterable[int]) -> dict[int, dt.datetime]:
        """The last slot sent of each schedule that has one."""
        pks = list(pks)
        found: dict[int, dt.datetime] = {}
        if not self.lease.client.exists(MARKS_KEY):
            return found
        for start in range(0, len(pks), 10_000):
            chunk = pks[start : start + 10_000]
            for pk, value in zip(chunk, self.lease.client.hmget(MARKS_KEY, chunk), strict=True):
                if value is not None:
                    found[pk] = from_us(value)
        return found

    def forget(self, pks: Iterable[int]) -> None:
        pks = list(pks)
        if pks:
            self.lease.client.hdel(MARKS_KEY, *pks)


def beat(client: redis.Redis, node: str, facts: dict[str, Any]) -> None:
    """Record this beat's last tick (and the leader's facts)."""
    with client.pipeline(transaction=False) as pipe:  # one round trip
        pipe.hset(HEARTBEAT_KEY, node, json.dumps({**facts, "node": node, "at": time.time()}))
        pipe.expire(HEARTBEAT_KEY, HEARTBEAT_TTL)
        pipe.execute()


def heartbeat(client: redis.Redis | None = None) -> dict[str, Any]:
    """What the beats last said: the leader, and each beat's last tick, freshest first."""
    client = client or redis_client()
    now = time.time()
    beats = []
    for raw in client.hvals(HEARTBEAT_KEY):
        facts = json.loads(raw)
        if now - facts["at"] <= HEARTBEAT_TTL:
            beats.append({**facts, "age": now - facts["at"]})
    beats.sort(key=lambda facts: facts["age"])
    lease = cast("bytes | None", client.get(LEASE_KEY))  # redis_client() and probe_client() do not decode
    leader = lease.decode().split(":", 1)[1] if lease else None
    return {"leader": leader, "beats": beats}
