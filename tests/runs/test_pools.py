"""Concurrency pools on real workers: at most `size` runs of a pool at once across every worker
and process of the fleet; a run that finds it full waits in line (WAITING, its place shown)
and runs once a slot frees, or is skipped by its policy; a SIGKILLed worker's slot comes back
when its lease ends; every run finishes once. The slots' script is also tested alone, on the
real Redis: order, renewal, expiry, stale waiters. Real `celery worker` processes, the real
broker, real signals."""

from __future__ import annotations

import json
import signal
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from celery import current_app
from celery.result import AsyncResult
from django_celery_results.models import TaskResult

from scheduler_app.connection import redis_client
from scheduler_app.models import Pool
from scheduler_app.runs import pools
from tests.processes import Process, wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)
TASKS = ("--include", "tests.tasks")
FAST_REDELIVERY = "15"  # seconds before a dead worker's message is delivered again


def send(task: str, key: str, policy: dict[str, Any], queue: str | None = None, **kwargs: Any) -> str:
    header = {"schedule": key, "trigger": "api", "policy": policy}
    options: dict[str, Any] = {"queue": queue} if queue else {}
    sent = current_app.send_task(task, kwargs={"key": key, **kwargs}, headers={"beatkeeper": header}, **options)
    return str(sent.id)


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans open at one moment (an end before a start at the same moment)."""
    events = sorted(
        [(began, 1) for began, _ in spans] + [(ended, -1) for _, ended in spans], key=lambda e: (e[0], e[1])
    )
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def recorded(ids: list[str], status: str = "SUCCESS") -> list[TaskResult]:
    return list(TaskResult.objects.filter(task_id__in=ids, status=status))


def state_of(task_id: str) -> tuple[str, Any]:
    found: AsyncResult[Any] = AsyncResult(task_id)
    return str(found.state), found.info


def holding(name: str, task_id: str) -> bool:
    return task_id in [run for run, _ in pools.occupancy(name).holders]


def test_a_pool_of_two_runs_two_at_a_time_across_three_workers_of_two_processes(tmp_path: Path, key: str) -> None:
    Pool.objects.create(name=key, size=2, lease=10)
    runs = 50
    with ExitStack() as fleet:
        for _ in range(3):
            fleet.enter_context(worker(tmp_path, *TASKS, concurrency=2))
        ids = [send("tests.pooled", key, {"pool": key}, seconds=0.4) for _ in range(runs)]
        done = wait_for(lambda: len(rows := recorded(ids)) == runs and rows, 150, f"{runs} pooled runs to succeed", 0.5)
        line = pools.occupancy(key)
    spans = [(json.loads(row.result or "{}")["began"], json.loads(row.result or "{}")["ended"]) for row in done]
    assert len({row.task_id for row in done}) == runs  # every run once
    assert redis_client().llen(f"{key}:began") == runs  # no body ran twice
    assert most_at_once(spans) == 2  # never more than the pool's size, and the size was used
    assert line.holders == [] and line.waiting == []  # every slot given back, nobody left in line


def test_a_run_that_finds_the_pool_full_waits_in_line_and_runs_when_a_slot_frees(tmp_path: Path, key: str) -> None:
    Pool.objects.create(name=key, size=1)
    with worker(tmp_path, *TASKS, concurrency=2):
        first = send("tests.pooled", key, {"pool": key}, seconds=3)
        wait_for(lambda: holding(key, first), 30, "the first run to hold the slot", 0.05)
        second = send("tests.pooled", key, {"pool": key}, seconds=0.1)
        state, info = wait_for(
            lambda: (s := state_of(second))[0] == "WAITING" and s, 30, "the second run to wait", 0.05
        )
        assert info["reason"] == f"waiting for a slot of pool {key} (1 of 1 slots in use)"
        assert (info["waiting_for"], info["pool"], info["position"]) == ("pool", key, 1)
        assert [run for run, _ in pools.occupancy(key).waiting] == [second]
        assert redis_client().llen(f"{key}:began") == 1  # not run while it waits
        done = wait_for(lambda: len(rows := recorded([first, second])) == 2 and rows, 40, "both runs to succeed")
    by_id = {row.task_id: json.loads(row.result or "{}") for row in done}
    assert by_id[second]["began"] >= by_id[first]["ended"]  # one at a time


def test_a_schedule_that_skips_when_the_pool_is_full_records_the_run_skipped(tmp_path: Path, key: str) -> None:
    Pool.objects.create(name=key, size=1)
    with worker(tmp_path, *TASKS, concurrency=2):
        first = send("tests.pooled", key, {"pool": key}, seconds=3)
        wait_for(lambda: holding(key, first), 30, "the first run to hold the slot", 0.05)
        skipped = send("tests.pooled", key, {"pool": key, "pool_full": "skip"})
        row = wait_for(lambda: TaskResult.objects.filter(task_id=skipped, status="SKIPPED").first(), 30, "the skip")
        assert json.loads(row.result or "{}")["reason"] == f"pool {key} is full (1 of 1 slots in use)"
        assert pools.occupancy(key).waiting == []  # a skipped run takes no place in line
        wait_for(lambda: recorded([first]), 30, "the first run to succeed")
    assert redis_client().llen(f"{key}:began") == 1


def test_a_run_of_a_pool_that_does_not_exist_fails_saying_so(tmp_path: Path, key: str) -> None:
    with worker(tmp_path, *TASKS):
        task_id = send("tests.pooled", key, {"pool": "no-such-pool"})
        row = wait_for(lambda: recorded([task_id], "FAILURE"), 30, "the run to fail")[0]
    assert "UnknownPool" in (row.result or "")
    assert "no pool named 'no-such-pool'" in (row.result or "")
    assert redis_client().llen(f"{key}:began") == 0  # it never ran unbounded


def test_a_task_joins_its_default_pool_and_a_schedule_may_pick_another(tmp_path: Path, key: str) -> None:
    Pool.objects.create(name="tests-exports", size=1)
    Pool.objects.create(name=key, size=1)
    with worker(tmp_path, *TASKS):
        by_default = send("tests.pooled_by_default", key, {})
        wait_for(lambda: recorded([by_default]), 30, "the run in the task's pool")
        hold = send("tests.pooled", key, {"pool": key}, seconds=3)  # fills the schedule's pool
        wait_for(lambda: holding(key, hold), 30, "the schedule's pool to be full", 0.05)
        moved = send("tests.pooled_by_default", key, {"pool": key, "pool_full": "skip"})
        row = wait_for(lambda: TaskResult.objects.filter(task_id=moved, status="SKIPPED").first(), 30, "the skip")
    assert json.loads(row.result or "{}")["pool"] == key  # the schedule's pool, not the task's


def test_runs_waiting_in_a_pools_line_do_not_spend_their_tasks_rate(tmp_path: Path, key: str) -> None:
    """tests.pooled_rated allows 4 starts a minute: the four runs start once each, though the
    three behind the first ask for the slot every second meanwhile."""
    Pool.objects.create(name=key, size=1)
    with worker(tmp_path, *TASKS, concurrency=2):
        ids = [send("tests.pooled_rated", key, {"pool": key}, seconds=1.5) for _ in range(4)]
        done = wait_for(lambda: len(rows := recorded(ids)) == 4 and rows, 40, "the four runs, well inside the minute")
    spans = sorted((json.loads(r.result or "{}")["began"], json.loads(r.result or "{}")["ended"]) for r in done)
    assert most_at_once(spans) == 1 and spans[-1][0] - spans[0][0] < 30  # one at a time, no wait for the rate


def test_a_run_revoked_while_it_waits_leaves_the_line_at_once(tmp_path: Path, key: str) -> None:
    Pool.objects.create(name=key, size=1, lease=600)
    with worker(tmp_path, *TASKS, concurrency=2):
        first = send("tests.pooled", key, {"pool": key}, seconds=4)
        wait_for(lambda: holding(key, first), 30, "the first run to hold the slot", 0.05)
        second = send("tests.pooled", key, {"pool": key})
        wait_for(lambda: [run for run, _ in pools.occupancy(key).waiting] == [second], 30, "the second to wait")
        current_app.control.revoke(second)
        wait_for(lambda: pools.occupancy(key).waiting == [], pools.STALE_SECONDS - 5, "the revoked run to leave")
        third = send("tests.pooled", key, {"pool": key}, seconds=0.1)
        wait_for(lambda: recorded([first, third]), 40, "the first and third runs")
    assert not recorded([second])  # it never ran


def kill(proc: Process) -> None:
    """SIGKILL the whole worker: its main process and its pool."""
    import os

    os.killpg(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait()


def test_a_sigkilled_workers_slot_comes_back_within_its_lease_and_every_run_finishes_once(
    tmp_path: Path, key: str
) -> None:
    """The doomed worker consumes one queue, the survivor that one and another: the second run
    goes to the other, so its asks for the slot (messages sent again, as a retry is) stay on
    the survivor. Had the doomed worker reserved one, it would come back only after the
    broker's visibility timeout, as any Celery message held by a dead worker does."""
    lease = 5
    Pool.objects.create(name=key, size=1, lease=lease)
    shared, survivors = f"{key}-shared", f"{key}-survivor"
    with worker(tmp_path, *TASKS, "--queues", shared, CELERY_VISIBILITY_TIMEOUT=FAST_REDELIVERY) as doomed:
        first = send("tests.pooled", key, {"pool": key}, queue=shared, seconds=6)
        wait_for(lambda: holding(key, first), 30, "the doomed worker's run to hold the slot", 0.05)
        with worker(tmp_path, *TASKS, "--queues", f"{shared},{survivors}", CELERY_VISIBILITY_TIMEOUT=FAST_REDELIVERY):
            second = send("tests.pooled", key, {"pool": key}, queue=survivors, seconds=0.5)
            wait_for(lambda: state_of(second)[0] == "WAITING", 30, "the second run to wait", 0.05)
            kill(doomed)
            killed_at = time.time()
            began = wait_for(lambda: redis_client().llen(f"{key}:began") == 2, lease + 10, "the waiting run to start")
            second_began = float(redis_client().lindex(f"{key}:began", 1) or 0)
            done = wait_for(lambda: len(rows := recorded([first, second])) == 2 and rows, 90,
                            "the killed run, redelivered, and the second to succeed")  # fmt: skip
    assert began and second_began - killed_at <= lease + pools_poll() + 1  # the lease, the next ask, a margin
    assert {row.task_id for row in done} == {first, second}  # each once
    results = {row.task_id: json.loads(row.result or "{}") for row in done}
    assert results[first]["began"] >= results[second]["ended"]  # the redelivered run waited its turn
    assert redis_client().llen(f"{key}:began") == 3  # the killed body, the second, the killed run again


