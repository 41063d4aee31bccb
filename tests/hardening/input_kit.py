"""What the input batteries share: a staff API client and admin client, a schedule and a
finished run to aim at, and the proof that a refusal wrote and queued nothing."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.test import Client
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult
from rest_framework.authtoken.models import Token

from scheduler_app import broker
from scheduler_app.models import AuditEntry

TASK = "maintenance.purge_expired_sessions"
SCHEDULES = "/admin/django_celery_beat/periodictask/"


def deep(levels: int) -> Any:
    """A JSON list nested `levels` deep, built without recursion."""
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def deep_text(levels: int) -> str:
    return "[" * levels + "]" * levels


def staff_clients() -> tuple[Client, Client]:
    boss = User.objects.create_superuser("boss", password="x")
    api = Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=boss).key}")
    admin = Client()
    admin.force_login(boss)
    return api, admin


def send(client: Client, method: str, url: str, data: Any) -> Any:
    body = data if isinstance(data, str) else json.dumps(data)
    return getattr(client, method)(url, body, content_type="application/json")


def interval_schedule(name: str = "every hour", **fields: Any) -> PeriodicTask:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    return PeriodicTask.objects.create(name=name, task=TASK, interval=every, **fields)


def finished_run(**fields: Any) -> TaskResult:
    fields = {"task_args": json.dumps("[]"), "task_kwargs": json.dumps("{}"), **fields}
    return TaskResult.objects.create(task_id=str(uuid.uuid4()), task_name=TASK, status="FAILURE", **fields)


@dataclass(frozen=True)
class Counts:
    schedules: int
    audit: int
    runs: int
    queued: int
    changed: str


def counts() -> Counts:
    """What a refused input must leave as it was: schedules (and when each last changed),
    audit entries, run rows and messages waiting in the broker."""
    changed = ",".join(str(t.date_changed) + str(t.enabled) for t in PeriodicTask.objects.order_by("pk"))
    return Counts(PeriodicTask.objects.count(), AuditEntry.objects.count(), TaskResult.objects.count(),
                  sum(broker.queue_depths().values()), changed)  # fmt: skip


def admin_form(**changes: Any) -> dict[str, Any]:
    """The admin's schedule page as a browser posts it: every kind's fields, at their defaults."""
    data = {
        "name": "nightly report", "task": TASK, "description": "", "kind": "crontab", "minute": "30", "hour": "2",
        "day_of_month": "*", "month_of_year": "*", "day_of_week": "*", "cron_timezone": "UTC",
        "every": "", "period": "minutes", "clocked_time_0": "", "clocked_time_1": "", "solar_event": "",
        "latitude": "", "longitude": "", "args": "[]", "kwargs": "{}", "headers": "{}", "enabled": "on",
        "queue": "", "priority": "", "expires_0": "", "expires_1": "", "expire_seconds": "",
        "start_time_0": "", "start_time_1": "",
        "policy-TOTAL_FORMS": "1", "policy-INITIAL_FORMS": "0", "policy-MIN_NUM_FORMS": "0",
        "policy-MAX_NUM_FORMS": "1", "policy-0-overlap": "skip",
    }  # fmt: skip
    data.update(changes)
    return data


def form_errors(response: Any) -> dict[str, list[str]]:
    """The admin form's errors by field (the page is shown again with them)."""
    assert response.status_code == 200, response.status_code
    form = response.context["adminform"].form
    return {field: list(errors) for field, errors in form.errors.items()}
