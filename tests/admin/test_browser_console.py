"""The console end to end in a real headless Chromium, against the live server, a real
worker and the real broker: create a schedule (a bad field first), watch the preview, run
it now and see the run finish, pause it with a note, read the runs and the dashboard.
Screenshots of each page go to test-artifacts/screenshots/test_browser_console/."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from playwright.sync_api import Dialog, Page, expect
from pytest_django.live_server_helper import LiveServer

from tests.browser import login, shot
from tests.processes import wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)
PASSWORD = "correct horse battery staple"
XSS = "<script>alert(1)</script>"


@pytest.fixture
def operator_page(page: Page, live_server: LiveServer) -> Iterator[Page]:
    """A logged-in superuser's page that fails the test if any script opens a dialog."""
    dialogs: list[str] = []

    def record(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", record)
    User.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    login(page, live_server.url, "operator", PASSWORD)
    yield page
    assert dialogs == [], f"a script ran: {dialogs}"


def reload_until(page: Page, text: str, where: str, timeout: float) -> None:
    def shows() -> bool:
        page.reload()
        return text in page.locator(where).inner_text()

    wait_for(shows, timeout, f"{text!r} in {where}", interval=1)


def next_five_minutes(moment: dt.datetime) -> dt.datetime:
    """The first slot of `*/5 * * * *` strictly after `moment`."""
    floor = moment.replace(minute=moment.minute - moment.minute % 5, second=0, microsecond=0)
    return floor + dt.timedelta(minutes=5)


def check_preview_times(page: Page, before: dt.datetime, after: dt.datetime) -> None:
    """The preview's rows, as a person reads them, are the next five slots of `*/5 * * * *`
    after the moment it was asked for (between `before` and `after`), each in Berlin time
    and in UTC, the two columns the same moment."""
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    rows = [row.locator("td").all_inner_texts() for row in page.locator("#bk-preview-table tbody tr").all()]
    utc = [dt.datetime.strptime(r[1], "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=dt.UTC) for r in rows]
    assert utc[0] in {next_five_minutes(before), next_five_minutes(after)}, rows
    assert utc == [utc[0] + n * dt.timedelta(minutes=5) for n in range(5)], rows
    assert [r[0] for r in rows] == [f"{at.astimezone(berlin):%Y-%m-%d %H:%M:%S %Z}" for at in utc], rows


def test_an_operator_creates_runs_pauses_and_watches_a_schedule(
    operator_page: Page, live_server: LiveServer, tmp_path: Path
) -> None:
    page = operator_page
    shot(page, "01-index")
    page.goto(f"{live_server.url}/admin/django_celery_beat/periodictask/add/")
    page.locator("#id_name").fill(XSS)
    page.locator("#id_task").select_option("maintenance.purge_expired_sessions")
    page.locator("#id_minute").fill("61")
    page.locator("#id_cron_timezone").fill("Europe/Berlin")
    expect(page.locator("#bk-preview-status")).to_contain_text("not in 0-59 for Minutes")
    page.locator("input[name=_continue]").click()
    expect(page.locator(".field-minute .errorlist")).to_contain_text("'61', not in 0-59 for Minutes. Allowed: 0-59")
    shot(page, "02-invalid-field")

    before = timezone.now()
    page.locator("#id_minute").fill("*/5")
    expect(page.locator("#bk-preview-table tbody tr")).to_have_count(5)
    expect(page.locator("#bk-preview-status")).to_contain_text("zone Europe/Berlin")
    check_preview_times(page, before, timezone.now())
    shot(page, "03-preview")
    page.locator("input[name=_continue]").click()
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    task = PeriodicTask.objects.get(name=XSS)
    assert (task.crontab.minute, str(task.crontab.timezone)) == ("*/5", "Europe/Berlin")

    with worker(tmp_path):
        page.locator("#bk-run-now").click()
        expect(page.locator(".messagelist")).to_contain_text("Queued a run")
        shot(page, "04-run-queued")
        reload_until(page, "SUCCESS", ".field-last_runs", 60)
        expect(page.locator(".field-last_runs")).to_contain_text("manual (operator)")
        shot(page, "05-run-finished")

    page.locator("#bk-pause-note").fill("vendor API down until Monday")
    page.locator("#bk-pause").click()
    expect(page.locator(".messagelist")).to_contain_text("Paused")
    expect(page.locator(".field-pause_state")).to_contain_text("vendor API down until Monday")
    page.goto(f"{live_server.url}/admin/django_celery_beat/periodictask/?state=paused")
    expect(page.locator("#result_list")).to_contain_text("paused")
    expect(page.locator("#result_list")).to_contain_text(XSS)  # shown as text, not run
    shot(page, "06-paused-in-list")

    page.goto(f"{live_server.url}/admin/scheduler_app/run/")
    expect(page.locator("#result_list")).to_contain_text("SUCCESS")
    page.locator("#result_list tbody .field-run a").first.click()
    expect(page.locator(".field-context")).to_contain_text('"trigger": "manual"')
    shot(page, "07-run")

    page.goto(f"{live_server.url}/admin/")
    page.locator("#bk-dashboard-link").click()
    expect(page.locator("#bk-dashboard")).to_contain_text("Schedules")
    expect(page.locator("#bk-dashboard")).to_contain_text("1 paused")
    expect(page.locator("#bk-dashboard canvas#bk-chart-hours")).to_be_visible()
    expect(page.locator("#bk-dashboard")).to_have_attribute("data-charts", "2")  # Chart.js drew both
    expect(page.locator("#bk-dashboard")).to_have_attribute("data-refreshed", re.compile(r"[1-9]"), timeout=30_000)
    shot(page, "08-dashboard")