def pools_poll() -> float:
    from scheduler_app.runs import runtime

    return runtime.POOL_POLL_SECONDS


# --- the slots' script alone, on the real Redis ----------------------------------------------


def test_slots_are_given_in_the_order_runs_came_and_a_newcomer_never_passes_a_waiter(key: str) -> None:
    spec = pools.PoolSpec(key, size=2, lease=30)
    a, b, c, d = (pools.PoolSlot(spec, run) for run in ("a", "b", "c", "d"))
    assert a.acquire().admitted and b.acquire().admitted
    waiting_c, waiting_d = c.acquire(), d.acquire()
    assert (waiting_c.admitted, waiting_c.position, waiting_c.joined, waiting_c.in_use) == (False, 1, True, 2)
    assert (waiting_d.admitted, waiting_d.position) == (False, 2)
    assert not d.acquire().joined  # asking again keeps its place
    a.release()
    assert not d.acquire().admitted  # c came first: the free slot is c's
    assert pools.PoolSlot(spec, "e").acquire("skip").admitted is False  # a skipper does not pass c either
    assert c.acquire().admitted
    assert [run for run, _ in pools.occupancy(key).holders] == ["b", "c"]
    for slot in (b, c):
        slot.release()
    assert d.acquire().admitted
    d.release()


