"""Issue 21: every console page the other browser tests leave out, in a real headless Chromium,
at 1440 and 1024 px, light and dark (tests/browser.py's `check_legible`): no table or card
wider than its container, and each state badge shown (as many as the seeded rows give the
page) reads at WCAG AA. The pages test_browser_pages.py, test_browser_insights.py and
test_browser_workers_queues.py already hold are not repeated here; together they are every
page of the console (`test_the_list_of_pages_is_every_console_page` keeps it so).
Screenshots go to test-artifacts/screenshots/test_browser_every_page/."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)
from django_celery_results.models import TaskResult
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer
from rest_framework.authtoken.models import Token

from scheduler_app.models import AuditEntry, Incident, ScheduleHealth, SchedulePolicy
from scheduler_app.runs import dead_letters
from scheduler_app.runs.dead_letters import DeadLetter
from tests.browser import check_legible, force_login, login
from tests.routes import all_routes

pytestmark = pytest.mark.django_db(transaction=True)
PASSWORD = "correct horse battery staple"
TASK = "maintenance.purge_expired_sessions"
OTHER = "maintenance.cleanup_old_runs"
NIGHTLY = "nightly-warehouse-export-to-the-finance-team-bucket"  # a realistic, long schedule name
POLL, ONCE, SUNRISE = "poll-partner-api", "one-off-ledger-migration", "sunrise-irrigation-valves"
STATES = ("SUCCESS", "FAILURE", "REVOKED", "STARTED", "PROGRESS", "PENDING", "RETRY", "SKIPPED", "EXPIRED")
RUNNING = ("STARTED", "PROGRESS")
TRACEBACK = 'Traceback (most recent call last):\n  File "job.py", line 3, in run\n    fetch()\nConnectionError: down'
WORKER = "celery@worker-7f9c8d6b5-x2x4q.ops.example.internal"


def run(name: str | None, status: str, *, task: str = TASK, started: float, took: float | None) -> TaskResult:
    """A run that started `started` seconds ago and took `took` seconds (None: still running,
    its last write now)."""
    now = timezone.now()
    start = now - dt.timedelta(seconds=started)
    meta = {"trigger": "beat", "schedule": name, "attempt": 1, "scheduled_for": start.isoformat()}
    row = TaskResult.objects.create(
        task_id=str(uuid.uuid4()), task_name=task, periodic_task_name=name, status=status, worker=WORKER,
        meta=json.dumps(meta), result=json.dumps(None), task_args="[]", task_kwargs="{}", date_started=start,
    )  # fmt: skip
    done = start + dt.timedelta(seconds=took) if took is not None else now
    TaskResult.objects.filter(pk=row.pk).update(date_created=start, date_done=done)  # auto_now(_add): afterwards
    row.refresh_from_db()
    return row


@pytest.fixture
def seeded() -> Iterator[dict[str, Any]]:
    """A console with something on each page: a schedule of each kind (crontab, interval,
    one-off, solar) with health, incidents and a pause; a run of each state (the nightly
    schedule's), a run flagged long, a failure with its traceback; users, a group, an API
    token, an audit entry and a dead letter. Yields the ids the pages' addresses take."""
    now = timezone.now()
    owner = User.objects.create_user("finance-data-platform-team", password="x", is_staff=True)
    group = Group.objects.create(name="on-call operators")
    owner.groups.add(group)
    cron = CrontabSchedule.objects.create(minute="30", hour="2", timezone="Europe/Berlin")
    every = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.MINUTES)
    clocked = ClockedSchedule.objects.create(clocked_time=now + dt.timedelta(days=2))
    solar = SolarSchedule.objects.create(event="sunrise", latitude=52.52, longitude=13.405)
    nightly = PeriodicTask.objects.create(name=NIGHTLY, task=TASK, crontab=cron)
    poll = PeriodicTask.objects.create(name=POLL, task=TASK, interval=every, enabled=False)
    once = PeriodicTask.objects.create(name=ONCE, task=TASK, clocked=clocked, one_off=True)
    sunrise = PeriodicTask.objects.create(name=SUNRISE, task=OTHER, solar=solar)
    for task, state in ((nightly, "failing"), (poll, "late"), (once, "ok"), (sunrise, "ok")):
        SchedulePolicy.objects.create(periodic_task=task, owner=owner, overlap="skip")
        ScheduleHealth.objects.create(periodic_task=task, state=state, since=now, checked_at=now, failures=2)
    SchedulePolicy.objects.filter(periodic_task=poll).update(paused_at=now, pause_note="vendor API down " * 20)
    for minutes, kind in ((30, "late"), (20, "recovered"), (10, "failing")):
        Incident.objects.create(periodic_task=nightly, schedule_name=NIGHTLY, kind=kind, auto_paused=kind == "failing",
                                at=now - dt.timedelta(minutes=minutes),
                                detail={"failures": 3, "last_error": "ConnectionError: down"})  # fmt: skip
    # TASK's runs take 2 min (its p95), so the two running for a minute are not flagged long.
    runs = {status: run(NIGHTLY, status, started=60 - number, took=None) if status in RUNNING
            else run(NIGHTLY, status, started=600 - number * 10, took=120)
            for number, status in enumerate(STATES)}  # fmt: skip
    error = {"exc_type": "ConnectionError", "exc_message": ["down"], "exc_module": "builtins"}
    TaskResult.objects.filter(pk=runs["FAILURE"].pk).update(traceback=TRACEBACK, result=json.dumps(error))
    for minutes in (50, 40):
        run(POLL, "SUCCESS", started=minutes * 60, took=120)
    for hours in (1, 2, 3, 4, 5):  # OTHER's p95: 1 s ...
        run(None, "SUCCESS", task=OTHER, started=hours * 3600, took=1)
    long = run(None, "STARTED", task=OTHER, started=30, took=None)  # ... so 30 s running is long
    operator = User.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    token = Token.objects.create(user=operator)
    entry = AuditEntry.objects.create(actor_name="operator", action="pause", object_type="schedule",
                                      object_id=str(poll.pk), object_repr=POLL, via="admin",
                                      changes={"note": "vendor API down"})  # fmt: skip
    letter_id = str(uuid.uuid4())
    letter = DeadLetter(task=TASK, task_id=letter_id, reason="set aside: RecursionError", worker=WORKER, deliveries=3,
                        body=json.dumps([[], {}, {}]), headers={"task": TASK, "id": letter_id},
                        delivery={"routing_key": "celery"})  # fmt: skip
    dead_letters.add(letter)
    ids = {"nightly": nightly.pk, "poll": poll.pk, "once": once.pk, "sunrise": sunrise.pk, "cron": cron.pk,
           "every": every.pk, "clocked": clocked.pk, "solar": solar.pk, "long": long.pk, "owner": owner.pk,
           "group": group.pk, "token": token.pk, "entry": entry.pk, "letter": letter.id, "task": TASK,
           **{status.lower(): row.pk for status, row in runs.items()}}  # fmt: skip
    yield {"ids": ids, "operator": operator}
    dead_letters.take(letter.id)


