"""Fleet-wide rate limits on real workers: `platform_task(rate=...)` holds across every
worker and process of the fleet, and a run over the rate waits (WAITING, with the reason)
and runs later: delayed, never dropped. Real `celery worker` processes, the real broker."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from celery import current_app
from celery.result import AsyncResult
from django_celery_results.models import TaskResult

from scheduler_app.connection import redis_client
from scheduler_app.runs import rates
from scheduler_app.runs.policy import RunPolicy
from tests.processes import wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)
TASKS = ("--include", "tests.tasks")
RATE, WINDOW = 20, 10.0  # tests.rated: rate="20/10s"
# The body's own clock reading follows the limiter's stamp by the time it takes to begin
# (well under this): a window this much shorter than the rate's is counted.
STAMP_TO_BODY = 0.05


def send(task: str, key: str) -> str:
    header = {"schedule": key, "trigger": "api", "policy": {}}
    return str(current_app.send_task(task, kwargs={"key": key}, headers={"beatkeeper": header}).id)


def most_in_any_window(starts: list[float], window: float) -> int:
    """The largest number of starts inside any window of `window` seconds."""
    starts = sorted(starts)
    most, first = 0, 0
    for last, at in enumerate(starts):
        while at - starts[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_the_rate_holds_across_three_workers_of_two_processes(tmp_path: Path, key: str) -> None:
    runs = 120  # six windows' worth: a minute at the least
    with ExitStack() as fleet:
        for _ in range(3):
            fleet.enter_context(worker(tmp_path, *TASKS, concurrency=2))
        began = time.time()
        ids = [send("tests.rated", key) for _ in range(runs)]
        client = redis_client()
        wait_for(lambda: client.llen(f"{key}:starts") >= runs, 150, f"{runs} rated runs to start", interval=0.5)
        took = time.time() - began
        done = wait_for(
            lambda: (n := TaskResult.objects.filter(task_id__in=ids, status="SUCCESS").count()) == runs and n,
            60, "every rated run to be recorded SUCCESS",
        )  # fmt: skip
    starts = [float(v) for v in redis_client().lrange(f"{key}:starts", 0, -1)]
    assert done == runs and len(starts) == runs  # each run once: delayed, none dropped, none doubled
    assert most_in_any_window(starts, WINDOW - STAMP_TO_BODY) <= RATE
    assert most_in_any_window(starts, WINDOW) >= RATE - 1  # the rate was used, not undercut
    assert took >= (runs / RATE - 1) * WINDOW - 1  # 120 starts at 20 per 10 s take 50 s at the least


def test_a_run_over_the_rate_shows_waiting_with_the_reason_and_runs_later(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS):
        first = send("tests.rated_slowly", key)
        wait_for(lambda: redis_client().get(f"{key}:runs") == b"1", 30, "the first run")
        second = send("tests.rated_slowly", key)

        def waiting() -> dict[str, Any] | None:
            found: AsyncResult[Any] = AsyncResult(second)
            return found.info if str(found.state) == "WAITING" and isinstance(found.info, dict) else None

        info = wait_for(waiting, 30, "the second run to wait for the rate", interval=0.05)
        assert info["reason"] == "over the fleet-wide rate 1/30s of tests.rated_slowly"
        assert info["waiting_for"] == "rate"
        assert 20 < info["starts_in"] <= 30.1
        assert redis_client().get(f"{key}:runs") == b"1"  # not run while it waits
        wait_for(lambda: TaskResult.objects.filter(task_id=first, status="SUCCESS").exists(), 30, "the first run's row")
        row = wait_for(
            lambda: TaskResult.objects.filter(task_id=second, status="SUCCESS").first(), 45, "the waiting run to run"
        )
    assert redis_client().get(f"{key}:runs") == b"2"
    assert row.result is not None and json.loads(row.result) == {}


@pytest.mark.parametrize("rate", ["60/m", "5/s", "100/h", "1000/d", "10/30s", "60 per minute"])
def test_it_reads_a_rate(rate: str) -> None:
    assert RunPolicy(rate=rate).rate == rate


@pytest.mark.parametrize("rate", ["fast", "60", "0/m", "60/w", "-1/s"])
def test_it_refuses_what_is_not_a_rate_and_says_what_is(rate: str) -> None:
    with pytest.raises(ValueError, match=r"rate .* (is not a rate; use a count per unit: 60/m|allows no run)"):
        rates.parse(rate)


def test_a_schedule_cannot_lift_its_tasks_rate() -> None:
    assert RunPolicy(rate="5/s").with_overrides({"rate": "", "max_retries": 1}).rate == "5/s"
