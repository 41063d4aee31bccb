"""Bodies too large, unknown and mismatched fields, moments in the past, a queue nobody
consumes, bounded text, clocked one-offs and the probes' headers (issue 14, 4-6 and 9)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from scheduler_app import limits
from tests.hardening.input_kit import (
    SCHEDULES,
    TASK,
    admin_form,
    counts,
    form_errors,
    interval_schedule,
    send,
)

pytestmark = pytest.mark.django_db(transaction=True)
CREATE = {"name": "n", "task": TASK, "kind": "interval", "every": 5, "period": "minutes"}
LATER = (timezone.now() + dt.timedelta(days=30)).replace(microsecond=0)
EARLIER = timezone.now() - dt.timedelta(days=1)


# --- bodies too large ------------------------------------------------------------------------


def test_the_api_answers_a_body_too_large_with_a_json_413_saying_the_limit(api: Client) -> None:
    before = counts()
    response = send(api, "post", "/api/schedules/", {**CREATE, "description": "x" * (20 * 1024 * 1024)})
    assert response.status_code == 413
    assert "at most 1,048,576 bytes" in response.json()["detail"]
    assert counts() == before


def test_the_admin_answers_a_body_too_large_with_a_page_saying_what_and_the_limit(admin: Client) -> None:
    before = counts()
    response = admin.post(SCHEDULES + "add/", admin_form(args='["' + "x" * (3 * 1024 * 1024) + '"]'))
    assert response.status_code == 413
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert "request body is 3,14" in page and "at most 1,048,576 bytes" in page
    assert counts() == before


def test_the_admin_answers_too_many_fields_with_a_page_saying_the_limit(admin: Client) -> None:
    response = admin.post(SCHEDULES + "add/", {**admin_form(), **{f"x{n}": "1" for n in range(1100)}})
    assert response.status_code == 400
    assert "more than 1,000 fields" in response.content.decode()


def test_csrf_still_holds(clients: tuple[Client, Client]) -> None:
    checked = Client(enforce_csrf_checks=True)
    checked.force_login(_boss())
    response = checked.post(SCHEDULES + "add/", admin_form())
    assert response.status_code == 403


def _boss() -> Any:
    from django.contrib.auth.models import User

    return User.objects.get(username="boss")


# --- unknown and mismatched fields -----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "allowed"),
    [
        ({**CREATE, "enabeld": True}, "enabeld", "enabled"),
        ({**CREATE, "minuet": "5"}, "minuet", "minute"),
        ({**CREATE, "policy": {"overlpa": "skip"}}, "overlpa", "overlap"),
    ],
)
def test_the_api_refuses_an_unknown_field_naming_the_allowed_ones(
    api: Client, body: dict[str, Any], field: str, allowed: str
) -> None:
    before = counts()
    response = send(api, "post", "/api/schedules/", body)
    assert response.status_code == 400
    text = response.content.decode()
    assert field in text and "unknown field" in text and allowed in text
    assert counts() == before


def test_a_client_may_send_back_what_it_read_and_change_one_field(api: Client) -> None:
    task = interval_schedule(description="old")
    read = api.get(f"/api/schedules/{task.pk}/").json()
    assert {"id", "schedule", "next_run", "health", "date_changed"} <= set(read)
    response = send(api, "patch", f"/api/schedules/{task.pk}/", {**read, "description": "new"})
    assert response.status_code == 200, response.content
    assert PeriodicTask.objects.get(pk=task.pk).description == "new"
    response = send(api, "patch", f"/api/schedules/{task.pk}/", {**read, "descripton": "typo"})
    assert response.status_code == 400 and "unknown field" in response.json()["descripton"][0]


def test_run_now_and_pause_refuse_an_unknown_field(api: Client) -> None:
    task = interval_schedule()
    before = counts()
    response = send(api, "post", f"/api/schedules/{task.pk}/run/", {"arg": [1]})
    assert response.status_code == 400 and "args, kwargs" in response.json()["arg"][0]
    response = send(api, "post", f"/api/schedules/{task.pk}/pause/", {"reason": "x"})
    assert response.status_code == 400 and "note" in response.json()["reason"][0]
    assert counts() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**CREATE, "minute": "61"}, "minute"),
        ({**CREATE, "timezone": "UTC"}, "timezone"),
        ({**CREATE, "kind": "crontab"}, "every"),
        ({"name": "c", "task": TASK, "kind": "clocked", "clocked_time": LATER.isoformat(), "latitude": 1}, "latitude"),
    ],
)
def test_the_api_refuses_a_field_of_another_kind(api: Client, body: dict[str, Any], field: str) -> None:
    before = counts()
    response = send(api, "post", "/api/schedules/", body)
    assert response.status_code == 400
    assert "a field of a" in response.json()[field][0]
    assert counts() == before


def test_a_change_through_the_api_is_judged_against_the_schedules_own_kind(api: Client) -> None:
    task = interval_schedule()
    before = counts()
    assert send(api, "patch", f"/api/schedules/{task.pk}/", {"minute": "5"}).status_code == 400
    assert counts() == before
    response = send(api, "patch", f"/api/schedules/{task.pk}/", {"kind": "crontab", "minute": "5"})
    assert response.status_code == 200, response.content


def test_the_admin_says_which_fields_of_another_kind_it_left_out(admin: Client) -> None:
    response = admin.post(SCHEDULES + "add/", admin_form(kind="interval", every="5", minute="30"), follow=True)
    assert PeriodicTask.objects.filter(name="nightly report", interval__every=5).exists()
    assert "Left out, as the schedule is interval: minute (crontab)" in response.content.decode()


def test_the_admin_switching_a_schedules_kind_says_nothing_of_the_old_kinds_fields(admin: Client) -> None:
    task = interval_schedule(name="nightly report")
    form = admin_form(kind="crontab", every="1", period="hours")  # what the page shows for the old kind
    response = admin.post(f"{SCHEDULES}{task.pk}/change/", form, follow=True)
    assert PeriodicTask.objects.get(pk=task.pk).crontab_id is not None
    assert "Left out" not in response.content.decode()


# --- moments in the past --------------------------------------------------------------------


def test_the_api_refuses_an_expiry_or_a_one_off_moment_in_the_past(api: Client) -> None:
    before = counts()
    response = send(api, "post", "/api/schedules/", {**CREATE, "expires": EARLIER.isoformat()})
    assert response.status_code == 400 and "in the past" in response.json()["expires"][0]
    body = {"name": "c", "task": TASK, "kind": "clocked", "clocked_time": EARLIER.isoformat()}
    response = send(api, "post", "/api/schedules/", body)
    assert response.status_code == 400 and "in the past" in response.json()["clocked_time"][0]
    assert counts() == before


def test_a_past_expiry_is_refused_on_update_only_when_it_is_changed(api: Client) -> None:
    task = interval_schedule(expires=EARLIER)
    assert send(api, "patch", f"/api/schedules/{task.pk}/", {"description": "kept"}).status_code == 200
    before = counts()
    moved = (EARLIER - dt.timedelta(hours=1)).isoformat()
    assert send(api, "patch", f"/api/schedules/{task.pk}/", {"expires": moved}).status_code == 400
    assert counts() == before


def test_the_admin_refuses_a_one_off_moment_in_the_past(admin: Client) -> None:
    before = counts()
    moment = timezone.localtime(EARLIER)
    data = admin_form(kind="clocked", clocked_time_0=f"{moment:%Y-%m-%d}", clocked_time_1=f"{moment:%H:%M:%S}")
    assert "in the past" in " ".join(form_errors(admin.post(SCHEDULES + "add/", data))["clocked_time"])
    assert counts() == before


# --- clocked is one-off by itself -----------------------------------------------------------


def test_a_clocked_schedule_is_one_off_by_itself_in_the_api_and_the_admin(api: Client, admin: Client) -> None:
    body = {"name": "once", "task": TASK, "kind": "clocked", "clocked_time": LATER.isoformat()}
    response = send(api, "post", "/api/schedules/", body)
    assert response.status_code == 201, response.content
    assert response.json()["one_off"] is True and PeriodicTask.objects.get(name="once").one_off
    moment = timezone.localtime(LATER)
    data = admin_form(name="once too", kind="clocked", clocked_time_0=f"{moment:%Y-%m-%d}",
                      clocked_time_1=f"{moment:%H:%M:%S}")  # fmt: skip
    response = admin.post(SCHEDULES + "add/", data)
    assert response.status_code == 302, form_errors(response)
    assert PeriodicTask.objects.get(name="once too").one_off


# --- a queue nobody consumes, bounded text ---------------------------------------------------


def test_a_queue_no_worker_consumes_is_accepted_with_a_warning(api: Client, admin: Client) -> None:
    response = send(api, "post", "/api/schedules/", {**CREATE, "queue": "nobody-reads-this"})
    assert response.status_code == 201
    assert "nobody-reads-this" in response.json()["warnings"][0]
    response = send(api, "post", "/api/schedules/", {**CREATE, "name": "default", "queue": "celery"})
    assert response.json()["warnings"] == []
    response = admin.post(SCHEDULES + "add/", admin_form(queue="nobody-either"), follow=True)
    assert "queue &#x27;nobody-either&#x27;" in response.content.decode()


def test_a_description_is_bounded(api: Client, admin: Client) -> None:
    before = counts()
    response = send(api, "post", "/api/schedules/", {**CREATE, "description": "x" * (limits.MAX_TEXT + 1)})
    assert response.status_code == 400 and "2000" in response.json()["description"][0]
    errors = form_errors(admin.post(SCHEDULES + "add/", admin_form(description="x" * (limits.MAX_TEXT + 1))))
    assert "2000" in errors["description"][0]
    assert counts() == before


# --- probes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_the_probes_answer_with_nosniff(path: str) -> None:
    response = Client(REMOTE_ADDR="127.0.0.1").get(path)
    assert response["X-Content-Type-Options"] == "nosniff"