BEAT, RUNS = "/admin/django_celery_beat", "/admin/scheduler_app/run"
# (name, address with the seeded ids in braces, the badges the page shows). The badges: the
# nightly schedule has 9 runs (one per state) and 3 incidents; POLL 2 runs; the other task's
# 5 finished runs and 1 running, flagged long; so the runs list has 17 state badges and 1 long.
PAGES = [
    # the admin's own pages, around the console's
    ("app-beat", "/admin/django_celery_beat/", 0),
    ("app-scheduler", "/admin/scheduler_app/", 0),
    ("app-auth", "/admin/auth/", 0),
    ("app-authtoken", "/admin/authtoken/", 0),
    ("password-change", "/admin/password_change/", 0),
    # schedules: the lists beside test_browser_pages.py's, each kind's page, history, delete
    ("schedules-paused", f"{BEAT}/periodictask/?state=paused", 1),  # POLL's last run
    ("schedules-enabled", f"{BEAT}/periodictask/?state=enabled", 1),  # the nightly one's
    ("schedules-last-success", f"{BEAT}/periodictask/?outcome=SUCCESS", 1),  # POLL
    ("schedules-never-run", f"{BEAT}/periodictask/?outcome=none", 0),
    ("schedule-interval", f"{BEAT}/periodictask/{{poll}}/change/", 2),
    ("schedule-crontab-incidents", f"{BEAT}/periodictask/{{nightly}}/change/", 9 + 3),
    ("schedule-clocked", f"{BEAT}/periodictask/{{once}}/change/", 0),
    ("schedule-solar", f"{BEAT}/periodictask/{{sunrise}}/change/", 0),
    ("schedule-history", f"{BEAT}/periodictask/{{nightly}}/history/", 0),
    ("schedule-delete", f"{BEAT}/periodictask/{{nightly}}/delete/", 0),
    # the shared schedule rows (django-celery-beat's own admins)
    ("intervals", f"{BEAT}/intervalschedule/", 0),
    ("interval-add", f"{BEAT}/intervalschedule/add/", 0),
    ("interval-change", f"{BEAT}/intervalschedule/{{every}}/change/", 0),
    ("crontabs", f"{BEAT}/crontabschedule/", 0),
    ("crontab-add", f"{BEAT}/crontabschedule/add/", 0),
    ("crontab-change", f"{BEAT}/crontabschedule/{{cron}}/change/", 0),
    ("clockeds", f"{BEAT}/clockedschedule/", 0),
    ("clocked-add", f"{BEAT}/clockedschedule/add/", 0),
    ("clocked-change", f"{BEAT}/clockedschedule/{{clocked}}/change/", 0),
    ("solars", f"{BEAT}/solarschedule/", 0),
    ("solar-add", f"{BEAT}/solarschedule/add/", 0),
    ("solar-change", f"{BEAT}/solarschedule/{{solar}}/change/", 0),
    # runs: the list by each state, each state's page the other tests leave out, a long one
    *[
        (f"runs-{state.lower()}", f"{RUNS}/?state={state}", 1)
        for state in STATES
        if state not in ("SUCCESS", "STARTED")
    ],
    ("runs-success", f"{RUNS}/?state=SUCCESS", 1 + 2 + 5),
    ("runs-started", f"{RUNS}/?state=STARTED", 2 + 1),  # and the long one's marker
    ("runs-of-a-schedule", f"{RUNS}/?schedule={NIGHTLY}", 9),
    *[
        (f"run-{state.lower()}", f"{RUNS}/{{{state.lower()}}}/change/", 1)
        for state in ("REVOKED", "PROGRESS", "PENDING", "RETRY", "SKIPPED", "EXPIRED")
    ],  # fmt: skip
    ("run-long", f"{RUNS}/{{long}}/change/", 1 + 1),  # its state and the long note
    ("run-history", f"{RUNS}/{{failure}}/history/", 0),
    # the console's other pages: confirmations, audit entry
    ("audit-entry", "/admin/scheduler_app/auditentry/{entry}/change/", 0),
    ("dead-letter-retry", "/admin/dead-letters/{letter}/retry/", 0),
    ("dead-letter-discard", "/admin/dead-letters/{letter}/discard/", 0),
    ("failures-retry", "/admin/failures/retry/?window=7d&task={task}&exc=ConnectionError", 0),
    ("failures-discard", "/admin/failures/discard/?window=7d&task={task}&exc=ConnectionError", 0),
    ("queue-purge", "/admin/queues/purge/?queue=celery", 0),
    ("worker-shutdown", f"/admin/workers/control/shutdown/?worker={WORKER}", 0),
    # users, groups, API tokens
    ("users", "/admin/auth/user/", 0),
    ("user-add", "/admin/auth/user/add/", 0),
    ("user-change", "/admin/auth/user/{owner}/change/", 0),
    ("user-password", "/admin/auth/user/{owner}/password/", 0),
    ("groups", "/admin/auth/group/", 0),
    ("group-add", "/admin/auth/group/add/", 0),
    ("group-change", "/admin/auth/group/{group}/change/", 0),
    ("tokens", "/admin/authtoken/tokenproxy/", 0),
    ("token-add", "/admin/authtoken/tokenproxy/add/", 0),
    ("token-change", "/admin/authtoken/tokenproxy/{owner_token}/change/", 0),
    # the API's documentation pages (the index is JSON)
    ("api-docs", "/api/docs/", 0),
    ("api-redoc", "/api/redoc/", 0),
]


