"""/readyz: database, broker, beat, workers and the run ledger, each checked within a
deadline; 200 when all pass, 503 naming what failed. Real worker, beat and Redis processes
(the ledger's own failures: test_ledger_monitoring.py)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import Client, override_settings

from scheduler_app.monitoring import readiness
from tests.processes import beat, wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)


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
    started = time.monotonic()
    response = Client().get("/readyz", HTTP_HOST="10.244.1.17:8000")
    took = time.monotonic() - started

    assert response.status_code == 503  # no worker, no beat in this test
    body = response.json()
    assert set(body["checks"]) == {"database", "broker", "beat", "workers", "ledger"}
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
    assert body["failing"] == ["beat", "workers"]
    assert body["checks"]["workers"]["error"] == "no worker answered a ping within 1s"
    assert took < readiness.TIMEOUT + 1
    assert "no-store" in response["Cache-Control"]


def test_it_answers_only_reads() -> None:
    assert Client().post("/readyz").status_code == 404


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def redis_server(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A throwaway Redis of this test's own (never the suite's or the shared one)."""
    argv = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1"]
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
    with override_settings(REDIS_URL=url), redis_server(port) as server:
        with worker(tmp_path), beat(tmp_path, REDIS_URL=url):
            until(200, 30)

            server.send_signal(signal.SIGKILL)
            server.wait(10)
            body = until(503, 10, failing=["broker", "beat", "workers", "ledger"])
            assert "Connection refused" in body["checks"]["broker"]["error"]
            assert body["checks"]["database"]["ok"]

            with redis_server(port):  # the same address: worker and beat reconnect
                until(200, 90)
