"""The retention promises of README (*Run history*, *Configuration*): the task
`maintenance.cleanup_old_runs` takes its defaults from RUN_RETENTION_HOURS (24) and
RUN_RETENTION_KEEP_LAST (10), and a busy schedule, one with that many runs since the
cut-off, loses all its older runs without being looked at one by one."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid

import pytest
import time_machine
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django_celery_results.models import TaskResult

from maintenance.tasks import cleanup_old_runs
from tests.processes import ROOT, process_env

pytestmark = pytest.mark.django_db
NOW = dt.datetime(2026, 5, 10, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def run(age: dt.timedelta, schedule: str | None = None, status: str = "SUCCESS") -> int:
    """A finished run's primary key; it finished `age` before NOW (date_done is auto_now)."""
    with time_machine.travel(NOW - age, tick=False):
        created = TaskResult.objects.create(
            task_id=str(uuid.uuid4()), status=status, task_name="t", periodic_task_name=schedule
        )
    return created.pk


def left() -> set[int]:
    return set(TaskResult.objects.values_list("pk", flat=True))


def test_the_defaults_are_24_hours_and_the_newest_10_when_nothing_is_set() -> None:
    """Settings read in a fresh process with neither variable in its environment."""
    env = {k: v for k, v in process_env().items() if not k.startswith("RUN_RETENTION_")}
    code = (
        "import django, json; django.setup(); from django.conf import settings; "
        "print(json.dumps([settings.RUN_RETENTION_HOURS, settings.RUN_RETENTION_KEEP_LAST]))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [24, 10]


@time_machine.travel(NOW, tick=False)
def test_the_task_deletes_by_the_retention_settings_it_is_given() -> None:
    """The task with no arguments applies RUN_RETENTION_HOURS and RUN_RETENTION_KEEP_LAST:
    the suite's defaults (24 h, keep 10), then other values, change what goes."""
    day_and_a_half = run(36 * HOUR)
    two_days_and_a_half = run(60 * HOUR)
    rare = [run(dt.timedelta(days=10 + n), "monthly report") for n in range(12)]  # newest first
    with override_settings(RUN_RETENTION_HOURS=72, RUN_RETENTION_KEEP_LAST=1):
        report = cleanup_old_runs()
    assert report["cutoff"] == (NOW - 72 * HOUR).isoformat()
    assert left() == {day_and_a_half, two_days_and_a_half, rare[0]}
    assert (report["deleted"], report["kept_newest"]) == (11, 1)

    rare += [run(dt.timedelta(days=10 + n), "monthly report") for n in range(1, 12)]  # 11 more, older than rare[0]
    report = cleanup_old_runs()  # the suite's settings: the documented defaults, 24 h and keep 10
    assert report["cutoff"] == (NOW - 24 * HOUR).isoformat()
    kept = left()
    assert day_and_a_half not in kept and two_days_and_a_half not in kept
    assert kept == {rare[0], *rare[12:21]}  # the rare schedule's newest 10 runs
    assert report["kept_newest"] == 10


@time_machine.travel(NOW, tick=False)
@override_settings(RUN_RETENTION_HOURS=24, RUN_RETENTION_KEEP_LAST=3)
def test_a_busy_schedule_loses_its_old_runs_and_is_not_looked_at_one_by_one() -> None:
    """keep_last 3. `busy sync` ran 3 times since the cut-off: its newest 3 are recent, so
    all its older runs go, and no query reads its newest runs. `quiet sync` ran once since:
    its 2 newest older runs stay to make up its 3."""
    busy_recent = [run(n * HOUR, "busy sync") for n in (1, 2, 3)]
    busy_old = [run((30 + n) * HOUR, "busy sync") for n in range(4)]
    quiet_recent = run(2 * HOUR, "quiet sync")
    quiet_old = [run((30 + n) * HOUR, "quiet sync") for n in range(4)]  # newest first
    with CaptureQueriesContext(connection) as queries:
        report = cleanup_old_runs()
    assert left() == {*busy_recent, quiet_recent, *quiet_old[:2]}
    assert set(busy_old).isdisjoint(left())
    assert (report["deleted"], report["kept_newest"]) == (4 + 2, 2)
    newest_of = [q["sql"] for q in queries.captured_queries if "ORDER BY" in q["sql"] and "LIMIT 3" in q["sql"]]
    assert len(newest_of) == 1 and "quiet sync" in newest_of[0], newest_of  # the quiet schedule only
