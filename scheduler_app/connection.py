"""The platform's Redis connection (REDIS_URL): the broker's server, used for locks,
claims, the beat lease and slot marks, the run ledger, heartbeats and probes.

Every part that talks to Redis gets its client here. REDIS_URL may name Redis Sentinel
(`sentinel://host1:26379,host2:26379/0?service_name=mymaster`): the client is then redis-py's
`Sentinel.master_for`, whose pool asks the sentinels for the primary before each new
connection. A connection to a primary that died fails (ConnectionError), and one to a
primary that was demoted answers a write with READONLY, which redis-py turns into a
ConnectionError after dropping the connection: either way the caller's next command
connects to the primary the sentinels promoted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import redis
from django.conf import settings
from django.core.signals import request_finished, request_started
from django.dispatch import receiver
from redis.sentinel import Sentinel

from project import env

CONNECT_TIMEOUT = 3.0  # seconds to open a connection
READ_TIMEOUT = 5.0  # seconds to wait for an answer
HEALTH_CHECK_INTERVAL = 25  # a connection idle this long is PINGed before use

_sentinels: dict[tuple[env.SentinelURL, float], Sentinel] = {}


def redis_client(timeout: float | None = None) -> redis.Redis:
    """A client of REDIS_URL. `timeout` (seconds) bounds both connecting and each answer,
    for callers that must not wait like a worker does (probes, web requests); without it, a
    web request's clients get `request_timeout()` (see `bounded`), other processes' the defaults."""
    timeout = _bound.get() if timeout is None else timeout
    connect = CONNECT_TIMEOUT if timeout is None else timeout
    read = READ_TIMEOUT if timeout is None else timeout
    options = {
        "socket_connect_timeout": connect,
        "socket_timeout": read,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
    }
    found = env.sentinel(settings.REDIS_URL)
    if found is None:
        return redis.Redis.from_url(settings.REDIS_URL, **options)
    credentials = {"username": found.username, "password": found.password}
    client: redis.Redis = sentinels(found, read).master_for(  # type: ignore[no-untyped-call]
        found.service_name, db=found.db, **credentials, **options
    )
    return client


def sentinels(found: env.SentinelURL, timeout: float) -> Sentinel:
    """One `Sentinel` per process, URL and timeout: its connections to the sentinels are
    shared by every client made from it."""
    key = (found, timeout)
    if key not in _sentinels:
        kwargs = env.sentinel_kwargs(found, timeout)
        _sentinels[key] = Sentinel(list(found.hosts), sentinel_kwargs=kwargs)  # type: ignore[no-untyped-call]
    return _sentinels[key]


# --- Web requests wait for Redis at most REDIS_REQUEST_TIMEOUT per call -------------------------
# A worker, beat or the recorder may wait out a slow Redis (a fork for a snapshot, a slow
# fsync); a web request must answer (503, or a page saying what it could not read) before a
# proxy or gunicorn gives up on it. Every Redis client made while a request is handled,
# including the ledger's and the Celery publisher's (scheduler_app/broker.py), gets the
# request's bound; `bounded()` sets one for any other code (a management command).
_bound: ContextVar[float | None] = ContextVar("redis_timeout", default=None)


def request_timeout() -> float | None:
    """The bound on each Redis call of the code running now (None: the process' defaults)."""
    return _bound.get()


_shared: dict[tuple[str, float | None], redis.Redis] = {}


def shared_client() -> redis.Redis:
    """A client kept for the process: one pool per REDIS_URL (tests point processes at servers
    of their own) and bound (a web request's calls wait REDIS_REQUEST_TIMEOUT at most)."""
    key = (settings.REDIS_URL, request_timeout())
    if key not in _shared:
        _shared[key] = redis_client()
    return _shared[key]


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    token = _bound.set(seconds)
    try:
        yield
    finally:
        _bound.reset(token)


@receiver(request_started, dispatch_uid="beatkeeper-redis-bound")
def _bound_the_request(**kwargs: Any) -> None:
    _bound.set(float(settings.REDIS_REQUEST_TIMEOUT))


@receiver(request_finished, dispatch_uid="beatkeeper-redis-unbound")
def _unbound_after_the_request(**kwargs: Any) -> None:
    _bound.set(None)
