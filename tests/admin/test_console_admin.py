"""The operations console through Django's test client: the schedule form and its preview,
the lists and their filters, escaping, CSRF and who may see what."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app.admin.runs import COUNT_CAP
from scheduler_app.forms import ScheduleForm
from scheduler_app.models import Incident, ScheduleChange, ScheduleHealth, SchedulePolicy
from scheduler_app.monitoring import health as monitoring

pytestmark = pytest.mark.django_db(transaction=True)
TASK = "maintenance.purge_expired_sessions"
XSS = "<script>alert(1)</script>"
SCHEDULES = "/admin/django_celery_beat/periodictask/"
RUNS = "/admin/scheduler_app/run/"


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("boss", password="x"))
    return client


def form_data(**changes: Any) -> dict[str, Any]:
    data = {
        "name": "nightly report", "task": TASK, "kind": "crontab", "minute": "30", "hour": "2",
        "day_of_month": "*", "month_of_year": "*", "day_of_week": "*", "cron_timezone": "Europe/Berlin",
        "args": "[]", "kwargs": "{}", "headers": "{}", "enabled": "on", "priority": "",
        "policy-TOTAL_FORMS": "1", "policy-INITIAL_FORMS": "0", "policy-MIN_NUM_FORMS": "0",
        "policy-MAX_NUM_FORMS": "1", "policy-0-overlap": "skip",
    }  # fmt: skip
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("minute", "61", "'61', not in 0-59 for Minutes. Allowed: 0-59"),
        ("minute", "*/0", "Sequence can not be divided by zero or max. Allowed: 0-59"),
        ("hour", "24", "'24', not in 0-23 for Hours"),
        ("day_of_week", "mon-xyz", "Unrecognised Day of Week"),
        ("cron_timezone", "Mars/Olympus", "Unknown time zone 'Mars/Olympus'; use an IANA name"),
        ("day_of_month", "31", "never occur together"),
        ("args", "{not json", "Not valid JSON"),
        ("args", '{"a": 1}', "Must be a JSON list"),
        ("kwargs", "[1]", "Must be a JSON object"),
        ("task", "os.system", "No task named 'os.system' is registered; the registered tasks are: "),
    ],
)
def test_it_explains_each_bad_field(field: str, value: str, message: str) -> None:
    changes = {field: value, **({"month_of_year": "2"} if field == "day_of_month" else {})}
    form = ScheduleForm(form_data(**changes))
    assert not form.is_valid()
    errors = form.errors[field]
    assert message in " ".join(errors), form.errors  # type: ignore[arg-type]  # django-stubs: ErrorList iterates as str


def test_it_checks_an_interval_and_refuses_both_expiry_kinds() -> None:
    form = ScheduleForm(form_data(kind="interval", every="0", period="minutes"))
    assert not form.is_valid() and "every" in form.errors
    form = ScheduleForm(form_data(expires="2030-01-01 00:00", expire_seconds="60"))
    assert not form.is_valid() and "not both" in form.errors["expire_seconds"][0]


def test_it_creates_a_crontab_schedule_with_its_policy_through_the_admin(admin_client: Client) -> None:
    before = ScheduleChange.objects.count()
    response = admin_client.post(SCHEDULES + "add/", form_data())
    assert response.status_code == 302, response.content.decode()[:3000]
    task = PeriodicTask.objects.get(name="nightly report")
    assert (task.crontab.minute, task.crontab.hour, str(task.crontab.timezone)) == ("30", "2", "Europe/Berlin")
    assert SchedulePolicy.objects.get(periodic_task=task).overlap == "skip"
    assert ScheduleChange.objects.count() > before

    admin_client.post(SCHEDULES + "add/", form_data(name="second"))  # the same crontab row is shared
    assert CrontabSchedule.objects.filter(minute="30", hour="2", timezone="Europe/Berlin").count() == 1


def test_it_previews_the_next_runs_with_daylight_saving_marked(admin_client: Client) -> None:
    with time_machine.travel(dt.datetime(2026, 3, 26, 12, tzinfo=dt.UTC), tick=False):
        response = admin_client.get(SCHEDULES + "preview/", form_data())
    data = response.json()
    assert data["ok"] and data["zone"] == "Europe/Berlin" and len(data["runs"]) == 5
    assert [run["local"][:16] for run in data["runs"][:3]] == [
        "2026-03-27T02:30",
        "2026-03-28T02:30",
        "2026-03-29T03:00",
    ]
    assert [run["dst_change"] for run in data["runs"]] == [False, False, True, False, False]
    assert data["runs"][2]["utc"].startswith("2026-03-29T01:00")


def test_it_answers_a_bad_preview_with_the_fields_errors(admin_client: Client) -> None:
    data = admin_client.get(SCHEDULES + "preview/", form_data(minute="61")).json()
    assert data == {"ok": False, "errors": {"minute": [data["errors"]["minute"][0]]}}
    assert "not in 0-59" in data["errors"]["minute"][0]


def make_schedule(name: str = XSS, **fields: Any) -> PeriodicTask:
    every, _ = IntervalSchedule.objects.get_or_create(every=5, period=IntervalSchedule.MINUTES)
    return PeriodicTask.objects.create(name=name, task=TASK, interval=every, **fields)


def run_row(name: str, status: str = "SUCCESS", **fields: Any) -> TaskResult:
    now = timezone.now()
    values = {"date_started": now - dt.timedelta(seconds=2), "date_done": now, "result": json.dumps({"note": XSS}),
              "meta": json.dumps({"trigger": "manual", "by": XSS, "schedule": name}), **fields}  # fmt: skip
    return TaskResult.objects.create(
        task_id=str(uuid.uuid4()), task_name=TASK, periodic_task_name=name, status=status, **values
    )


def test_it_escapes_a_hostile_name_on_every_page(admin_client: Client) -> None:
    task = make_schedule(description=XSS)
    run = run_row(XSS, "FAILURE", traceback=XSS)
    SchedulePolicy.objects.create(periodic_task=task, paused_at=timezone.now(), pause_note=XSS)
    failed = {"webhook": {"status": "failed", "error": XSS}}
    detail = {"failures": 1, "last_error": XSS}
    Incident.objects.create(periodic_task=task, schedule_name=XSS, kind="failing", at=timezone.now(), detail=detail,
                            deliveries=failed)  # fmt: skip
    pages = [SCHEDULES, f"{SCHEDULES}{task.pk}/change/", RUNS, f"{RUNS}{run.pk}/change/", "/admin/dashboard/",
             "/admin/dashboard/panel/", f"{RUNS}?schedule={XSS}"]  # fmt: skip
    for page in pages:
        response = admin_client.get(page)
        body = response.content.decode()
        assert response.status_code == 200, page
        assert XSS not in body, page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body, page


def success_cell(changelist: str, task: PeriodicTask) -> str:
    """The success rate the schedules list shows in `task`'s row (the cell's text before its median)."""
    rows = re.findall(r"<tr\b.*?</tr>", changelist, flags=re.DOTALL)
    [row] = [row for row in rows if f"/{task.pk}/change/" in row]
    cell = re.search(r'class="field-success_and_median">(.*?)<small', row, flags=re.DOTALL)
    assert cell is not None, row
    return cell.group(1).strip()


def test_it_lists_schedules_with_their_runs_and_filters_them(admin_client: Client) -> None:
    good, bad = make_schedule("good"), make_schedule("bad")
    run_row("good", "SUCCESS")
    run_row("bad", "FAILURE")
    body = admin_client.get(SCHEDULES).content.decode()
    assert "every 5 minutes" in body
    assert (success_cell(body, good), success_cell(body, bad)) == ("100%", "0%")
    listed = admin_client.get(SCHEDULES + "?outcome=FAILURE").context["cl"].result_list
    assert [task.pk for task in listed] == [bad.pk]
    monitoring.check_schedules()
    assert ScheduleHealth.objects.get(pk=bad.pk).state == "failing"
    listed = admin_client.get(SCHEDULES + "?health=failing").context["cl"].result_list
    assert [task.pk for task in listed] == [bad.pk]
    assert good.pk not in [t.pk for t in admin_client.get(SCHEDULES + "?state=paused").context["cl"].result_list]


def test_it_pauses_from_the_schedules_page_with_a_note_and_needs_the_csrf_token(admin_client: Client) -> None:
    task = make_schedule("p")
    url = reverse("admin:scheduler_app_schedule_do", args=[task.pk, "pause"])
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(User.objects.get(username="boss"))
    assert strict.post(url, {"note": "maintenance"}).status_code == 403
    task.refresh_from_db()
    assert task.enabled is True

    response = admin_client.post(url, {"note": "maintenance window"})
    assert response.status_code == 302
    task = PeriodicTask.objects.get(pk=task.pk)  # re-read (mypy keeps narrowing `enabled` across refresh_from_db())
    assert task.enabled is False and task.policy.pause_note == "maintenance window"
    assert admin_client.get(url).status_code == 405  # buttons are POST only


def test_it_keeps_every_action_behind_csrf(admin_client: Client) -> None:
    task = make_schedule("c")
    run = run_row("c", "FAILURE")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(User.objects.get(username="boss"))
    posts = [
        (SCHEDULES, {"action": "run_now", "_selected_action": [task.pk]}),
        (SCHEDULES, {"action": "pause", "_selected_action": [task.pk]}),
        (RUNS, {"action": "retry", "_selected_action": [run.pk]}),
        (reverse("admin:scheduler_app_schedule_do", args=[task.pk, "run"]), {}),
        (reverse("admin:scheduler_app_run_do", args=[run.pk, "retry"]), {}),
        (SCHEDULES + "add/", form_data()),
    ]
    for url, data in posts:
        assert strict.post(url, data).status_code == 403, url
    assert TaskResult.objects.count() == 1 and PeriodicTask.objects.count() == 1


def test_it_shows_a_non_staff_user_nothing() -> None:
    make_schedule("secret schedule")
    client = Client()
    client.force_login(User.objects.create_user("visitor", password="x"))
    for page in [SCHEDULES, RUNS, "/admin/dashboard/", "/admin/dashboard/panel/", SCHEDULES + "preview/"]:
        response = client.get(page)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], page
    assert "secret schedule" not in client.get("/admin/", follow=True).content.decode()


def test_it_shows_a_staff_user_without_permissions_no_figures() -> None:
    client = Client()
    client.force_login(User.objects.create_user("staff", password="x", is_staff=True))
    assert client.get("/admin/dashboard/").status_code == 403
    assert client.get(SCHEDULES).status_code == 403
    user = User.objects.get(username="staff")
    user.user_permissions.add(Permission.objects.get(codename="view_run"))
    make_schedule("hidden schedule", enabled=True)
    body = client.get("/admin/dashboard/").content.decode()
    assert "Runs, last 24 h" in body
    assert "Schedules</h3>" not in body and "Upcoming runs" not in body and "hidden schedule" not in body
    run = run_row("x", "FAILURE")
    assert client.post(reverse("admin:scheduler_app_run_do", args=[run.pk, "retry"])).status_code == 403


def test_it_pages_runs_without_counting_past_the_cap(admin_client: Client) -> None:
    now = timezone.now()
    TaskResult.objects.bulk_create(
        TaskResult(task_id=str(uuid.uuid4()), task_name=TASK, status="SUCCESS", date_done=now)
        for _ in range(COUNT_CAP + 5)
    )
    response = admin_client.get(RUNS)
    assert response.status_code == 200
    assert response.context["cl"].result_count == COUNT_CAP + 1
    assert f"Runs ({COUNT_CAP:,}+)" in response.content.decode()
    failures = admin_client.get(RUNS + "?state=FAILURE")
    assert failures.context["cl"].result_count == 0


def test_it_filters_runs_by_trigger_and_date(admin_client: Client) -> None:
    manual = run_row("m")
    beat_run = TaskResult.objects.create(
        task_id=str(uuid.uuid4()), task_name=TASK, status="SUCCESS", meta=json.dumps({"trigger": "beat"})
    )
    listed = admin_client.get(RUNS + "?trigger=manual").context["cl"].result_list
    assert [run.pk for run in listed] == [manual.pk]
    TaskResult.objects.filter(pk=beat_run.pk).update(date_created=timezone.now() - dt.timedelta(days=2))
    listed = admin_client.get(RUNS + "?since=24h").context["cl"].result_list
    assert beat_run.pk not in [run.pk for run in listed] and manual.pk in [run.pk for run in listed]


def test_it_shows_a_runs_progress_and_pretty_result(admin_client: Client) -> None:
    run = run_row("p", "PROGRESS", result=json.dumps({"percent": 40, "message": "half way"}), date_done=None)
    body = admin_client.get(f"{RUNS}{run.pk}/change/").content.decode()
    assert '<progress max="100" value="40">' in body and "half way" in body
    assert 'id="bk-revoke"' in body and 'id="bk-retry"' not in body


def test_it_reports_a_bad_schedule_field_once_without_the_models_generic_error() -> None:
    form = ScheduleForm(form_data(minute="61"))
    assert not form.is_valid()
    assert set(form.errors) == {"minute"}
    PeriodicTask.objects.create(name="taken", task=TASK, crontab=CrontabSchedule.objects.create())
    form = ScheduleForm(form_data(name="taken", minute="61"))
    assert not form.is_valid() and set(form.errors) == {"minute", "name"}


def test_it_duplicates_from_the_schedules_page_and_shows_the_copy(admin_client: Client) -> None:
    task = make_schedule("original")
    response = admin_client.post(reverse("admin:scheduler_app_schedule_do", args=[task.pk, "duplicate"]))
    copy = PeriodicTask.objects.get(name="original (copy)")
    assert response.status_code == 302 and response["Location"].endswith(f"/{copy.pk}/change/")
    assert copy.enabled is False


def test_it_lists_broken_rows_written_elsewhere_instead_of_failing(admin_client: Client) -> None:
    make_schedule("fine")
    broken = make_schedule("no schedule at all")
    PeriodicTask.objects.filter(pk=broken.pk).update(interval=None)
    TaskResult.objects.create(task_id="odd", task_name=TASK, status="SUCCESS", meta="[1, 2]")
    TaskResult.objects.create(task_id="odder", task_name=TASK, status="SUCCESS", meta='{"scheduled_for": "soon"}')
    body = admin_client.get(SCHEDULES).content.decode()
    assert "invalid schedule" in body and "fine" in body
    assert admin_client.get(RUNS).status_code == 200
    assert admin_client.get("/admin/dashboard/panel/").status_code == 200


def test_it_previews_from_the_start_time_given_in_the_pages_split_fields(admin_client: Client) -> None:
    data = form_data(start_time_0="2031-06-01", start_time_1="00:00:00")
    runs = admin_client.get(SCHEDULES + "preview/", data).json()["runs"]
    assert runs[0]["utc"].startswith("2031-06-01T00:30")  # 02:30 in Berlin (summer time)


def test_it_refuses_an_interval_too_long_to_compute() -> None:
    form = ScheduleForm(form_data(kind="interval", every="3000000", period="days"))
    assert not form.is_valid()
    assert "1 second to 100 years" in str(form.errors)


def test_it_previews_a_solar_schedule(admin_client: Client) -> None:
    data = form_data(kind="solar", solar_event="sunrise", latitude="52.52", longitude="13.405")
    with time_machine.travel(dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC), tick=False):
        runs = admin_client.get(SCHEDULES + "preview/", data).json()["runs"]
    assert len(runs) == 5
    assert runs[0]["utc"].startswith("2026-06-02T02:4")  # Berlin's sunrise, 04:4x summer time
    assert [run["utc"][:10] for run in runs] == ["2026-06-02", "2026-06-03", "2026-06-04", "2026-06-05", "2026-06-06"]
