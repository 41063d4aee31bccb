"""End to end with real processes: beat sends, a real worker runs, TaskResult records."""

from __future__ import annotations

import datetime as dt
import json
from functools import partial
from pathlib import Path

import pytest
from celery import current_app
from django.core.management import call_command
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app import catalog
from scheduler_app.runs.history import run_context
from tests.processes import beat, wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)


def finished(**filters: object) -> TaskResult | None:
    return TaskResult.objects.filter(status__in=["SUCCESS", "FAILURE"], **filters).first()


def test_it_fires_an_interval_schedule_through_beat_and_records_the_run(tmp_path: Path) -> None:
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="sessions every second", task="maintenance.purge_expired_sessions", interval=every_second
    )
    with worker(tmp_path) as w, beat(tmp_path) as b:
        row = wait_for(lambda: finished(periodic_task_name="sessions every second"), 60, "a recorded run")
        b.wait_for_output("Scheduler: Sending due task sessions every second")
    assert row.status == "SUCCESS", row.traceback
    assert row.task_name == "maintenance.purge_expired_sessions"
    assert row.worker and row.worker.startswith("test-")
    assert row.date_started is not None and row.date_done >= row.date_started
    assert "received" in w.output
    context = run_context(row)
    assert (context["trigger"], context["schedule"], context["attempt"]) == ("beat", "sessions every second", 1)
    scheduled_for = dt.datetime.fromisoformat(context["scheduled_for"])
    assert scheduled_for <= row.date_started
    assert dt.datetime.fromisoformat(context["queued_at"]) >= scheduled_for


def test_it_runs_every_catalog_task_on_a_real_worker(tmp_path: Path) -> None:
    call_command("seed_default_tasks", verbosity=0)
    with worker(tmp_path):
        sent = {d.task: current_app.send_task(d.task, kwargs=dict(d.kwargs)).id for d in catalog.definitions()}
        for name, task_id in sent.items():
            row = wait_for(partial(finished, task_id=task_id), 60, f"a run of {name}")
            assert row.status == "SUCCESS", f"{name}: {row.traceback}"
            assert row.task_name == name
    health = TaskResult.objects.get(task_id=sent["maintenance.system_health_check"])
    assert health.result is not None
    result = json.loads(health.result)
    assert result["checks"]["broker"]["reachable"] is True
    assert result["checks"]["workers"]["count"] >= 1  # the worker answered while running the check


def test_it_sends_one_health_check_when_a_worker_starts(tmp_path: Path) -> None:
    with worker(tmp_path, STARTUP_HEALTH_CHECK="true") as w:
        row = wait_for(lambda: finished(task_name="maintenance.system_health_check"), 60, "the start-up check")
        assert "start-up health check sent" in w.output
    assert row.status == "SUCCESS", row.traceback
