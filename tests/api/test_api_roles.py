"""The seeded roles in the API (issue 18): a staff user with no role, a Viewer, an Operator, an
Editor and a superuser against every endpoint and action of /api/. What one may do answers its
success (200, 201, 202, 204) and, for a write, changes what it says; what one may not answers
403 and writes and queues nothing (the schedules, runs, calendars, backfills, audit entries and
dead letters are compared before and after). The endpoints come from the URL conf: one added
without an expectation here fails `test_every_api_route_and_action_has_an_expectation`. Real
database and broker (run now and the retries queue on it); no worker runs here."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult
from rest_framework.authtoken.models import Token

from scheduler_app import audit
from scheduler_app.models import AuditEntry, Backfill, BusinessCalendar, Pool, ScheduleVersion
from scheduler_app.runs import dead_letters
from tests.hardening.test_dead_letters import letter
from tests.roles_kit import PEOPLE, may, person

pytestmark = pytest.mark.django_db(transaction=True)
TASK = "maintenance.purge_expired_sessions"
HOUR = dt.timedelta(hours=1)
SCHEDULE = {"name": "made", "task": TASK, "kind": "interval", "every": 2, "period": "hours"}
CALENDAR = {"name": "Berlin office", "timezone": "Europe/Berlin", "weekdays": "mon,tue,wed,thu,fri"}


@dataclass(frozen=True)
class Call:
    """One endpoint's action: the route's name and action (None: an APIView), how it is called,
    and the least of PEOPLE who may (None: nobody)."""

    route: str
    action: str | None
    method: str
    path: str
    needed: str | None
    body: Any = None
    writes: bool = False


def at(moment: dt.datetime) -> str:
    return moment.isoformat()


CALLS = [
    Call("api-index", None, "get", "/api/", "nobody"),
    Call("api-schema", None, "get", "/api/schema/", "nobody"),
    Call("api-docs", None, "get", "/api/docs/", "nobody"),
    Call("api-redoc", None, "get", "/api/redoc/", "nobody"),
    Call("api-tasks", None, "get", "/api/tasks/", "viewer"),
    Call("api-stats", None, "get", "/api/stats/", "viewer"),
    Call("schedule-list", "list", "get", "/api/schedules/", "viewer"),
    Call("schedule-detail", "retrieve", "get", "/api/schedules/{schedule}/", "viewer"),
    Call("schedule-next-runs", "next_runs", "get", "/api/schedules/{schedule}/next-runs/", "viewer"),
    Call("schedule-incidents", "incidents", "get", "/api/schedules/{schedule}/incidents/", "viewer"),
    Call("schedule-versions", "versions", "get", "/api/schedules/{schedule}/versions/", "viewer"),
    Call("schedule-version", "version", "get", "/api/schedules/{schedule}/versions/1/", "viewer"),
    Call(
        "schedule-version-restore",
        "restore",
        "post",
        "/api/schedules/{schedule}/versions/1/restore/",
        "editor",
        {},
        True,
    ),  # fmt: skip
    Call("schedule-preview-new", "preview_new", "post", "/api/schedules/preview/", "viewer", SCHEDULE),
    Call("schedule-preview", "preview", "post", "/api/schedules/{schedule}/preview/", "viewer", {"every": 3}),
    Call("schedule-list", "create", "post", "/api/schedules/", "editor", SCHEDULE, True),
    Call("schedule-detail", "update", "put", "/api/schedules/{schedule}/", "editor", SCHEDULE, True),
    Call(
        "schedule-detail",
        "partial_update",
        "patch",
        "/api/schedules/{schedule}/",
        "editor",
        {"description": "changed"},
        True,
    ),  # fmt: skip
    Call("schedule-detail", "destroy", "delete", "/api/schedules/{schedule}/", "editor", None, True),
    Call("schedule-run", "run", "post", "/api/schedules/{schedule}/run/", "operator", {}, True),
    # Other arguments than the schedule's are a change of what runs: an Editor's.
    Call("schedule-run", "run", "post", "/api/schedules/{schedule}/run/", "editor", {"args": []}, True),
    Call("schedule-pause", "pause", "post", "/api/schedules/{schedule}/pause/", "operator", {"note": "n"}, True),
    Call("schedule-resume", "resume", "post", "/api/schedules/{paused}/resume/", "operator", {}, True),
    Call(
        "api-schedule-backfill",
        None,
        "post",
        "/api/schedules/{schedule}/backfill/",
        "operator",
        {"from": "{start}", "to": "{end}"},
        True,
    ),  # fmt: skip
    Call("run-list", "list", "get", "/api/runs/", "viewer"),
    Call("run-detail", "retrieve", "get", "/api/runs/{failed}/", "viewer"),
    Call("run-retry", "retry", "post", "/api/runs/{failed}/retry/", "operator", {}, True),
    Call("run-revoke", "revoke", "post", "/api/runs/{pending}/revoke/", "operator", {}, True),
    Call("dead-letter-list", "list", "get", "/api/dead-letters/", "viewer"),
    Call("dead-letter-detail", "retrieve", "get", "/api/dead-letters/{letter}/", "viewer"),
    Call("dead-letter-retry", "retry", "post", "/api/dead-letters/{letter}/retry/", "operator", {}, True),
    Call("dead-letter-discard", "discard", "post", "/api/dead-letters/{letter}/discard/", "operator", {}, True),
    Call("backfill-list", "list", "get", "/api/backfills/", "viewer"),
    Call("backfill-detail", "retrieve", "get", "/api/backfills/{backfill}/", "viewer"),
    Call("backfill-cancel", "cancel", "post", "/api/backfills/{backfill}/cancel/", "operator", {}, True),
    Call("calendar-list", "list", "get", "/api/calendars/", "viewer"),
    Call("calendar-detail", "retrieve", "get", "/api/calendars/{calendar}/", "viewer"),
    Call("calendar-list", "create", "post", "/api/calendars/", "editor", CALENDAR, True),
    Call("calendar-detail", "update", "put", "/api/calendars/{calendar}/", "editor", CALENDAR, True),
    Call(
        "calendar-detail",
        "partial_update",
        "patch",
        "/api/calendars/{calendar}/",
        "editor",
        {"description": "changed"},
        True,
    ),  # fmt: skip
    Call("calendar-detail", "destroy", "delete", "/api/calendars/{calendar}/", "editor", None, True),
    Call("pool-list", "list", "get", "/api/pools/", "viewer"),
    Call("pool-detail", "retrieve", "get", "/api/pools/{pool}/", "viewer"),
    Call("pool-list", "create", "post", "/api/pools/", "editor", {"name": "reports", "size": 1}, True),
    Call("pool-detail", "update", "put", "/api/pools/{pool}/", "editor", {"name": "exports", "size": 3}, True),
    Call("pool-detail", "partial_update", "patch", "/api/pools/{pool}/", "editor", {"size": 4}, True),
    Call("pool-detail", "destroy", "delete", "/api/pools/{pool}/", "editor", None, True),
]


def world(key: str) -> dict[str, Any]:
    """Something for each endpoint to act on; the ids its paths take."""
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    task = PeriodicTask.objects.create(name="nightly", task=TASK, interval=every)
    paused = PeriodicTask.objects.create(name="paused", task=TASK, interval=every, enabled=False)
    long_ago = timezone.now() - 30 * HOUR  # backfilled slots lie before beat's own
    PeriodicTask.objects.filter(pk=task.pk).update(date_changed=long_ago, last_run_at=long_ago)
    audit.record(None, "create", task, via="command")  # version 1 ...
    PeriodicTask.objects.filter(pk=task.pk).update(description="since version 1")
    audit.record(None, "update", task, via="command")  # ... and 2: restoring 1 writes
    failed = TaskResult.objects.create(task_id=str(uuid.uuid4()), task_name=TASK, status="FAILURE",
                                       task_args=json.dumps("[]"), task_kwargs=json.dumps("{}"))  # fmt: skip
    pending = TaskResult.objects.create(task_id=str(uuid.uuid4()), task_name=TASK, status="PENDING",
                                        meta=json.dumps({"trigger": "manual"}))  # fmt: skip
    now = timezone.now()
    backfill = Backfill.objects.create(periodic_task=task, schedule_name=task.name, start=now - 5 * HOUR,
                                       end=now - 4 * HOUR)  # fmt: skip
    calendar = BusinessCalendar.objects.create(name="office")
    Pool.objects.create(name="exports", size=2)
    return {"pool": "exports", "schedule": task.pk, "paused": paused.pk, "failed": failed.pk, "pending": pending.pk,
            "letter": letter(key).id, "backfill": backfill.pk, "calendar": calendar.pk,
            "start": at(now.replace(minute=0, second=0, microsecond=0) - 6 * HOUR),
            "end": at(now.replace(minute=0, second=0, microsecond=0) - 3 * HOUR)}  # fmt: skip


def state() -> tuple[Any, ...]:
    """What a call could write or queue."""
    return (
        list(PeriodicTask.objects.order_by("pk").values_list("pk", "name", "enabled", "description", "interval_id")),
        ScheduleVersion.objects.count(),
        list(TaskResult.objects.order_by("pk").values_list("pk", "status", "meta")),
        list(BusinessCalendar.objects.order_by("pk").values_list("pk", "name", "description", "weekdays")),
        list(Backfill.objects.order_by("pk").values_list("pk", "state")),
        list(Pool.objects.order_by("pk").values_list("pk", "name", "size")),
        AuditEntry.objects.count(),
        dead_letters.count(),
    )


def filled(value: Any, found: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        return {name: filled(item, found) for name, item in value.items()}
    return value.format(**found) if isinstance(value, str) and value.startswith("{") else value


def api_as(who: str) -> Client:
    user = person(who)
    client = Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    client.force_login(user)  # the docs pages are for a signed-in browser (the console's session)
    return client


@pytest.mark.parametrize("who", PEOPLE)
@pytest.mark.parametrize("call", CALLS, ids=[f"{c.route}:{c.action or c.method}" for c in CALLS])
def test_each_endpoint_does_what_the_role_allows_and_nothing_for_the_rest(who: str, call: Call, key: str) -> None:
    client = api_as(who)
    found = world(key)
    before = state()
    body = filled(call.body, found)
    kwargs = {"data": json.dumps(body), "content_type": "application/json"} if body is not None else {}
    response = getattr(client, call.method)(call.path.format(**found), **kwargs)
    if may(who, call.needed):
        assert response.status_code in (200, 201, 202, 204), (who, call, response.content[:500])
        assert (state() != before) == call.writes, (who, call)
    else:
        assert response.status_code == 403, (who, call, response.status_code)
        assert state() == before


def api_routes() -> set[tuple[str, str | None]]:
    """(route name, action) of every endpoint under /api/: a viewset's route once per action."""
    found: set[tuple[str, str | None]] = set()

    def walk(patterns: list[URLPattern | URLResolver], prefix: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif prefix.startswith("api/") and pattern.name:
                actions = getattr(pattern.callback, "actions", None)
                found.update((pattern.name, action) for action in actions.values()) if actions else found.add(
                    (pattern.name, None)
                )

    walk(get_resolver().url_patterns, "")
    return found


def test_every_api_route_and_action_has_an_expectation() -> None:
    assert api_routes() == {(call.route, call.action) for call in CALLS}
