"""The overlap lock of a schedule: one run at a time, renewed while the run is alive.

A redis-py `Lock` whose token is the run's task id, so a retry or a redelivery of the
same run adopts the lock it already holds. A thread renews it every third of its TTL;
a worker that dies stops renewing and the lock expires by itself within the TTL.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import cast

import redis
from redis.lock import Lock

from scheduler_app.connection import redis_client

logger = logging.getLogger(__name__)
PREFIX = "beatkeeper:overlap:"


def lock_key(scope: str) -> str:
    return PREFIX + scope


@dataclass
class OverlapLock:
    scope: str  # the schedule's name, or the task's name for runs without a schedule
    owner: str  # the run's task id
    ttl: int
    client: redis.Redis = field(default_factory=redis_client)
    _lock: Lock | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _renewer: threading.Thread | None = None

    def acquire(self) -> bool:
        lock = self.client.lock(lock_key(self.scope), timeout=self.ttl, blocking=False, thread_local=False)
        if not (lock.acquire(token=self.owner) or self._adopt(lock)):
            return False
        self._lock = lock
        self._renewer = threading.Thread(target=self._renew, name=f"lock-renewer:{self.scope}", daemon=True)
        self._renewer.start()
        return True

    def _adopt(self, lock: Lock) -> bool:
        """The lock is already this run's (an earlier attempt of it took it)."""
        if self.client.get(lock.name) != self.owner.encode():
            return False
        lock.local.token = self.owner.encode()
        lock.reacquire()
        return True

    def holder(self) -> str | None:
        value = cast("bytes | None", self.client.get(lock_key(self.scope)))  # redis_client() does not decode
        return value.decode() if value else None

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                assert self._lock is not None  # noqa: S101  (set before the thread starts)
                self._lock.reacquire()
            except redis.exceptions.LockError:
                logger.error("overlap lock of %s was lost: another run may start", self.scope)
                return
            except redis.RedisError as exc:
                logger.warning("overlap lock of %s not renewed this time: %s", self.scope, exc)

    def keep_for(self, seconds: float) -> None:
        """Stop renewing but keep the lock `seconds` longer (a retry is on its way)."""
        self._stop_renewing()
        if self._lock is not None:
            self.client.pexpire(self._lock.name, int((seconds + self.ttl) * 1000))

    def release(self) -> None:
        self._stop_renewing()
        if self._lock is not None:
            try:
                self._lock.release()
            except redis.exceptions.LockNotOwnedError:
                logger.warning("overlap lock of %s had already expired at release", self.scope)
            self._lock = None

    def _stop_renewing(self) -> None:
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join()


def claim_waiting_slot(scope: str, owner: str, ttl: int, client: redis.Redis | None = None) -> bool:
    """At most one run waits behind the running one: claim that place, or find it ours."""
    client = client or redis_client()
    key = lock_key(scope) + ":waiting"
    if client.set(key, owner, nx=True, ex=ttl):
        return True
    return bool(client.get(key) == owner.encode() and client.expire(key, ttl))


def leave_waiting_slot(scope: str, owner: str, client: redis.Redis | None = None) -> None:
    client = client or redis_client()
    key = lock_key(scope) + ":waiting"
    if client.get(key) == owner.encode():
        client.delete(key)