@pytest.mark.parametrize(("name", "path", "badges"), PAGES, ids=[name for name, _, _ in PAGES])
def test_every_other_console_page_fits_and_its_badges_read(
    page: Page, live_server: LiveServer, seeded: dict[str, Any], name: str, path: str, badges: int
) -> None:
    """The page at 1440 and 1024 px, light and dark: nothing wider than its box, and exactly
    the badges its rows give it, each at 4.5:1 or more."""
    ids = {**seeded["ids"], "owner_token": seeded["operator"].pk}  # a token's page is its user's
    force_login(page, live_server.url, seeded["operator"])
    response = page.goto(live_server.url + path.format(**ids))
    assert response is not None and response.status == 200, f"{name}: HTTP {response and response.status}"
    page.wait_for_load_state("networkidle")  # the schedule preview, the docs' scripts
    assert page.locator(".errornote, #bk-redis-error").count() == 0
    check_legible(page, name, badges=badges)
    shown = page.locator(".bk-badge:visible, .bk-long:visible").count()
    assert shown == badges, f"{name}: {shown} badges, {badges} expected"


def test_the_login_page_fits(page: Page, live_server: LiveServer) -> None:
    """The login form, signed out, and its error for a wrong password."""
    page.goto(f"{live_server.url}/admin/login/")
    expect(page.locator("#login-form")).to_be_visible()
    check_legible(page, "login")
    User.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    login(page, live_server.url, "operator", "not the password")
    expect(page.locator(".errornote")).to_be_visible()
    check_legible(page, "login-refused")


