"""Backfills sent by beat's leader (scheduler_app/beat/backfill_sender.py), with real processes:
a worker (and its recorder), one beat or two with the leader killed mid-backfill. What ran is
read from outside: each run of `tests.record_slowly` pushes to a Redis list (executions, not
rows), and the recorded runs say when each started and ended."""

from __future__ import annotations

import datetime as dt
import json
import signal
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app import backfills
from scheduler_app.connection import redis_client
from scheduler_app.models import Backfill
from scheduler_app.runs.history import run_context
from tests.beat.test_beat_ha import FAST_LEASE, leader_line, leading, start_beats
from tests.processes import beat, wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)
TASKS = ("--include", "tests.tasks")
MINUTE = dt.timedelta(minutes=1)
WAIT = 60


def schedule(key: str, seconds: float) -> PeriodicTask:
    """A disabled schedule every minute (beat sends none of its own slots; a backfill may
    still run it), anchored on whole minutes an hour ago."""
    every = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.MINUTES)
    kwargs = {"key": key, "label": "run", "seconds": seconds}
    task = PeriodicTask.objects.create(name=f"backfilled {key}", task="tests.record_slowly", interval=every,
                                       kwargs=json.dumps(kwargs), enabled=False)  # fmt: skip
    anchor = timezone.now().replace(second=0, microsecond=0) - 60 * MINUTE
    PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=anchor, date_changed=anchor)
    task.refresh_from_db()
    return task


def start(task: PeriodicTask, slots: int, max_concurrent: int) -> Backfill:
    first = task.last_run_at + MINUTE
    return backfills.start(task, first, first + (slots - 1) * MINUTE, by=None, via="command",
                           max_concurrent=max_concurrent)  # fmt: skip


def finished(backfill: Backfill) -> Backfill | None:
    backfill.refresh_from_db()
    return backfill if backfill.state == Backfill.FINISHED else None


def runs_of(backfill: Backfill) -> list[TaskResult]:
    return [row for row in TaskResult.objects.filter(periodic_task_name=backfill.schedule_name)
            if run_context(row).get("backfill") == backfill.pk]  # fmt: skip


def executions(key: str) -> int:
    return int(redis_client().llen(f"{key}:order"))


def most_at_once(rows: list[TaskResult]) -> int:
    edges = sorted([(row.date_started, 1) for row in rows] + [(row.date_done, -1) for row in rows])
    running = most = 0
    for _, step in edges:  # an end before a start at the same moment: -1 sorts first
        running += step
        most = max(most, running)
    return most


def test_it_runs_each_slot_once_at_most_max_concurrent_at_a_time_as_beat_would(tmp_path: Path) -> None:
    key = f"backfill-{uuid.uuid4().hex[:8]}"
    task = schedule(key, seconds=0.6)
    backfill = start(task, slots=6, max_concurrent=2)
    slots = list(backfill.slots.order_by("position").values_list("slot", flat=True))
    with worker(tmp_path, *TASKS, concurrency=4), beat(tmp_path):
        wait_for(lambda: finished(backfill), WAIT, "the backfill to finish")
        rows = wait_for(lambda: (found := runs_of(backfill)) and len(found) >= 6 and found, WAIT, "6 recorded runs")
    assert executions(key) == 6, "a slot ran twice or not at all"
    read = [item.decode() if isinstance(item, bytes) else item for item in redis_client().lrange(f"{key}:for", 0, -1)]
    assert Counter(read) == Counter(slot.isoformat() for slot in slots), "what each task body read as its moment"
    contexts = [run_context(row) for row in rows]
    assert Counter(dt.datetime.fromisoformat(c["scheduled_for"]) for c in contexts) == Counter(slots)
    assert Counter(dt.datetime.fromisoformat(c["slot"]) for c in contexts) == Counter(slots)
    assert {c["trigger"] for c in contexts} == {"backfill"} and {c["by"] for c in contexts} == {"system"}
    assert {row.status for row in rows} == {"SUCCESS"}
    assert most_at_once(rows) == 2, [(r.date_started, r.date_done) for r in rows]  # 2 at a time, never 3
    counts = backfills.progress(backfill)
    assert (counts.done, counts.total, counts.waiting, counts.running) == (6, 6, 0, 0)
    assert backfill.finished_at is not None


def test_it_runs_each_slot_once_when_the_leader_is_killed_mid_backfill(tmp_path: Path) -> None:
    key = f"backfill-{uuid.uuid4().hex[:8]}"
    task = schedule(key, seconds=0.5)
    backfill = start(task, slots=8, max_concurrent=1)
    with ExitStack() as stack:
        stack.enter_context(worker(tmp_path, *TASKS, concurrency=2))
        beats = start_beats(stack, tmp_path, 2, **FAST_LEASE)
        first = leading(beats)
        wait_for(lambda: backfill.slots.filter(state="sent").count() >= 2, WAIT, "2 slots sent")
        first.stop(signal.SIGKILL)
        assert backfills.progress(backfill).waiting > 0, "the backfill ended before the kill: nothing was tested"
        (heir,) = [b for b in beats if b is not first]
        wait_for(lambda: leader_line(heir), WAIT, "the follower to take over")
        wait_for(lambda: finished(backfill), WAIT, "the backfill to finish")
        rows = wait_for(lambda: (found := runs_of(backfill)) and len(found) >= 8 and found, WAIT, "8 recorded runs")
        assert "Backfill" in heir.output, "the heir sent none of the backfill"
    assert executions(key) == 8, f"{executions(key)} executions for 8 slots"
    per_slot = Counter(run_context(row)["slot"] for row in rows)
    assert sorted(per_slot.values()) == [1] * 8, per_slot
    assert backfills.progress(backfill).done == 8