def test_a_slot_not_renewed_ends_with_its_lease_and_a_renewed_one_does_not(key: str) -> None:
    spec = pools.PoolSpec(key, size=1, lease=3)
    held = pools.PoolSlot(spec, "alive")
    assert held.acquire().admitted
    began = time.monotonic()
    wait_for(lambda: time.monotonic() - began > 2 * spec.lease, 3 * spec.lease, "two leases to pass", 0.5)
    assert not pools.PoolSlot(spec, "other").acquire("skip").admitted  # renewed by its thread meanwhile
    held._stop.set()  # the run's worker dies: nobody renews it
    assert held._renewer is not None
    held._renewer.join()
    other = pools.PoolSlot(spec, "other")
    wait_for(lambda: other.acquire("skip").admitted, spec.lease + 2, "the unrenewed slot to free", 0.2)
    other.release()


def test_a_waiter_that_stops_asking_leaves_the_line(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pools, "STALE_SECONDS", 0)
    spec = pools.PoolSpec(key, size=1, lease=3)
    holder = pools.PoolSlot(spec, "holder")
    assert holder.acquire().admitted
    assert pools.PoolSlot(spec, "gone").acquire().position == 1  # then its message is revoked: it never asks again
    holder.release()
    later = pools.PoolSlot(spec, "later")
    wait_for(lambda: later.acquire().admitted, spec.lease + 3, "the stale waiter to leave the line", 0.5)
    assert [run for run, _ in pools.occupancy(key).waiting] == []
    later.release()


