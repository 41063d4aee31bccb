"""cleanup_old_runs on real TaskResult rows."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import time_machine
from django_celery_results.models import TaskResult

from maintenance.runs import cleanup_old_runs

pytestmark = pytest.mark.django_db
NOW = dt.datetime(2026, 5, 10, 12, 0, tzinfo=dt.UTC)
OLD_TERMINAL = ["SUCCESS", "FAILURE", "REVOKED", "SKIPPED", "EXPIRED"]
OLD_UNFINISHED = ["STARTED", "PENDING", "RETRY", "PROGRESS"]


def run(status: str, finished: dt.datetime, schedule: str | None = None) -> TaskResult:
    with time_machine.travel(finished, tick=False):  # date_done is auto_now
        return TaskResult.objects.create(
            task_id=str(uuid.uuid4()), status=status, task_name="t", periodic_task_name=schedule
        )


@time_machine.travel(NOW, tick=False)
def test_it_deletes_finished_runs_older_than_the_cutoff_in_batches() -> None:
    for status in OLD_TERMINAL + OLD_UNFINISHED:
        run(status, NOW - dt.timedelta(days=3))
    recent = run("SUCCESS", NOW - dt.timedelta(hours=23))
    report = cleanup_old_runs(dt.timedelta(hours=24), batch_size=2)
    assert report == {"deleted": 5, "kept_newest": 0, "batches": 3, "cutoff": "2026-05-09T12:00:00+00:00"}
    left = set(TaskResult.objects.values_list("status", flat=True))
    assert left == set(OLD_UNFINISHED) | {"SUCCESS"}
    assert TaskResult.objects.filter(pk=recent.pk).exists()


@time_machine.travel(NOW, tick=False)
def test_it_finds_nothing_the_second_time() -> None:
    run("FAILURE", NOW - dt.timedelta(days=2))
    assert cleanup_old_runs(dt.timedelta(hours=24))["deleted"] == 1
    assert cleanup_old_runs(dt.timedelta(hours=24))["deleted"] == 0


@time_machine.travel(NOW, tick=False)
def test_it_never_touches_a_run_that_is_still_going() -> None:
    for status in OLD_UNFINISHED:
        run(status, NOW - dt.timedelta(days=400))
    assert cleanup_old_runs(dt.timedelta(0))["deleted"] == 0
    assert TaskResult.objects.count() == len(OLD_UNFINISHED)


@time_machine.travel(NOW, tick=False)
def test_it_keeps_the_newest_runs_of_every_schedule_however_old() -> None:
    weekly = [run("SUCCESS", NOW - dt.timedelta(weeks=w), "weekly report") for w in range(1, 6)]
    hourly = [run("SUCCESS", NOW - dt.timedelta(hours=30 + h), "hourly sync") for h in range(6)]
    report = cleanup_old_runs(dt.timedelta(hours=24), keep_last=3, batch_size=2)
    left = set(TaskResult.objects.values_list("pk", flat=True))
    assert left == {r.pk for r in weekly[:3]} | {r.pk for r in hourly[:3]}
    assert (report["deleted"], report["kept_newest"]) == (5, 6)
    assert cleanup_old_runs(dt.timedelta(hours=24), keep_last=3)["deleted"] == 0