def test_the_pages_behind_a_button_fit(page: Page, live_server: LiveServer, seeded: dict[str, Any]) -> None:
    """The revoke confirmations (a run's button, the runs list's action) and the signed-out page."""
    ids = seeded["ids"]
    force_login(page, live_server.url, seeded["operator"])
    page.goto(f"{live_server.url}{RUNS}/{ids['progress']}/change/")
    page.locator("#bk-revoke").click()
    expect(page.locator("#bk-revoke-confirm")).to_contain_text("Revoke 1 run?")
    check_legible(page, "revoke-one")

    page.goto(f"{live_server.url}{RUNS}/?schedule={NIGHTLY}")
    for status in ("PENDING", "PROGRESS", "STARTED"):
        page.locator(f"#result_list tr:has(.bk-badge:text-is('{status}')) input.action-select").check()
    page.locator("select[name=action]").select_option("revoke")
    page.locator("button[name=index]").click()
    expect(page.locator("#bk-revoke-confirm")).to_contain_text("Revoke 3 runs?")
    check_legible(page, "revoke-several")

    page.goto(f"{live_server.url}/admin/")
    page.locator("#logout-form button").click()
    expect(page.locator("#content")).to_contain_text("Thanks for spending some quality time")
    check_legible(page, "logged-out")


