"""JSON at every door: too deep, too large, or with a NUL character, is a 4xx (or a form
error) naming the field and the limit, and nothing is written or queued (issue 14, 2-3)."""

from __future__ import annotations

import json
import time
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django_celery_beat.models import PeriodicTask

from scheduler_app import limits
from scheduler_app.models import AuditEntry
from tests.hardening.input_kit import (
    SCHEDULES,
    TASK,
    admin_form,
    counts,
    deep,
    deep_text,
    finished_run,
    form_errors,
    interval_schedule,
    send,
)

pytestmark = pytest.mark.django_db(transaction=True)
CREATE = {"name": "n", "task": TASK, "kind": "interval", "every": 5, "period": "minutes"}


BAD_VALUES = [
    ("args", deep(500), "nested 500 levels deep; at most 32"),
    ("args", deep(40), "nested 40 levels deep; at most 32"),
    ("kwargs", {"x": deep(600)}, "at most 32"),
    ("args", ["x" * (limits.MAX_JSON_BYTES + 10)], "at most 65,536 bytes"),
    ("headers", {"h": "x" * (limits.MAX_HEADERS_BYTES + 10)}, "at most 8,192 bytes"),
    ("args", ["a\x00b"], "NUL"),
    ("kwargs", {"k\x00": 1}, "NUL"),
    ("kwargs", {"k": {"deeper": ["\x00"]}}, "NUL"),
    ("headers", {"team": "o\x00ps"}, "NUL"),
]


@pytest.mark.parametrize(("field", "value", "says"), BAD_VALUES)
def test_it_refuses_bad_json_when_a_schedule_is_created_through_the_api(
    api: Client, field: str, value: Any, says: str
) -> None:
    before = counts()
    response = send(api, "post", "/api/schedules/", {**CREATE, field: value})
    assert response.status_code == 400, response.content
    assert field in response.content.decode() and says in response.content.decode()
    assert counts() == before


@pytest.mark.parametrize(("field", "value", "says"), BAD_VALUES)
def test_it_refuses_bad_json_when_a_schedule_is_changed_through_the_api(
    api: Client, field: str, value: Any, says: str
) -> None:
    task = interval_schedule()
    before = counts()
    response = send(api, "patch", f"/api/schedules/{task.pk}/", {field: value})
    assert response.status_code == 400, response.content
    assert field in response.content.decode() and says in response.content.decode()
    assert counts() == before


@pytest.mark.parametrize(("field", "value", "says"), [v for v in BAD_VALUES if v[0] != "headers"])
def test_it_refuses_bad_arguments_for_a_run_now_before_anything_is_queued(
    api: Client, field: str, value: Any, says: str
) -> None:
    task = interval_schedule()
    before = counts()
    response = send(api, "post", f"/api/schedules/{task.pk}/run/", {field: value})
    assert response.status_code == 400, response.content
    assert field in response.content.decode() and says in response.content.decode()
    assert counts() == before


def test_it_answers_a_body_too_deep_for_the_parser_with_a_400_naming_the_field(api: Client) -> None:
    before = counts()
    body = json.dumps(CREATE)[:-1] + ', "args": ' + deep_text(100_000) + "}"
    response = send(api, "post", "/api/schedules/", body)
    assert response.status_code == 400
    assert response.json() == {"detail": "args: nested 100,000 levels deep; at most 32 are allowed."}
    assert counts() == before


def test_it_refuses_a_pause_note_with_a_nul_character_through_the_api(api: Client) -> None:
    task = interval_schedule()
    before = counts()
    response = send(api, "post", f"/api/schedules/{task.pk}/pause/", {"note": "why\x00"})
    assert response.status_code == 400 and "note" in response.json()
    assert counts() == before


@pytest.mark.parametrize(
    ("field", "text", "says"),
    [
        ("args", deep_text(500), "nested 500 levels deep; at most 32"),
        ("kwargs", '{"x": ' + deep_text(40) + "}", "at most 32"),
        ("args", json.dumps(["x" * (limits.MAX_JSON_BYTES + 1)]), "at most 65,536 bytes"),
        ("headers", json.dumps({"h": "x" * limits.MAX_HEADERS_BYTES}), "at most 8,192 bytes"),
        ("args", '["a\\u0000b"]', "NUL"),
        ("kwargs", '{"k\\u0000": 1}', "NUL"),
        ("headers", '{"team": "\\u0000"}', "NUL"),
        ("args", "[\x00]", "Null characters are not allowed"),
    ],
)
def test_it_refuses_bad_json_in_the_admin_form(admin: Client, field: str, text: str, says: str) -> None:
    before = counts()
    errors = form_errors(admin.post(SCHEDULES + "add/", admin_form(**{field: text})))
    assert says in " ".join(errors[field])
    assert counts() == before


def test_the_admin_preview_of_deep_json_is_no_server_error(admin: Client) -> None:
    response = admin.get(SCHEDULES + "preview/", {**admin_form(), "args": deep_text(5000)})
    assert response.status_code == 200


def test_it_refuses_a_pause_note_with_a_nul_character_in_the_admin(admin: Client) -> None:
    task = interval_schedule(enabled=True)
    before = counts()
    response = admin.post(f"{SCHEDULES}{task.pk}/do/pause/", {"note": "why\x00"}, follow=True)
    assert "note: contains a nul character" in response.content.decode().lower()  # the admin capitalises messages
    response = admin.post(SCHEDULES, {"action": "pause", "_selected_action": [task.pk], "note": "x\x00"}, follow=True)
    assert "note: contains a nul character" in response.content.decode().lower()
    assert counts() == before
    assert PeriodicTask.objects.get(pk=task.pk).enabled


