"""Every console page as an operator sees it, in a real headless Chromium: at 1440 and
1024 px, light and dark, no table or card is wider than its container and every state
badge reads at WCAG AA (tests/browser.py's `check_legible`), with a screenshot of each
under test-artifacts/screenshots/test_browser_pages/. And what the pages say: the preview
gives beat's next slot, the traceback keeps its indentation, a run's title names it, the
crontab form takes a pasted expression and says the schedule in words."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from scheduler_app import schedules
from scheduler_app.models import AuditEntry, ScheduleHealth, SchedulePolicy
from scheduler_app.runs import dead_letters
from scheduler_app.runs.dead_letters import DeadLetter
from tests.browser import badge_contrasts, check_legible, contrast, login, parse_colour, shot

pytestmark = pytest.mark.django_db(transaction=True)
PASSWORD = "correct horse battery staple"
TASK = "maintenance.purge_expired_sessions"
LONG = "nightly-warehouse-export-to-the-finance-team-bucket"  # a realistic, long schedule name
TRACEBACK = """Traceback (most recent call last):
  File "/app/scheduler_app/tasks.py", line 42, in export
    rows = fetch(batch)
           ^^^^^^^^^^^^
  File "/app/warehouse/client.py", line 7, in fetch
    raise ConnectionError("warehouse did not answer")
