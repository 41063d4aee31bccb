"""The API fuzzed against its OpenAPI schema (schemathesis, in-process through Django's
WSGI handler): whatever a client sends, the answer is never a server error, and every 4xx
answer is JSON. The schema is the one /api/schema/ serves, generated the same way here at
collection time (no database then; `test_api` checks the served one).

Every call that names an object names one that exists (the schedule "fuzz target" and a
finished run), so the bodies reach the serializers, the services and the audit log instead
of a 404. The examples are derandomised: the same ones each run, so a failure reproduces.
Run now and retry queue real messages here; tests/conftest.py deletes what a test queued."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core.handlers.wsgi import WSGIHandler
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from rest_framework.utils.encoders import JSONEncoder
from schemathesis.checks import not_a_server_error
from schemathesis.core.transport import Response

pytestmark = pytest.mark.django_db(transaction=True)
TOKEN = "fuzz-token-of-a-staff-superuser"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))  # per operation; raise it for a longer hunt


def served_schema() -> dict[str, Any]:
    generator = SchemaGenerator()  # type: ignore[no-untyped-call]  # drf-spectacular: SchemaGenerator is not annotated
    spec = generator.get_schema(request=None, public=True)  # type: ignore[no-untyped-call]  # drf-spectacular: untyped
    served: dict[str, Any] = json.loads(json.dumps(spec, cls=JSONEncoder))  # JSON of an OpenAPI document: a dict
    return served


schema = schemathesis.openapi.from_dict(served_schema())
schema.app = WSGIHandler()  # calls go through Django in-process, as from_wsgi would


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_it_never_answers_bad_input_with_a_server_error(case: schemathesis.Case[Any]) -> None:
    user, _ = User.objects.get_or_create(username="fuzzer", defaults={"is_staff": True, "is_superuser": True})
    Token.objects.get_or_create(user=user, key=TOKEN)
    if "{id}" in case.path:
        target = finished_run() if case.path.startswith("/api/runs/") else fuzz_target()
        case.path_parameters = {**(case.path_parameters or {}), "id": str(target.pk)}
    response = case.call(headers={"Authorization": f"Token {TOKEN}"})
    case.validate_response(response, checks=[not_a_server_error])
    if 400 <= response.status_code < 500:
        assert "json" in content_type(response), (response.status_code, response.text)


def fuzz_target() -> PeriodicTask:
    """The schedule every call aims at (made again when an example deleted it)."""
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    task, _ = PeriodicTask.objects.get_or_create(
        name="fuzz target", defaults={"task": "maintenance.log_statistics", "interval": every}
    )
    return task


def finished_run() -> TaskResult:
    """A run that ended (so retry queues a new one and revoke refuses), of the fuzz target."""
    run = TaskResult.objects.filter(periodic_task_name="fuzz target", status="FAILURE").first()
    if run is None:
        run = TaskResult.objects.create(
            task_id=str(uuid.uuid4()), task_name="maintenance.log_statistics", status="FAILURE",
            periodic_task_name=fuzz_target().name, task_args=json.dumps("[]"), task_kwargs=json.dumps("{}"),
        )  # fmt: skip
    return run


def content_type(response: Response) -> str:
    headers = {name.lower(): value for name, value in response.headers.items()}
    value = headers.get("content-type", "")
    return value[0] if isinstance(value, list) else value
