"""Issue 18 at the API: /api/pools/ (CRUD by name, the admin's form's checks, a name that never
changes, a pool in use kept with a 409 naming its users, the audit trail, what it holds now),
and a schedule's pool in its policy (refused when unknown, sent in beat's and run now's header).
Bad input is refused with what is allowed, and writes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django_celery_beat.models import PeriodicTask

from scheduler_app.models import AuditEntry, Pool, SchedulePolicy
from scheduler_app.runs import pools
from tests import tasks  # noqa: F401  (registers tests.pooled_by_default, which joins tests-exports)
from tests.api.test_api import TASK, token_client

pytestmark = pytest.mark.django_db
HOURLY = {"name": "exports hourly", "task": TASK, "kind": "interval", "every": 1, "period": "hours"}


@pytest.fixture
def api() -> Client:
    return token_client(User.objects.create_superuser("boss", password="x"))


def send(client: Client, method: str, url: str, data: Any) -> Any:
    return getattr(client, method)(url, json.dumps(data), content_type="application/json")


def test_it_creates_reads_changes_and_deletes_a_pool_by_name_in_the_audit_trail(
    api: Client, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        made = send(api, "post", "/api/pools/", {"name": "exports", "size": 2, "rate": "60/m"})
    assert made.status_code == 201, made.content
    body = made.json()
    assert {k: body[k] for k in ("name", "size", "lease", "rate", "description")} == {
        "name": "exports", "size": 2, "lease": 60, "rate": "60/m", "description": ""}  # fmt: skip
    assert body["now"] == {"in_use": 0, "holders": [], "waiting": [], "error": ""}
    assert pools.definition("exports") == pools.PoolSpec("exports", 2, 60, "60/m")  # published for the workers
    with django_capture_on_commit_callbacks(execute=True):
        changed = send(api, "patch", "/api/pools/exports/", {"size": 3, "description": "the partner's export API"})
    assert changed.status_code == 200, changed.content
    assert changed.json()["size"] == 3 and pools.definition("exports") == pools.PoolSpec("exports", 3, 60, "60/m")
    assert [pool["name"] for pool in api.get("/api/pools/").json()] == ["exports"]
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete("/api/pools/exports/").status_code == 204
    assert not Pool.objects.exists() and pools.definition("exports") is None
    trail = list(AuditEntry.objects.filter(object_type="pool").order_by("pk"))
    assert [(e.action, e.via) for e in trail] == [("create", "api"), ("update", "api"), ("delete", "api")]
    assert trail[1].changes == {"size": [2, 3], "description": ["", "the partner's export API"]}


def test_it_shows_the_runs_holding_a_slot_and_those_waiting_in_order(api: Client, key: str) -> None:
    Pool.objects.create(name=key, size=1)
    spec = pools.definition(key)
    assert spec is not None
    holder, first, second = (pools.PoolSlot(spec, run) for run in ("run-a", "run-b", "run-c"))
    try:
        assert holder.acquire().admitted and not first.acquire().admitted and not second.acquire().admitted
        now = api.get(f"/api/pools/{key}/").json()["now"]
    finally:
        holder.release()
    assert now["in_use"] == 1 and [h["task_id"] for h in now["holders"]] == ["run-a"]
    assert [(w["position"], w["task_id"]) for w in now["waiting"]] == [(1, "run-b"), (2, "run-c")]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"name": "exports!", "size": 2}, "name", "letters, digits, '_', '.' and '-'"),
        ({"name": "", "size": 2}, "name", "This field may not be blank."),
        ({"name": "exports", "size": 0}, "size", "greater than or equal to 1"),
        ({"name": "exports", "size": 10_001}, "size", "less than or equal to 10000"),
        ({"name": "exports", "size": "two"}, "size", "A valid integer is required."),
        ({"name": "exports", "size": 2, "lease": 1}, "lease", "greater than or equal to 3"),
        ({"name": "exports", "size": 2, "rate": "fast"}, "rate", "use a count per unit: 60/m, 5/s"),
        ({"name": "exports", "size": 2, "rate": "0/m"}, "rate", "allows no run"),
        ({"name": "exports", "size": 2, "sise": 3}, "sise", "unknown field; the fields taken here are"),
        ({"size": 2}, "name", "This field is required."),
    ],
)
def test_it_refuses_a_bad_pool_saying_what_is_allowed_and_writes_nothing(
    api: Client, body: dict[str, Any], field: str, words: str
) -> None:
    answer = send(api, "post", "/api/pools/", body)
    assert answer.status_code == 400, answer.content
    assert words in " ".join(answer.json()[field])
    assert not Pool.objects.exists() and not AuditEntry.objects.exists()


def test_a_pools_name_never_changes_and_a_taken_name_is_refused(api: Client) -> None:
    Pool.objects.create(name="exports", size=2)
    renamed = send(api, "patch", "/api/pools/exports/", {"name": "reports"})
    assert renamed.status_code == 400
    assert "A pool's name cannot change" in renamed.json()["name"][0]
    again = send(api, "post", "/api/pools/", {"name": "exports", "size": 1})
    assert again.status_code == 400 and "already exists" in again.json()["name"][0]
    assert list(Pool.objects.values_list("name", "size")) == [("exports", 2)]
    assert api.get("/api/pools/nothing/").status_code == 404


def test_a_pool_a_schedule_uses_is_kept_with_a_409_naming_the_schedule(api: Client) -> None:
    Pool.objects.create(name="exports", size=2)
    made = send(api, "post", "/api/schedules/", {**HOURLY, "policy": {"pool": "exports", "pool_full": "skip"}})
    assert made.status_code == 201, made.content
    assert made.json()["policy"]["pool"] == "exports" and made.json()["policy"]["pool_full"] == "skip"
    assert api.get("/api/pools/exports/").json()["schedules"] == ["exports hourly"]
    kept = api.delete("/api/pools/exports/")
    assert kept.status_code == 409
    assert kept.json()["detail"].startswith("Pool exports is used by the schedules exports hourly; take them out")
    assert Pool.objects.filter(name="exports").exists()


def test_a_pool_a_task_joins_by_default_is_kept_too(api: Client) -> None:
    Pool.objects.create(name="tests-exports", size=1)  # tests.pooled_by_default declares it
    body = api.get("/api/pools/tests-exports/").json()
    assert body["tasks"] == ["tests.pooled_by_default"]
    kept = api.delete("/api/pools/tests-exports/")
    assert (
        kept.status_code == 409
        and "the tasks tests.pooled_by_default (by default, in their code)" in kept.json()["detail"]
    )


def test_a_schedule_naming_a_pool_that_does_not_exist_is_refused_and_nothing_written(api: Client) -> None:
    answer = send(api, "post", "/api/schedules/", {**HOURLY, "policy": {"pool": "nope"}})
    assert answer.status_code == 400
    assert "Object with name=nope does not exist." in json.dumps(answer.json())
    assert not PeriodicTask.objects.filter(name="exports hourly").exists()
    bad_rule = send(api, "post", "/api/schedules/", {**HOURLY, "policy": {"pool_full": "queue"}})
    assert bad_rule.status_code == 400 and bad_rule.json()["policy"]["pool_full"] == ['"queue" is not a valid choice.']


def test_run_now_sends_the_schedules_pool_in_the_runs_header(api: Client) -> None:
    Pool.objects.create(name="exports", size=2)
    made = send(api, "post", "/api/schedules/", {**HOURLY, "policy": {"pool": "exports"}}).json()
    policy = SchedulePolicy.objects.get(periodic_task_id=made["id"])
    assert policy.overrides() == {"pool": "exports"}  # what beat and run now send as the header's policy
    cleared = send(api, "patch", f"/api/schedules/{made['id']}/", {"policy": {"pool": None}})
    assert cleared.status_code == 200 and cleared.json()["policy"]["pool"] is None


def test_an_operator_runs_a_schedule_as_it_is_and_other_arguments_need_the_editors_permission(key: str) -> None:
    from tests.roles_kit import person

    operator = token_client(person("operator"))
    task = PeriodicTask.objects.create(name="nightly", task=TASK, interval=pools_interval())
    refused = send(operator, "post", f"/api/schedules/{task.pk}/run/", {"kwargs": {"max_age_hours": 0}})
    assert refused.status_code == 403
    assert refused.json()["detail"].startswith("Running with other kwargs needs the permission to change")
    assert not AuditEntry.objects.filter(action="run").exists()
    assert send(operator, "post", f"/api/schedules/{task.pk}/run/", {}).status_code == 202


def pools_interval() -> Any:
    from django_celery_beat.models import IntervalSchedule

    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    return every