def test_a_pool_saved_is_published_for_the_workers_and_a_missing_one_read_from_the_database(key: str) -> None:
    pool = Pool.objects.create(name=key, size=3, lease=20, rate="5/s")
    assert pools.definition(key) == pools.PoolSpec(key, 3, 20, "5/s")
    redis_client().hdel(pools.DEFINITIONS, key)  # a Redis that lost it
    assert pools.definition(key) == pools.PoolSpec(key, 3, 20, "5/s")  # read back from the row
    assert redis_client().hexists(pools.DEFINITIONS, key)
    pool.size = 1
    pool.save()
    assert pools.definition(key) == pools.PoolSpec(key, 1, 20, "5/s")
    pool.delete()
    assert pools.definition(key) is None


def test_a_definition_published_over_a_minute_ago_is_read_again_and_a_lost_deletion_caught_up(key: str) -> None:
    """A save or a delete whose publication did not reach Redis (it was down) is caught up
    within REFRESH_SECONDS: the next run after that reads the row again."""
    pool = Pool.objects.create(name=key, size=2)
    pools.publish(pools.PoolSpec(key, 7, 60))  # as if a later save had not reached the database's copy
    assert pools.definition(key) == pools.PoolSpec(key, 7, 60)  # fresh: trusted
    stale = json.loads(redis_client().hget(pools.DEFINITIONS, key) or "{}")
    stale["at"] -= pools.REFRESH_SECONDS + 1
    redis_client().hset(pools.DEFINITIONS, key, json.dumps(stale))
    assert pools.definition(key) == pools.PoolSpec(key, 2, 60)  # the row, published again
    Pool.objects.filter(pk=pool.pk).delete()  # a deletion that never reached Redis
    stale["at"] -= pools.REFRESH_SECONDS + 1
    redis_client().hset(pools.DEFINITIONS, key, json.dumps(stale))
    assert pools.definition(key) is None and not redis_client().hexists(pools.DEFINITIONS, key)