@pytest.mark.parametrize(
    ("stored", "says"),
    [(deep_text(500), "nested 500 levels deep"), ('["\\u0000"]', "NUL"), (deep_text(40), "at most 32")],
)
def test_run_now_of_a_schedule_stored_with_bad_json_queues_nothing(
    api: Client, admin: Client, stored: str, says: str
) -> None:
    task = interval_schedule(args=stored)  # saved before the doors refused such values
    before = counts()
    response = send(api, "post", f"/api/schedules/{task.pk}/run/", {})
    assert response.status_code == 409 and says in response.json()["detail"]
    response = admin.post(f"{SCHEDULES}{task.pk}/do/run/", follow=True)
    assert says in response.content.decode()
    assert counts() == before


def test_a_retry_of_a_run_recorded_with_deep_arguments_queues_nothing(api: Client) -> None:
    run = finished_run(task_args=json.dumps(deep_text(300)))
    before = counts()
    response = send(api, "post", f"/api/runs/{run.pk}/retry/", {})
    assert response.status_code == 409, response.content
    assert counts() == before


def test_a_schedule_saved_with_a_nul_character_can_still_be_deleted_through_the_api(api: Client) -> None:
    task = interval_schedule(args='["a\\u0000b"]', kwargs='{"k\\u0000": "v"}', headers='{"h": "\\u0000"}')
    response = api.delete(f"/api/schedules/{task.pk}/")
    assert response.status_code == 204
    assert not PeriodicTask.objects.filter(pk=task.pk).exists()
    changes = AuditEntry.objects.get(action="delete").changes
    assert changes["args"] == ["a\u2400b"] and changes["kwargs"] == {"k\u2400": "v"}


def test_a_schedule_saved_with_deep_json_can_still_be_read_and_deleted_through_the_api(api: Client) -> None:
    task = interval_schedule(args=deep_text(5000))
    assert api.get(f"/api/schedules/{task.pk}/").status_code == 200
    assert api.delete(f"/api/schedules/{task.pk}/").status_code == 204


def test_the_commands_refuse_a_nul_character_in_their_arguments() -> None:
    before = counts()
    with pytest.raises(CommandError, match="username: contains a NUL character"):
        call_command("api_token", "bo\x00ss", stdout=StringIO())
    with pytest.raises(CommandError, match="--next: 100000 is out of range; give a whole number from 1 to 100"):
        call_command("list_schedules", "--next", "100000", stdout=StringIO())
    assert counts() == before


def test_ensure_admin_refuses_a_bad_user_name(monkeypatch: pytest.MonkeyPatch) -> None:
    before = counts()
    monkeypatch.setenv("ADMIN_USERNAME", "x" * 151)
    with pytest.raises(CommandError, match="ADMIN_USERNAME: 151 characters; at most 150"):
        call_command("ensure_admin", stdout=StringIO())
    monkeypatch.setenv("ADMIN_USERNAME", " ")
    with pytest.raises(CommandError, match="ADMIN_USERNAME: empty"):
        call_command("ensure_admin", stdout=StringIO())
    assert counts() == before


def test_the_checks_never_recurse() -> None:
    value = deep(200_000)
    with pytest.raises(limits.LimitExceeded, match="nested 200,000 levels deep"):
        limits.check_json("args", value)
    assert limits.text_depth(deep_text(200_000)) == (200_000, None)
    kept = limits.storable({"args": value})
    assert json.dumps(kept).count("[") == limits.MAX_DEPTH - 1


def test_the_depth_check_reads_a_string_that_never_ends_in_one_pass(api: Client) -> None:
    """An unclosed string of escaped quotes once cost the square of its length (a 1 MiB
    body held a web worker for about an hour); it is read once, and refused as JSON."""
    body = '{"args": "' + '\\"' * 400_000
    started = time.monotonic()
    assert limits.text_depth(body) == (1, None)
    response = send(api, "post", "/api/schedules/", body)
    assert response.status_code == 400 and "JSON parse error" in response.json()["detail"]
    assert time.monotonic() - started < 10  # a bound on the algorithm (it took hours), not a benchmark


def test_it_refuses_a_pause_note_over_its_limit_at_both_doors(api: Client, admin: Client) -> None:
    task = interval_schedule(enabled=True)
    before = counts()
    long_note = "x" * (limits.MAX_NOTE + 1)
    response = send(api, "post", f"/api/schedules/{task.pk}/pause/", {"note": long_note})
    assert response.status_code == 400 and str(limits.MAX_NOTE) in " ".join(response.json()["note"]), response.json()
    response = admin.post(f"{SCHEDULES}{task.pk}/do/pause/", {"note": long_note}, follow=True)
    assert f"at most {limits.MAX_NOTE}" in response.content.decode().replace(",", ""), "the admin names the limit"
    assert counts() == before
    assert PeriodicTask.objects.get(pk=task.pk).enabled
    response = send(api, "post", f"/api/schedules/{task.pk}/pause/", {"note": "x" * limits.MAX_NOTE})
    assert (
        response.status_code == 200 and not PeriodicTask.objects.get(pk=task.pk).enabled
    )  # the limit itself is allowed