ConnectionError: warehouse did not answer"""


@pytest.fixture
def operator(page: Page, live_server: LiveServer) -> Page:
    User.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    login(page, live_server.url, "operator", PASSWORD)
    return page


def schedule(name: str, *, cron: str | None = None, zone: str = "Europe/Berlin", **fields: Any) -> PeriodicTask:
    if cron:
        minute, hour, dom, month, dow = cron.split()
        row, _ = CrontabSchedule.objects.get_or_create(minute=minute, hour=hour, day_of_month=dom,
                                                       month_of_year=month, day_of_week=dow, timezone=zone)  # fmt: skip
        return PeriodicTask.objects.create(name=name, task=TASK, crontab=row, **fields)
    every, _ = IntervalSchedule.objects.get_or_create(every=fields.pop("every", 5), period=IntervalSchedule.MINUTES)
    return PeriodicTask.objects.create(name=name, task=TASK, interval=every, **fields)


def run(name: str, status: str, **fields: Any) -> TaskResult:
    now = timezone.now()
    meta = {
        "trigger": "beat",
        "schedule": name,
        "attempt": 1,
        "scheduled_for": (now - dt.timedelta(seconds=3)).isoformat(),
    }
    worker = "celery@worker-7f9c8d6b5-x2x4q.ops.example.internal"
    values = {"date_started": now - dt.timedelta(seconds=2), "date_done": now, "result": json.dumps(None),
              "worker": worker, "meta": json.dumps(meta), **fields}  # fmt: skip
    return TaskResult.objects.create(task_id=str(uuid.uuid4()), task_name=TASK, periodic_task_name=name,
                                     status=status, **values)  # fmt: skip


@pytest.fixture
def console() -> Iterator[dict[str, Any]]:
    """A console with something on every page: schedules in each state and health, runs in
    each state, an audit entry and a dead letter."""
    owner = User.objects.create_user("finance-data-platform-team", password="x", is_staff=True)
    now = timezone.now()
    made = [schedule(f"{LONG}-{n}", cron="30 2 * * *") for n in range(3)]
    made += [schedule(f"poll-partner-api-{n}", every=1) for n in range(3)]
    for number, task in enumerate(made):
        SchedulePolicy.objects.create(periodic_task=task, owner=owner, overlap="skip")
        state = ScheduleHealth.STATES[number % 3]
        ScheduleHealth.objects.create(periodic_task=task, state=state, since=now, checked_at=now, failures=number)
    SchedulePolicy.objects.filter(periodic_task=made[1]).update(paused_at=now, pause_note="vendor API down " * 20)
    PeriodicTask.objects.filter(pk=made[1].pk).update(enabled=False)
    for task in made:  # each schedule's last run, shown on the list
        run(task.name, "SUCCESS", date_created=now - dt.timedelta(minutes=1))
    runs = {status: run(made[0].name, status) for status in ("SUCCESS", "FAILURE", "REVOKED", "RETRY", "SKIPPED",
                                                             "PENDING", "EXPIRED", "PROGRESS")}  # fmt: skip
    runs["FAILURE"].traceback = TRACEBACK
    runs["FAILURE"].result = json.dumps({"exc_type": "ConnectionError", "exc_message": ["warehouse did not answer"]})
    runs["FAILURE"].save()
    runs["STARTED"] = run(made[3].name, "STARTED", date_started=now - dt.timedelta(seconds=12), date_done=now)
    AuditEntry.objects.create(actor_name="operator", action="pause", object_type="schedule", object_id=str(made[1].pk),
                              object_repr=made[1].name, via="admin", changes={"note": "vendor"})  # fmt: skip
    task_id = str(uuid.uuid4())
    letter = DeadLetter(task=TASK, task_id=task_id, reason="set aside: RecursionError", worker="w@host", deliveries=1,
                        body=json.dumps([[], {}, {}]), headers={"task": TASK, "id": task_id},
                        delivery={"routing_key": "celery"})  # fmt: skip
    dead_letters.add(letter)
    yield {"schedules": made, "runs": runs, "letter": letter.id}
    dead_letters.take(letter.id)


PAGES = [
    ("index", "/admin/", 0),
    ("dashboard", "/admin/dashboard/", 0),
    ("schedules", "/admin/django_celery_beat/periodictask/", 6),
    ("schedules-late", "/admin/django_celery_beat/periodictask/?health=late", 2),
    ("schedules-failing", "/admin/django_celery_beat/periodictask/?health=failing", 2),
    ("schedule-add", "/admin/django_celery_beat/periodictask/add/", 0),
    ("runs", "/admin/scheduler_app/run/", 15),
    ("audit", "/admin/scheduler_app/auditentry/", 0),
    ("dead-letters", "/admin/dead-letters/", 0),
]


@pytest.mark.parametrize(("name", "path", "badges"), PAGES, ids=[name for name, _, _ in PAGES])
def test_each_console_page_fits_and_its_badges_read(
    operator: Page, live_server: LiveServer, console: dict[str, Any], name: str, path: str, badges: int
) -> None:
    operator.goto(live_server.url + path)
    expect(operator.locator("#content")).to_be_visible()
    check_legible(operator, name, badges=badges)


def test_the_schedule_and_run_pages_fit_and_their_badges_read(
    operator: Page, live_server: LiveServer, console: dict[str, Any]
) -> None:
    page, task = operator, console["schedules"][0]
    page.goto(f"{live_server.url}/admin/django_celery_beat/periodictask/{task.pk}/change/")
    expect(page.locator("#bk-preview-table tbody tr")).to_have_count(5)
    check_legible(page, "schedule-change", badges=3)
    for status in ("SUCCESS", "FAILURE", "STARTED"):
        page.goto(f"{live_server.url}/admin/scheduler_app/run/{console['runs'][status].pk}/change/")
        check_legible(page, f"run-{status.lower()}", badges=1)
    page.goto(f"{live_server.url}/admin/dead-letters/{console['letter']}/")
    check_legible(page, "dead-letter")


def test_a_badge_once_painted_in_its_own_colour_now_reads(operator: Page, live_server: LiveServer,
                                                         console: dict[str, Any]) -> None:  # fmt: skip
    """The defect: `.bk-ok { color }` came after `.bk-badge { color: #fff }` and won."""
    operator.goto(f"{live_server.url}/admin/scheduler_app/run/?state=SUCCESS")
    found = badge_contrasts(operator)
    assert {text for text, _ in found} == {"SUCCESS"}
    assert min(ratio for _, ratio in found) >= 4.5
    colours = operator.locator("#result_list .bk-badge").first.evaluate(
        "b => [getComputedStyle(b).color, getComputedStyle(b).backgroundColor]"
    )
    assert colours[0] != colours[1]


def test_the_contrast_is_wcag_s() -> None:
    assert round(contrast(parse_colour("rgb(0, 0, 0)"), parse_colour("rgb(255, 255, 255)")), 1) == 21.0
    assert round(contrast(parse_colour("rgb(58, 155, 78)"), parse_colour("rgb(58, 155, 78)")), 1) == 1.0
    assert round(contrast(parse_colour("rgb(255, 255, 255)"), parse_colour("rgb(58, 155, 78)")), 2) == 3.51


# --- what the pages say --------------------------------------------------------------------


def test_the_interval_preview_shows_the_slot_from_the_last_run_as_beat_does(
    operator: Page, live_server: LiveServer
) -> None:
    last = timezone.now() - dt.timedelta(minutes=2)
    task = schedule("every-ten-minutes", every=10, last_run_at=last)
    shown = schedules.next_run(task).at
    assert shown is not None and abs(shown - (last + dt.timedelta(minutes=10))) < dt.timedelta(seconds=1)
    operator.goto(f"{live_server.url}/admin/django_celery_beat/periodictask/{task.pk}/change/")
    first = operator.locator("#bk-preview-table tbody tr").first.locator("td").nth(1)
    expect(first).to_have_text(f"{shown:%Y-%m-%d %H:%M:%S} UTC")  # to the second, as beat will send it
    operator.goto(f"{live_server.url}/admin/django_celery_beat/periodictask/")
    listed = operator.locator("#result_list tr:has-text('every-ten-minutes') td.field-next_run span").first
    expect(listed).to_have_attribute("title", f"{shown:%Y-%m-%d %H:%M:%S} UTC")


def test_the_run_page_keeps_the_traceback_names_the_run_and_times_it(
    operator: Page, live_server: LiveServer, console: dict[str, Any]
) -> None:
    failed, started = console["runs"]["FAILURE"], console["runs"]["STARTED"]
    operator.goto(f"{live_server.url}/admin/scheduler_app/run/{failed.pk}/change/")
    title = f"Run {TASK} {failed.task_id[:8]} — FAILURE"
    expect(operator.locator("#content h1")).to_have_text(title)
    expect(operator.locator(".breadcrumbs")).to_contain_text(title)
    assert "<Task" not in operator.locator("#content").inner_text()
    traceback = operator.locator("#bk-traceback")
    assert traceback.inner_text() == TRACEBACK  # every line's indentation as written
    assert "monospace" in traceback.evaluate("e => getComputedStyle(e).fontFamily")
    right = traceback.evaluate("e => e.getBoundingClientRect().right")
    assert right <= operator.evaluate("document.documentElement.clientWidth")  # the box is on the page, not cut off
    assert traceback.evaluate("e => getComputedStyle(e).overflowX") == "auto"  # a long line scrolls in it
    shot(operator, "failure")

    operator.goto(f"{live_server.url}/admin/scheduler_app/run/{started.pk}/change/")
    expect(operator.locator(".field-took .readonly")).to_have_text(re.compile(r"^running for 1\d\.\d s$"))
    expect(operator.locator(".field-completed .readonly")).to_have_text("–")
    expect(operator.locator(".field-started .readonly")).to_have_text(
        timezone.localtime(started.date_started).strftime("%Y-%m-%d %H:%M:%S %Z")
    )
    shot(operator, "started")


def test_the_crontab_form_takes_a_pasted_expression_and_says_the_schedule_in_words(
    operator: Page, live_server: LiveServer
) -> None:
    page = operator
    page.goto(f"{live_server.url}/admin/django_celery_beat/periodictask/add/")
    expect(page.locator("#id_minute")).to_have_value("0")  # a new crontab: hourly on the hour, not every minute
    page.locator("#id_name").fill("nightly-report")
    page.locator("#id_task").select_option(TASK)
    page.locator("#id_cron_timezone").fill("Europe/Berlin")
    page.locator("#bk-cron-paste").fill("30 2 * * *")
    fields = ["#id_minute", "#id_hour", "#id_day_of_month", "#id_month_of_year", "#id_day_of_week"]
    assert [page.locator(field).input_value() for field in fields] == ["30", "2", "*", "*", "*"]
    expect(page.locator("#bk-preview-table tbody tr").first).to_contain_text("02:30:00 CE")

    page.locator("#id_hour").fill("25")  # the preview's error by the field, not under the whole form
    error = page.locator(".field-hour + .bk-preview-error")
    expect(error).to_contain_text("not in 0-23")
    field_box = page.locator("#id_hour").bounding_box()
    error_box = error.bounding_box()
    assert field_box is not None and error_box is not None and 0 <= error_box["y"] - field_box["y"] < 120
    page.locator("input[name=_continue]").click()  # refused by the server: its error under the field too
    server_error = page.locator(".form-multiline > div:has(#id_hour) :is(.errorlist, .bk-preview-error)").first
    expect(server_error).to_contain_text("not in 0-23")
    expect(page.locator(".errornote")).to_be_visible()
    shot(page, "error-by-the-field")
    text = server_error.evaluate(
        "e => { const r = document.createRange(); r.selectNodeContents(e);"
        " return [...r.getClientRects()].map(x => [x.left, x.top, x.right, x.bottom]); }"
    )
    after = page.locator(".fieldBox.field-day_of_month").bounding_box()
    assert after is not None
    runs_in = [line for line in text if line[2] > after["x"] and line[0] < after["x"] + after["width"]
               and line[3] > after["y"] and line[1] < after["y"] + after["height"]]  # fmt: skip
    assert runs_in == [], "the error text runs into the next field's label"

    page.locator("#id_hour").fill("2")
    page.locator("input[name=_continue]").click()
    words = "nightly-report (At 02:30 AM (Europe/Berlin))"
    expect(page.locator(".messagelist")).to_contain_text(f"“{words}” was added successfully")
    expect(page.locator(".messagelist")).not_to_contain_text("m/h/dM/MY/d")
    expect(page.locator("#content h2").first).to_have_text(words)
    expect(page.locator(".breadcrumbs")).to_contain_text(words)
    shot(page, "added")


def test_the_dashboard_lists_runs_due_in_the_first_minute_and_frequent_schedules(
    operator: Page, live_server: LiveServer
) -> None:
    """No schedule check has run yet (no ScheduleHealth): the upcoming runs come from the schedules."""
    schedule("every-minute", every=1)
    schedule("nightly", cron="30 2 * * *")
    operator.goto(f"{live_server.url}/admin/dashboard/")
    upcoming = operator.locator("#bk-upcoming")
    expect(upcoming).to_contain_text("every-minute")
    expect(upcoming).to_contain_text("nightly")
    expect(upcoming).to_contain_text(re.compile(r"\d{2}:\d{2}:\d{2} CE[S]?T"))  # the zone named
    assert upcoming.locator("tr:has-text('every-minute')").count() == 3  # the next three, not only one
    shot(operator, "upcoming")
