"""log_statistics and purge_expired_sessions on real rows."""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid

import pytest
import time_machine
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django_celery_results.models import TaskResult

from maintenance.sessions import purge_expired_sessions
from maintenance.statistics import log_statistics

pytestmark = pytest.mark.django_db
NOW = dt.datetime(2026, 5, 10, 12, 0, tzinfo=dt.UTC)


def run(status: str, finished: dt.datetime) -> None:
    with time_machine.travel(finished, tick=False):
        TaskResult.objects.create(task_id=str(uuid.uuid4()), status=status, task_name="t")


@time_machine.travel(NOW, tick=False)
def test_it_logs_one_structured_line_of_statistics(caplog: pytest.LogCaptureFixture) -> None:
    for minutes, status in [(1, "SUCCESS"), (5, "SUCCESS"), (10, "FAILURE"), (20, "SUCCESS")]:
        run(status, NOW - dt.timedelta(minutes=minutes))
    with caplog.at_level(logging.INFO, logger="maintenance.statistics"):
        stats = log_statistics(
            dt.timedelta(minutes=15), queue_depths={"celery": 2}, workers=["w@a"], host={"cpu_percent": 1.0}
        )
    assert stats["runs_by_status"] == {"FAILURE": 1, "SUCCESS": 2}
    (record,) = caplog.records
    prefix, payload = record.getMessage().split(" ", 1)
    assert prefix == "beatkeeper.statistics"
    assert json.loads(payload) == {**stats, "timestamp": NOW.isoformat()}
    assert (stats["workers"], stats["queue_depths"], stats["window_seconds"]) == (1, {"celery": 2}, 900)


def test_it_purges_only_expired_sessions() -> None:
    with time_machine.travel(dt.datetime.now(dt.UTC) - dt.timedelta(days=30)):
        old = SessionStore()
        old.set_expiry(60)
        old.create()
    current = SessionStore()
    current.create()
    assert purge_expired_sessions() == {"deleted": 1}
    assert list(Session.objects.values_list("session_key", flat=True)) == [current.session_key]
