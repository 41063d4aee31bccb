"""The console's doors (issue 15): one audit trail for the admin, the API and the commands;
revoke behind a confirmation; run now with no worker online warns; kwargs checked against
the task's signature; UTC times shown once; the runs' old address leads on. Django's test
client, logged in as staff, against the real database and broker (no worker runs here)."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from io import StringIO

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult
from playwright.sync_api import Page, Route, expect
from pytest_django.live_server_helper import LiveServer

import tests.tasks  # noqa: F401  (registers tests.sleeper in this process)
from scheduler_app import services
from scheduler_app.admin import display
from scheduler_app.models import AuditEntry
from tests.admin.test_console_admin import form_data  # the schedule form as the admin posts it
from tests.browser import force_login, shot

pytestmark = pytest.mark.django_db(transaction=True)
TASK = "maintenance.purge_expired_sessions"
SCHEDULES = "/admin/django_celery_beat/periodictask/"
RUNS = "/admin/scheduler_app/run/"


@pytest.fixture
def boss() -> User:
    return User.objects.create_superuser("boss", password="x")


@pytest.fixture
def console(boss: User) -> Client:
    client = Client()
    client.force_login(boss)
    return client


def entries(via: str | None = None) -> list[tuple[str, str]]:
    found = AuditEntry.objects.order_by("pk")
    return [(e.via, e.action) for e in (found.filter(via=via) if via else found)]


def hourly(name: str, task: str = TASK, kwargs: str = "{}") -> PeriodicTask:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    return PeriodicTask.objects.create(name=name, task=task, interval=every, kwargs=kwargs)


def pending_run(name: str = "") -> TaskResult:
    meta = json.dumps({"trigger": "manual"})
    return TaskResult.objects.create(
        task_id=str(uuid.uuid4()), task_name=TASK, status="PENDING", periodic_task_name=name or None, meta=meta
    )


# --- one audit trail -----------------------------------------------------------------------


def test_it_audits_an_admin_create_change_and_delete_with_the_apis_diff(console: Client) -> None:
    assert console.post(SCHEDULES + "add/", form_data()).status_code == 302
    task = PeriodicTask.objects.get(name="nightly report")
    created = AuditEntry.objects.get(action="create")
    assert (created.via, created.actor_name, created.object_id) == ("admin", "boss", str(task.pk))
    assert created.changes["schedule"]["minute"] == "30" and created.changes["policy"]["overlap"] == "skip"

    change = form_data(minute="45", **{"policy-INITIAL_FORMS": "1", "policy-0-periodic_task": str(task.pk)})
    assert console.post(f"{SCHEDULES}{task.pk}/change/", change).status_code == 302
    updated = AuditEntry.objects.get(action="update")
    assert updated.via == "admin"
    assert updated.changes["schedule"][0]["minute"] == "30" and updated.changes["schedule"][1]["minute"] == "45"
    assert "name" not in updated.changes  # only what changed, as the API records it

    assert console.post(f"{SCHEDULES}{task.pk}/delete/", {"post": "yes"}).status_code == 302
    deleted = AuditEntry.objects.get(action="delete")
    assert deleted.via == "admin" and deleted.changes["name"] == "nightly report"
    assert entries() == [("admin", "create"), ("admin", "update"), ("admin", "delete")]
    assert LogEntry.objects.count() == 3  # Django's own history is kept as well


def test_it_audits_the_admins_schedule_buttons_and_actions(console: Client) -> None:
    task = hourly("buttons")
    for what in ("pause", "resume", "run", "duplicate"):
        assert console.post(reverse("admin:scheduler_app_schedule_do", args=[task.pk, what])).status_code == 302
    assert entries() == [("admin", "pause"), ("admin", "resume"), ("admin", "run"), ("admin", "duplicate")]
    run = AuditEntry.objects.get(action="run")
    assert TaskResult.objects.filter(task_id=run.changes["run"]).exists()
    copy = AuditEntry.objects.get(action="duplicate")
    assert copy.changes["from"] == "buttons" and copy.object_repr.startswith("buttons (copy)")
    console.post(SCHEDULES, {"action": "pause", "_selected_action": [task.pk], "note": "window"})
    assert AuditEntry.objects.filter(action="pause").order_by("pk").last().changes == {"note": "window"}  # type: ignore[union-attr]


def test_it_audits_retry_and_revoke_from_the_runs_pages(console: Client) -> None:
    finished = TaskResult.objects.create(task_id=str(uuid.uuid4()), task_name=TASK, status="FAILURE",
                                         task_args=json.dumps("[]"), task_kwargs=json.dumps("{}"))  # fmt: skip
    console.post(reverse("admin:scheduler_app_run_do", args=[finished.pk, "retry"]))
    queued = pending_run()
    console.post(reverse("admin:scheduler_app_run_do", args=[queued.pk, "revoke"]), {"confirm": "yes"})
    assert entries() == [("admin", "retry"), ("admin", "revoke")]
    assert AuditEntry.objects.get(action="revoke").object_id == str(queued.pk)


def test_it_audits_the_commands_that_write(boss: User) -> None:
    call_command("seed_default_tasks", stdout=StringIO())
    seeded = AuditEntry.objects.filter(via="command", action="create")
    assert seeded.count() == PeriodicTask.objects.count() > 0
    assert seeded.first().actor_name == "system"  # type: ignore[union-attr]
    call_command("seed_default_tasks", stdout=StringIO())  # unchanged: nothing more to record
    assert AuditEntry.objects.filter(via="command").count() == seeded.count()

    key = StringIO()
    call_command("api_token", "boss", "--quiet", stdout=key)
    call_command("api_token", "boss", "--rotate", stdout=StringIO())
    call_command("api_token", "boss", "--revoke", stdout=StringIO())
    tokens = AuditEntry.objects.filter(object_type="token").order_by("pk")
    assert [(e.via, e.action) for e in tokens] == [("command", "create"), ("command", "rotate"), ("command", "revoke")]
    assert all(key.getvalue().strip() not in json.dumps(e.changes) for e in tokens)  # never the key


def test_it_filters_the_audit_entries_page_by_door(console: Client) -> None:
    for via in ("api", "admin", "command"):
        AuditEntry.objects.create(actor_name="someone", via=via, action="pause", object_type="periodictask",
                                  object_id="1", object_repr=f"by-{via}")  # fmt: skip
    page = console.get("/admin/scheduler_app/auditentry/", {"via": "admin"}).content.decode()
    assert "by-admin" in page and "by-api" not in page and "by-command" not in page
    everything = console.get("/admin/scheduler_app/auditentry/").content.decode()
    assert all(f"?via={door}" in everything for door in ("api", "admin", "command"))  # every door is offered


# --- revoke asks first -------------------------------------------------------------------


def test_it_asks_before_revoking_from_the_run_page(console: Client) -> None:
    run = pending_run()
    url = reverse("admin:scheduler_app_run_do", args=[run.pk, "revoke"])
    asked = console.post(url)
    assert asked.status_code == 200
    page = asked.content.decode()
    assert "Revoke 1 run?" in page and run.task_id in page and 'name="confirm" value="yes"' in page
    assert TaskResult.objects.get(pk=run.pk).status == "PENDING" and not AuditEntry.objects.exists()
    assert console.post(url, {"confirm": "yes"}).status_code == 302
    assert TaskResult.objects.get(pk=run.pk).status == "REVOKED"


def test_it_asks_before_revoking_selected_runs(console: Client) -> None:
    runs = [pending_run(), pending_run()]
    selected = {"action": "revoke", "_selected_action": [run.pk for run in runs]}
    asked = console.post(RUNS, selected)
    assert asked.status_code == 200 and "Revoke 2 runs?" in asked.content.decode()
    assert set(TaskResult.objects.values_list("status", flat=True)) == {"PENDING"}
    done = console.post(RUNS, {**selected, "confirm": "yes"}, follow=True)
    assert "Revoked 2 run(s)." in done.content.decode()
    assert set(TaskResult.objects.values_list("status", flat=True)) == {"REVOKED"}


# --- run now with no worker online, kwargs against the signature ---------------------------


def test_it_warns_when_a_run_is_queued_with_no_worker_online(console: Client) -> None:
    task = hourly("lonely")
    page = console.post(reverse("admin:scheduler_app_schedule_do", args=[task.pk, "run"]), follow=True)
    body = page.content.decode()
    assert "Queued a run" in body and "No worker answered within 1 s" in body
    assert TaskResult.objects.filter(periodic_task_name="lonely", status="PENDING").count() == 1


def test_it_refuses_a_schedule_form_whose_kwargs_the_task_does_not_take(console: Client) -> None:
    response = console.post(SCHEDULES + "add/", form_data(task="tests.sleeper", kwargs='{"key": "k", "secs": 1}'))
    assert response.status_code == 200
    body = response.content.decode()
    assert "unknown keyword argument secs" in body and "tests.sleeper takes (key: " in body
    assert not PeriodicTask.objects.exists()
    assert console.post(SCHEDULES + "add/", form_data(task="tests.sleeper", kwargs='{"key": "k"}')).status_code == 302


def test_it_refuses_run_now_with_overridden_kwargs_the_task_does_not_take() -> None:
    task = hourly("override", task="tests.sleeper", kwargs='{"key": "k"}')
    with pytest.raises(services.ArgumentsRefused, match=r"missing required argument key\. tests.sleeper takes"):
        services.run_now(task, by=None, kwargs={"seconds": 1})
    assert not TaskResult.objects.exists()


# --- UTC once, the old address -----------------------------------------------------------


def test_it_shows_a_utc_time_once_and_another_zone_with_its_utc_time() -> None:
    def shown(local: dt.datetime, utc: dt.datetime) -> str:  # the cell's text, as a reader sees it
        return " ".join(re.sub(r"<[^>]+>", " ", display.local_and_utc(local, utc)).split())

    at = dt.datetime(2026, 3, 1, 8, 20, tzinfo=dt.UTC)
    assert "08:20 UTC" in shown(at, at) and shown(at, at).count("UTC") == 1 and "08:20" in shown(at, at)
    assert shown(at, at).count("08:20") == 1
    berlin = at.astimezone(dt.timezone(dt.timedelta(hours=1), "CET"))
    assert "09:20 CET" in shown(berlin, at) and "08:20 UTC" in shown(berlin, at)


def test_it_leads_the_old_results_address_on_to_the_runs(console: Client) -> None:
    run = pending_run("nightly")
    old = "/admin/django_celery_results/taskresult/"
    assert console.get(old)["Location"] == RUNS
    assert console.get(old, {"status__exact": "FAILURE", "periodic_task_name": "nightly"})["Location"] == (
        f"{RUNS}?state=FAILURE&schedule=nightly"
    )
    assert console.get(f"{old}{run.pk}/change/")["Location"] == f"{RUNS}{run.pk}/change/"
    assert console.get(f"{old}{run.pk}/")["Location"] == f"{RUNS}{run.pk}/change/"
    assert console.get(f"{old}{run.pk}/history/")["Location"] == f"{RUNS}{run.pk}/history/"
    assert console.get(f"{old}{run.pk}/change/", follow=True).status_code == 200


# --- in a real browser ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "rendered"), [("/api/docs/", ".opblock"), ("/api/redoc/", "h1:has-text('Beatkeeper API')")]
)
def test_the_api_docs_render_offline_from_this_servers_scripts(
    page: Page, live_server: LiveServer, boss: User, path: str, rendered: str
) -> None:
    """Every request to another host is refused: the page renders from this server alone, and
    asks no other host for a script, style sheet or font (Redoc's "powered by" logo aside)."""
    outside: list[tuple[str, str]] = []

    def only_here(route: Route) -> None:
        if route.request.url.startswith(live_server.url):
            route.continue_()
        else:
            outside.append((route.request.resource_type, route.request.url))
            route.abort()

    page.route("**/*", only_here)
    force_login(page, live_server.url, boss)
    page.goto(f"{live_server.url}{path}")
    expect(page.locator(rendered).first).to_be_visible(timeout=20_000)
    expect(page.get_by_text("/api/schedules/").first).to_be_attached()
    shot(page, path.strip("/").replace("/", "-"))
    assert [url for kind, url in outside if kind != "image"] == []


def test_the_revoke_confirmation_page_in_a_browser(page: Page, live_server: LiveServer, boss: User) -> None:
    run = pending_run("nightly")
    force_login(page, live_server.url, boss)
    page.goto(f"{live_server.url}{RUNS}{run.pk}/change/")
    page.locator("#bk-revoke").click()
    expect(page.locator("#bk-revoke-confirm")).to_contain_text("Revoke 1 run?")
    shot(page, "confirm")
    assert TaskResult.objects.get(pk=run.pk).status == "PENDING"
    page.locator("#bk-revoke-confirm-yes").click()
    expect(page.locator(".messagelist")).to_contain_text("Revoked.")
    assert TaskResult.objects.get(pk=run.pk).status == "REVOKED"
