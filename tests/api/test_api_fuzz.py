"""The API fuzzed against its OpenAPI schema (schemathesis, in-process through Django's
WSGI handler): whatever a client sends, the answer is never a server error, and every 4xx
answer is JSON. The schema is the one /api/schema/ serves, generated the same way here at
collection time (no database then; `test_api` checks the served one)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core.handlers.wsgi import WSGIHandler
from django_celery_beat.models import IntervalSchedule, PeriodicTask
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
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_it_never_answers_bad_input_with_a_server_error(case: schemathesis.Case[Any]) -> None:
    user, _ = User.objects.get_or_create(username="fuzzer", defaults={"is_staff": True, "is_superuser": True})
    Token.objects.get_or_create(user=user, key=TOKEN)
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    PeriodicTask.objects.get_or_create(name="fuzz target", defaults={"task": "maintenance.log_statistics",
                                                                     "interval": every})  # fmt: skip
    response = case.call(headers={"Authorization": f"Token {TOKEN}"})
    case.validate_response(response, checks=[not_a_server_error])
    if 400 <= response.status_code < 500:
        assert "json" in content_type(response), (response.status_code, response.text)


def content_type(response: Response) -> str:
    headers = {name.lower(): value for name, value in response.headers.items()}
    value = headers.get("content-type", "")
    return value[0] if isinstance(value, list) else value
