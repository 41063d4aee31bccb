"""The seeded roles in the console (issue 18): a staff user with no role, a Viewer, an Operator,
an Editor and a superuser against every page of the admin and every action. What one may do
answers 200 (or its redirect) and does it; what one may not answers 403 (or the admin's own
refusal) and writes and queues nothing. The pages come from the admin site's registry and the
URL conf: a model registered or a page added without an expectation here fails
`test_every_registered_admin_and_every_console_route_has_an_expectation`. Real database and
broker (run now queues on it); no worker runs here."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.db import models
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule
from django_celery_results.models import TaskResult
from rest_framework.authtoken.models import Token, TokenProxy

from scheduler_app import audit
from scheduler_app.models import AuditEntry, Backfill, BusinessCalendar, Pool
from scheduler_app.runs import dead_letters
from scheduler_app.runs.history import run_context
from tests.admin.test_calendars_admin import calendar_form
from tests.admin.test_console_admin import form_data
from tests.backfill_clock import HOUR, NOW
from tests.hardening.test_dead_letters import letter
from tests.roles_kit import PEOPLE, may, person
from tests.routes import all_routes

pytestmark = pytest.mark.django_db(transaction=True)
TASK = "maintenance.purge_expired_sessions"
EVERYONE = "nobody"  # the lowest: any staff user

# Each registered model: who sees its pages (list, change page read-only, history) and who adds,
# changes and deletes; None: nobody, not even a superuser (the console only shows those).
MODELS: dict[str, tuple[str, str | None]] = {
    "django_celery_beat.periodictask": ("viewer", "editor"),
    "django_celery_beat.crontabschedule": ("viewer", "editor"),
    "django_celery_beat.intervalschedule": ("viewer", "editor"),
    "django_celery_beat.solarschedule": ("viewer", "editor"),
    "django_celery_beat.clockedschedule": ("viewer", "editor"),
    "scheduler_app.businesscalendar": ("viewer", "editor"),
    "scheduler_app.pool": ("viewer", "editor"),
    "scheduler_app.run": ("viewer", None),
    "scheduler_app.auditentry": ("viewer", None),
    "scheduler_app.backfill": ("viewer", None),
    "auth.user": ("superuser", "superuser"),
    "auth.group": ("superuser", "superuser"),
    "authtoken.tokenproxy": ("superuser", "superuser"),
}


def hourly(name: str = "nightly") -> PeriodicTask:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    return PeriodicTask.objects.create(name=name, task=TASK, interval=every)


def failed_run(name: str = "nightly") -> TaskResult:
    return TaskResult.objects.create(
        task_id=str(uuid.uuid4()), task_name=TASK, status="FAILURE", periodic_task_name=name,
        task_args=json.dumps("[]"), task_kwargs=json.dumps("{}"), traceback="Traceback...\nValueError: no",
        result=json.dumps({"exc_type": "ValueError", "exc_message": ["no"], "exc_module": "builtins"}),
        meta=json.dumps({"trigger": "beat"}),
    )  # fmt: skip


def pending_run() -> TaskResult:
    meta = json.dumps({"trigger": "manual"})
    return TaskResult.objects.create(task_id=str(uuid.uuid4()), task_name=TASK, status="PENDING", meta=meta)


def make_backfill() -> Backfill:
    task = hourly(f"backfilled-{uuid.uuid4().hex[:6]}")
    now = timezone.now()
    return Backfill.objects.create(periodic_task=task, schedule_name=task.name, start=now - 3 * HOUR, end=now - HOUR)


# One fresh, unused row of each registered model (so that deleting it deletes nothing else).
MAKERS: dict[str, Callable[[], models.Model]] = {
    "django_celery_beat.periodictask": lambda: hourly(f"schedule-{uuid.uuid4().hex[:6]}"),
    "django_celery_beat.crontabschedule": lambda: CrontabSchedule.objects.create(minute="7", hour="3"),
    "django_celery_beat.intervalschedule": lambda: IntervalSchedule.objects.create(every=17, period="minutes"),
    "django_celery_beat.solarschedule": lambda: SolarSchedule.objects.create(event="sunset", latitude=1, longitude=2),
    "django_celery_beat.clockedschedule": lambda: ClockedSchedule.objects.create(
        clocked_time=timezone.now() + dt.timedelta(days=3)
    ),
    "scheduler_app.businesscalendar": lambda: BusinessCalendar.objects.create(name=f"cal-{uuid.uuid4().hex[:6]}"),
    "scheduler_app.pool": lambda: Pool.objects.create(name=f"pool-{uuid.uuid4().hex[:6]}", size=2),
    "scheduler_app.run": failed_run,
    "scheduler_app.auditentry": lambda: AuditEntry.objects.create(
        actor_name="someone", via="api", action="pause", object_type="periodictask", object_id="1"
    ),
    "scheduler_app.backfill": make_backfill,
    "auth.user": lambda: User.objects.create_user(f"someone-{uuid.uuid4().hex[:6]}", is_staff=True),
    "auth.group": lambda: Group.objects.create(name=f"on-call-{uuid.uuid4().hex[:6]}"),
    "authtoken.tokenproxy": lambda: TokenProxy.objects.get(  # addressed by its user's id (DRF's TokenProxy.pk)
        key=Token.objects.create(user=User.objects.create_user(f"t-{uuid.uuid4().hex[:6]}")).key
    ),
}


def url(label: str, page: str, obj: models.Model | None = None) -> str:
    app, model = label.split(".")
    return reverse(f"admin:{app}_{model}_{page}", args=[obj.pk] if obj is not None else [])


def exists(obj: models.Model) -> bool:
    return type(obj)._default_manager.filter(pk=obj._meta.pk.value_from_object(obj)).exists()


def signed_in(who: str) -> Client:
    client = Client()
    client.force_login(person(who))
    return client


# --- every page: seen by whom -----------------------------------------------------------------


@pytest.mark.parametrize("who", PEOPLE)
def test_each_models_pages_answer_whoever_may_see_or_edit_it_and_refuse_the_rest(who: str) -> None:
    client = signed_in(who)
    for label, (sees, edits) in MODELS.items():
        obj = MAKERS[label]()
        pages = {"changelist": (None, sees), "change": (obj, sees), "history": (obj, sees),
                 "add": (None, edits), "delete": (obj, edits)}  # fmt: skip
        for page, (target, needed) in pages.items():
            answer = client.get(url(label, page, target)).status_code
            assert answer == (200 if may(who, needed) else 403), (who, label, page, answer)


# The console's own pages (and the apps' index pages): each route, who may open it, and the
# status that refuses the others (an app index without a model the user may see is a 404).
PAGES: dict[str, tuple[str, str, int]] = {
    "admin/": ("/admin/", EVERYONE, 403),
    "admin/password_change/": ("/admin/password_change/", EVERYONE, 403),
    "admin/auth/user/<id>/password/": ("/admin/auth/user/{user}/password/", "superuser", 403),
    "admin/dashboard/": ("/admin/dashboard/", "viewer", 403),
    "admin/dashboard/panel/": ("/admin/dashboard/panel/", "viewer", 403),
    "admin/dead-letters/": ("/admin/dead-letters/", "viewer", 403),
    "admin/dead-letters/<str:letter_id>/": ("/admin/dead-letters/{letter}/", "viewer", 403),
    "admin/dead-letters/<str:letter_id>/<str:what>/": ("/admin/dead-letters/{letter}/retry/", "operator", 403),
    "admin/failures/": ("/admin/failures/", "viewer", 403),
    "admin/failures/<str:what>/": (f"/admin/failures/discard/?task={TASK}&exc=ValueError", "operator", 403),
    "admin/trends/": ("/admin/trends/", "viewer", 403),
    "admin/workers/": ("/admin/workers/", "viewer", 403),
    "admin/workers/control/<str:command>/": ("/admin/workers/control/shutdown/?worker=w@h", "superuser", 403),
    "admin/queues/": ("/admin/queues/", "viewer", 403),
    "admin/queues/purge/": ("/admin/queues/purge/?queue=celery", "superuser", 403),
    "admin/scheduler_app/backfill/start/<int:schedule_pk>/": ("/admin/scheduler_app/backfill/start/{schedule}/",
                                                              "operator", 403),
    "admin/scheduler_app/backfill/<int:pk>/cancel/": ("/admin/scheduler_app/backfill/{backfill}/cancel/",
                                                      "operator", 403),
    "admin/django_celery_beat/periodictask/<int:pk>/versions/<int:number>/": (
        "/admin/django_celery_beat/periodictask/{schedule}/versions/1/", "viewer", 403),
    "admin/django_celery_beat/": ("/admin/django_celery_beat/", "viewer", 404),
    "admin/scheduler_app/": ("/admin/scheduler_app/", "viewer", 404),
    "admin/auth/": ("/admin/auth/", "superuser", 404),
    "admin/authtoken/": ("/admin/authtoken/", "superuser", 404),
}  # fmt: skip
# What answers no page of its own, or answers whoever signs in: a redirect, JSON for the form, a
# POST (tested with the actions below), the sign-in and out, the admin's script and catch-all.
NOT_PAGES = {
    "admin/login/", "admin/logout/", "admin/jsi18n/", "admin/autocomplete/", "admin/password_change/done/",
    "admin/r/<path:content_type_id>/<path:object_id>/", "admin/(?P<url>.*)$",
    "admin/django_celery_results/taskresult/",
    "admin/django_celery_results/taskresult/^(?P<pk>\\d+)/(?P<rest>(?:change/|history/|delete/)?)$",
    "admin/django_celery_beat/periodictask/<int:pk>/do/<str:what>/", "admin/scheduler_app/run/<int:pk>/do/<str:what>/",
    "admin/django_celery_beat/periodictask/<int:pk>/versions/<int:number>/restore/",
}  # fmt: skip
PREVIEW = "admin/django_celery_beat/periodictask/preview/"  # JSON for the schedule form: whoever edits


@pytest.mark.parametrize("who", PEOPLE)
def test_each_console_page_answers_whoever_may_open_it_and_refuses_the_rest(who: str, key: str) -> None:
    client = signed_in(who)
    schedule = hourly()
    audit.record(None, "create", schedule, via="command")  # its version 1
    found = {
        "letter": letter(key).id,
        "schedule": schedule.pk,
        "backfill": make_backfill().pk,
        "user": User.objects.create_user("someone").pk,
    }
    failed_run()
    for route, (address, needed, refusal) in PAGES.items():
        answer = client.get(address.format(**found)).status_code
        if may(who, needed):  # a queue no worker consumes is no queue to purge: the superuser's 404
            assert answer == 200 or (route == "admin/queues/purge/" and answer == 404), (who, route, answer)
        else:
            assert answer == refusal, (who, route, answer)
    preview = client.get("/" + PREVIEW, {"kind": "interval", "every": "1", "period": "hours"}).status_code
    assert preview == (200 if may(who, "editor") else 403)
    assert client.get(f"/admin/dead-letters/{found['letter']}/").status_code in (200, 403)
    assert dead_letters.get(found["letter"]) is not None  # a GET only asks


def console_routes() -> set[str]:
    return {route for route in all_routes() if route.startswith("admin/")}


def test_every_registered_admin_and_every_console_route_has_an_expectation() -> None:
    """A model registered, or a page added, later fails this until the matrix says who may use it."""
    registered = {model._meta.label_lower for model in admin.site._registry}
    assert registered == set(MODELS) == set(MAKERS)
    model_pages = {f"admin/{label.replace('.', '/')}/{page}" for label in MODELS
                   for page in ("", "add/", "<path:object_id>/", "<path:object_id>/change/",
                                "<path:object_id>/history/", "<path:object_id>/delete/")}  # fmt: skip
    routes = console_routes()
    app_index = {route for route in routes if route.startswith("admin/^(?P<app_label>")}  # one regex, each app
    for route in app_index:
        labels = route.split(">", 1)[1].split(")", 1)[0].split("|")
        assert {f"admin/{label}/" for label in labels} <= set(PAGES), route
    unheld = routes - app_index - model_pages - set(PAGES) - NOT_PAGES - {PREVIEW}
    assert sorted(unheld) == []


# --- adding, changing and deleting -----------------------------------------------------------


@pytest.mark.parametrize("who", PEOPLE)
def test_deleting_a_row_deletes_it_for_whoever_may_and_nothing_for_the_rest(who: str) -> None:
    client = signed_in(who)
    for label, (_, edits) in MODELS.items():
        obj = MAKERS[label]()
        answer = client.post(url(label, "delete", obj), {"post": "yes"}).status_code
        if may(who, edits):
            assert (answer, exists(obj)) == (302, False), (who, label)
        else:
            assert (answer, exists(obj)) == (403, True), (who, label)


@pytest.mark.parametrize("who", ["operator", "editor", "superuser"])
@pytest.mark.parametrize("through", ["django_celery_beat.periodictask", "django_celery_beat.intervalschedule"])
def test_a_schedule_with_a_backfill_is_deleted_with_it_by_whoever_may_delete_schedules(who: str, through: str) -> None:
    """A backfill is never deleted on its own (no delete page), but it is the schedule's own
    record: deleting the schedule, or the interval row under it, takes it along, and the
    confirmation lists it."""
    client = signed_in(who)
    backfill = make_backfill()
    task = backfill.periodic_task
    row = task if through.endswith("periodictask") else task.interval
    page = client.get(url(through, "delete", row))
    answer = client.post(url(through, "delete", row), {"post": "yes"}).status_code
    if may(who, "editor"):
        assert page.status_code == 200 and str(backfill) in page.content.decode()
        assert (answer, exists(task), exists(backfill)) == (302, False, False)
    else:
        assert (answer, exists(task), exists(backfill)) == (403, True, True)
    assert client.post(url("scheduler_app.backfill", "delete", make_backfill()), {"post": "yes"}).status_code == 403


@pytest.mark.parametrize("who", PEOPLE)
def test_adding_and_changing_a_schedule_a_calendar_and_a_pool_is_the_editors(who: str) -> None:
    client = signed_in(who)
    task = hourly("kept")
    before = list(PeriodicTask.objects.values())
    added = client.post(url("django_celery_beat.periodictask", "add"), form_data()).status_code
    change = form_data(name="renamed", **{"policy-INITIAL_FORMS": "0"})
    changed = client.post(url("django_celery_beat.periodictask", "change", task), change).status_code
    calendar = client.post(url("scheduler_app.businesscalendar", "add"), calendar_form()).status_code
    pool_form = {"name": "exports", "size": "2", "lease": "60", "rate": "", "description": ""}
    pool = client.post(url("scheduler_app.pool", "add"), pool_form).status_code
    if may(who, "editor"):
        assert (added, changed, calendar, pool) == (302, 302, 302, 302)
        assert set(PeriodicTask.objects.values_list("name", flat=True)) == {"nightly report", "renamed"}
        assert BusinessCalendar.objects.filter(name="Berlin office").exists()
        assert Pool.objects.filter(name="exports", size=2).exists()
    else:
        assert (added, changed, calendar, pool) == (403, 403, 403, 403)
        assert list(PeriodicTask.objects.values()) == before
        assert not BusinessCalendar.objects.exists() and not AuditEntry.objects.exists()
        assert not Pool.objects.exists()


def test_an_editor_picks_a_schedules_owner_and_its_pool_on_the_page() -> None:
    """The owner is a plain list of active users (the admin's autocomplete would ask an Editor
    for the permission to view users), the pool a list of the pools."""
    client = signed_in("editor")
    ada = User.objects.create_user("ada")
    User.objects.create_user("gone", is_active=False)
    Pool.objects.create(name="exports", size=2)
    page = client.get(url("django_celery_beat.periodictask", "add")).content.decode()
    assert f'<option value="{ada.pk}">ada</option>' in page and ">gone<" not in page
    assert '<option value="exports">exports</option>' in page
    made = form_data(**{"policy-0-owner": str(ada.pk), "policy-0-pool": "exports", "policy-0-pool_full": "skip"})
    assert client.post(url("django_celery_beat.periodictask", "add"), made).status_code == 302
    policy = PeriodicTask.objects.get(name="nightly report").policy
    assert (policy.owner, policy.pool_id, policy.pool_full) == (ada, "exports", "skip")


@pytest.mark.parametrize("who", PEOPLE)
def test_restoring_a_version_is_the_editors(who: str) -> None:
    task = hourly()
    audit.record(None, "create", task, via="command")
    PeriodicTask.objects.filter(pk=task.pk).update(description="changed since")
    audit.record(None, "update", task, via="command")
    answer = signed_in(who).post(f"/admin/django_celery_beat/periodictask/{task.pk}/versions/1/restore/")
    assert answer.status_code == (302 if may(who, "editor") else 403)
    assert PeriodicTask.objects.get(pk=task.pk).description == ("" if may(who, "editor") else "changed since")


# --- the schedule's operations: run now, pause, resume (Operator), duplicate (Editor) ------------


def outcome_of(what: str, task: PeriodicTask) -> bool:
    """Whether `what` was done to `task` (it starts enabled, or paused for a resume)."""
    task.refresh_from_db()
    if what == "run":
        return TaskResult.objects.filter(periodic_task_name=task.name).exists()
    if what == "pause":
        return not bool(task.enabled)  # django-celery-beat has no type information
    if what == "resume":
        return bool(task.enabled)
    return bool(PeriodicTask.objects.filter(name__startswith=f"{task.name} (copy").exists())


def schedule_for(what: str) -> PeriodicTask:
    task = hourly(f"{what}-me")
    if what == "resume":
        PeriodicTask.objects.filter(pk=task.pk).update(enabled=False)
    return task


NEEDS = {"run": "operator", "pause": "operator", "resume": "operator", "duplicate": "editor"}
ACTIONS = {"run": "run_now", "pause": "pause", "resume": "resume", "duplicate": "duplicate"}


@pytest.mark.parametrize("who", PEOPLE)
def test_the_schedule_pages_buttons_do_what_the_role_allows_and_nothing_else(who: str) -> None:
    client = signed_in(who)
    for what, needed in NEEDS.items():
        task = schedule_for(what)
        answer = client.post(reverse("admin:scheduler_app_schedule_do", args=[task.pk, what])).status_code
        assert (answer, outcome_of(what, task)) == ((302, True) if may(who, needed) else (403, False)), (who, what)
        assert AuditEntry.objects.filter(action=what).exists() == may(who, needed)


@pytest.mark.parametrize("who", PEOPLE)
def test_the_schedule_lists_actions_do_what_the_role_allows_and_nothing_else(who: str) -> None:
    client = signed_in(who)
    listed = client.get(url("django_celery_beat.periodictask", "changelist"))
    form = listed.context["action_form"] if listed.status_code == 200 else None  # None: no action to offer
    offered = {name for name, _ in form.fields["action"].choices} - {""} if form is not None else set()
    expected = {ACTIONS[what] for what, needed in NEEDS.items() if may(who, needed)}
    expected |= {"backfill_action"} if may(who, "operator") else set()
    expected |= {"delete_selected"} if may(who, "editor") else set()
    assert offered == expected
    for what, needed in NEEDS.items():
        task = schedule_for(what)
        chosen = {"action": ACTIONS[what], "_selected_action": [task.pk], "note": ""}
        answer = client.post(url("django_celery_beat.periodictask", "changelist"), chosen).status_code
        assert answer in (200, 302, 403)  # refused: 403, or the admin's "No action selected." (nothing done)
        assert outcome_of(what, task) == may(who, needed), (who, what)


@pytest.mark.parametrize("who", PEOPLE)
def test_the_schedule_page_offers_exactly_the_buttons_its_viewer_may_use(who: str) -> None:
    client = signed_in(who)
    task = hourly()
    response = client.get(url("django_celery_beat.periodictask", "change", task))
    if not may(who, "viewer"):
        assert response.status_code == 403
        return
    page = response.content.decode()
    for button, needed in (("bk-run-now", "operator"), ("bk-pause", "operator"), ("bk-duplicate", "editor"),
                           ('name="_save"', "editor")):  # fmt: skip
        assert (button in page) == may(who, needed), (who, button)


# --- runs, dead letters, failures -----------------------------------------------------------------


@pytest.mark.parametrize("who", PEOPLE)
def test_retrying_and_revoking_a_run_is_the_operators(who: str) -> None:
    client = signed_in(who)
    failed, queued = failed_run(), pending_run()
    retried = client.post(reverse("admin:scheduler_app_run_do", args=[failed.pk, "retry"])).status_code
    revoked = client.post(reverse("admin:scheduler_app_run_do", args=[queued.pk, "revoke"]), {"confirm": "yes"})
    queued.refresh_from_db()
    if may(who, "operator"):
        assert (retried, revoked.status_code, queued.status) == (302, 302, "REVOKED")
        assert TaskResult.objects.count() == 3  # the retry's run
    else:
        assert (retried, revoked.status_code, queued.status) == (403, 403, "PENDING")
        assert TaskResult.objects.count() == 2 and not AuditEntry.objects.exists()


@pytest.mark.parametrize("who", PEOPLE)
def test_retrying_and_discarding_dead_letters_is_the_operators(who: str, key: str) -> None:
    client = signed_in(who)
    to_retry, to_discard = letter(key), letter(key)
    retried = client.post(f"/admin/dead-letters/{to_retry.id}/retry/").status_code
    discarded = client.post(f"/admin/dead-letters/{to_discard.id}/discard/").status_code
    kept = (dead_letters.get(to_retry.id) is not None, dead_letters.get(to_discard.id) is not None)
    if may(who, "operator"):
        assert (retried, discarded, kept) == (302, 302, (False, False))
        assert run_context(TaskResult.objects.get())["retry_of"] == to_retry.task_id
    else:
        assert (retried, discarded, kept) == (403, 403, (True, True))
        assert not TaskResult.objects.exists() and not AuditEntry.objects.exists()


@pytest.mark.parametrize("who", PEOPLE)
def test_retrying_and_dismissing_failures_is_the_operators(who: str) -> None:
    client = signed_in(who)
    failed = failed_run()
    group = f"?task={TASK}&exc=ValueError&window=24h"
    discarded = client.post(f"/admin/failures/discard/{group}").status_code
    retried = client.post(f"/admin/failures/retry/{group}").status_code
    failed.refresh_from_db()
    if may(who, "operator"):
        assert (discarded, retried) == (302, 302) and "dismissed_at" in run_context(failed)
        assert AuditEntry.objects.filter(action="dismiss").count() == 1
    else:
        assert (discarded, retried) == (403, 403) and "dismissed_at" not in run_context(failed)
        assert TaskResult.objects.count() == 1 and not AuditEntry.objects.exists()


# --- backfills (Operator); workers and queues (superusers only) -----------------------------------


@pytest.mark.parametrize("who", PEOPLE)
def test_starting_and_cancelling_a_backfill_is_the_operators(who: str, backfill_clock: Any) -> None:
    client = signed_in(who)
    task = hourly("backfill-me")
    PeriodicTask.objects.filter(pk=task.pk).update(date_changed=NOW - 30 * HOUR, last_run_at=NOW - 30 * HOUR)
    moments = {"start": f"{NOW - 3 * HOUR:%Y-%m-%dT%H:%M:%S}", "end": f"{NOW - HOUR:%Y-%m-%dT%H:%M:%S}"}
    started = client.post(f"/admin/scheduler_app/backfill/start/{task.pk}/",
                          {**moments, "max_concurrent": "1", "confirm": "yes"}).status_code  # fmt: skip
    running = make_backfill()
    cancelled = client.post(f"/admin/scheduler_app/backfill/{running.pk}/cancel/").status_code
    running.refresh_from_db()
    if may(who, "operator"):
        assert (started, cancelled, running.state) == (302, 302, Backfill.CANCELLED)
        assert Backfill.objects.filter(periodic_task=task).exists()
    else:
        assert (started, cancelled, running.state) == (403, 403, Backfill.RUNNING)
        assert not Backfill.objects.filter(periodic_task=task).exists() and not AuditEntry.objects.exists()


@pytest.mark.parametrize("who", PEOPLE)
def test_controlling_workers_and_purging_queues_is_for_superusers_only(who: str) -> None:
    client = signed_in(who)
    controlled = client.post("/admin/workers/control/shutdown/?worker=nobody@nowhere").status_code
    purged = client.post("/admin/queues/purge/?queue=celery").status_code
    if who == "superuser":
        assert controlled == 302 and AuditEntry.objects.filter(action="shutdown").exists()
        assert purged in (302, 404)  # purged, or no such queue with no worker consuming it
    else:
        assert (controlled, purged) == (403, 403) and not AuditEntry.objects.exists()