# --- every page is held ------------------------------------------------------------------
COVERED_ELSEWHERE = {  # the console's pages other modules hold with check_legible
    "admin/", "admin/dashboard/", "admin/django_celery_beat/periodictask/",
    "admin/django_celery_beat/periodictask/add/",
    "admin/django_celery_beat/periodictask/<path:object_id>/change/", "admin/scheduler_app/run/",
    "admin/scheduler_app/run/<path:object_id>/change/", "admin/scheduler_app/auditentry/", "admin/dead-letters/",
    "admin/dead-letters/<str:letter_id>/", "admin/failures/", "admin/trends/", "admin/workers/", "admin/queues/",
    # business calendars (test_browser_rules.py): the list, a calendar's page, the add form refused
    "admin/scheduler_app/businesscalendar/", "admin/scheduler_app/businesscalendar/<path:object_id>/change/",
    "admin/scheduler_app/businesscalendar/add/",
    # backfills (test_browser_backfill.py): the list, a backfill's page, the form and its confirmation, the cancel
    "admin/scheduler_app/backfill/", "admin/scheduler_app/backfill/<path:object_id>/change/",
    "admin/scheduler_app/backfill/start/<int:schedule_pk>/", "admin/scheduler_app/backfill/<int:pk>/cancel/",
    # concurrency pools (test_browser_pools.py): the list, a pool's page, its delete refused, the add form refused
    "admin/scheduler_app/pool/", "admin/scheduler_app/pool/<path:object_id>/change/",
    "admin/scheduler_app/pool/<path:object_id>/delete/", "admin/scheduler_app/pool/add/",
    # schedule versions (test_browser_versions.py): a version beside today's schedule
    "admin/django_celery_beat/periodictask/<int:pk>/versions/<int:number>/",
}  # fmt: skip
NOT_PAGES = {  # what answers no page of its own: a fragment, JSON, a redirect, a POST, a file
    "admin/dashboard/panel/", "admin/django_celery_results/taskresult/",
    "admin/django_celery_results/taskresult/^(?P<pk>\\d+)/(?P<rest>(?:change/|history/|delete/)?)$",
    "admin/django_celery_beat/periodictask/preview/", "admin/django_celery_beat/periodictask/<int:pk>/do/<str:what>/",
    "admin/scheduler_app/run/<int:pk>/do/<str:what>/", "admin/logout/", "admin/autocomplete/", "admin/jsi18n/",
    "admin/r/<path:content_type_id>/<path:object_id>/", "admin/(?P<url>.*)$", "admin/password_change/done/",
    "admin/scheduler_app/run/add/", "admin/scheduler_app/auditentry/add/",  # read-only: refused (403)
    "admin/scheduler_app/backfill/add/",  # started from a schedule's action instead: refused (403)
    "admin/django_celery_beat/periodictask/<int:pk>/versions/<int:number>/restore/",  # a POST
}  # fmt: skip


def console_addresses() -> set[str]:
    """The routes of the HTML pages under /admin/ and /api/docs, /api/redoc (the rest of /api/ is JSON)."""
    return {p for p in all_routes() if p.startswith("admin/") or p in ("api/docs/", "api/redoc/")}


def test_the_list_of_pages_is_every_console_page() -> None:
    """Each route of the console is held here, by another browser test, or answers no page:
    a page added later (a new view, a newly registered model) fails this until it is added."""
    held = set(COVERED_ELSEWHERE) | NOT_PAGES | {"admin/login/"}  # the login page: test_the_login_page_fits
    held |= {"admin/dead-letters/<str:letter_id>/<str:what>/", "admin/failures/<str:what>/", "admin/queues/purge/",
             "admin/workers/control/<str:command>/", "api/docs/", "api/redoc/"}  # fmt: skip
    for _, path, _ in PAGES:
        route = path.split("?")[0].removeprefix("/")
        held |= {re.sub(r"\{\w+\}", name, route) for name in ("<path:object_id>", "<id>")}  # as Django names it
    # Each model's history and delete pages are the admin's same two templates: the schedule's
    # and the run's are held above. `<id>/` only redirects to `<id>/change/`; `admin/^(...)/$`
    # is the app index (held by the app-* pages).
    alike = {p for p in console_addresses() if p.endswith(("/delete/", "/history/", "<path:object_id>/"))}
    unheld = console_addresses() - held - alike - {p for p in console_addresses() if p.startswith("admin/^")}
    assert sorted(unheld) == []
