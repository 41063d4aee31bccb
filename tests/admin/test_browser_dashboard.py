"""Issue 21: what the README promises of the dashboard and the run page, read in a real headless
Chromium as an operator reads them. The dashboard's figures (runs, error rate, p95 duration,
peak concurrency, runs in progress, over the last 24 hours and over all kept runs) are the
ones worked out by hand from the seeded rows; its upcoming runs are the schedules' next
slots, each in its own zone (named) and in UTC; and a running run's page shows the run's end
without anyone reloading it. Screenshots go to test-artifacts/screenshots/test_browser_dashboard/."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from tests.browser import drawn_pixels, force_login, shot

pytestmark = pytest.mark.django_db(transaction=True)
TASK = "maintenance.purge_expired_sessions"
UTC = dt.UTC
REFRESH_MS = 20_000  # the run page reloads itself every 3 s; a slow machine gets several chances


def run(status: str, start: dt.datetime, seconds: float | None, **fields: Any) -> TaskResult:
    """A run created and started at `start` that took `seconds` (None: not started yet)."""
    meta, result = json.dumps({"trigger": "beat"}), json.dumps(None)
    row = TaskResult.objects.create(task_id=str(uuid.uuid4()), task_name=TASK, status=status, meta=meta,
                                    result=result, **fields)  # fmt: skip
    started = None if seconds is None else start
    done = start if seconds is None else start + dt.timedelta(seconds=seconds)
    TaskResult.objects.filter(pk=row.pk).update(date_created=start, date_started=started, date_done=done)
    return row


def figures(page: Page, card: str) -> dict[str, str]:
    """A figures card as shown: each row's label and value."""
    rows = page.locator(f".bk-card:has(h3:text-is('{card}')) table.bk-figures tr")
    expect(rows).to_have_count(8)
    return {row.locator("th").inner_text().strip(): row.locator("td").inner_text().strip() for row in rows.all()}


def test_the_dashboard_shows_the_figures_worked_out_from_the_runs(page: Page, live_server: LiveServer) -> None:
    """The last 24 hours: 21 finished runs taking 1, 2, ... 21 s (14 successes, 7 failures),
    one a minute after another except the four longest (18-21 s), started a second apart so
    all four run at once; a revoked, an expired, a skipped and a queued run that never
    started; two runs in progress (their last write a fifth of a second after their start).
    Three days before: 20 more finished runs (10 failures) of 101 ... 120 s, a minute apart
    (two at a time at most). By hand:

    - last 24 h: 27 runs, error rate 7 / 21 = 33 %, p95 duration 20 s, peak concurrency 4,
      2 running now;
    - all kept: 47 runs, 24 successes, 17 failures, error rate 17 / 41 = 41 %, p95 118 s, peak 4.

    p95 is the same by each usual definition here: nearest rank (the 20th of 21, the 39th
    of 41), and interpolated between ranks (position 0.95 × 20 = 19 and 0.95 × 40 = 38 fall
    on a rank); nor does it change with the two running runs' spans counted or not.
    """
    now = timezone.now().replace(microsecond=0)
    base = now - dt.timedelta(hours=6)
    for seconds in range(1, 22):
        status = "FAILURE" if seconds % 3 == 0 else "SUCCESS"  # 3, 6, ... 21: 7 failures
        if seconds <= 17:  # a minute apart: never two at once
            run(status, base + dt.timedelta(minutes=seconds), seconds)
        else:  # 18-21 s: started a second apart, 30 minutes later: all four at once
            run(status, base + dt.timedelta(minutes=30, seconds=seconds - 18), seconds)
    for status in ("REVOKED", "EXPIRED", "SKIPPED", "PENDING"):
        run(status, now - dt.timedelta(minutes=2), None)
    run("STARTED", now - dt.timedelta(minutes=12), 0.2)
    run("PROGRESS", now - dt.timedelta(minutes=13), 0.2)
    for number in range(20):
        run("FAILURE" if number % 2 else "SUCCESS", now - dt.timedelta(days=3, minutes=-number), 101 + number)
    force_login(page, live_server.url, User.objects.create_superuser("operator", password="x"))

    page.goto(f"{live_server.url}/admin/dashboard/")
    day, kept = figures(page, "Runs, last 24 h"), figures(page, "Runs, all kept")
    shot(page, "figures")
    shown = ("runs", "successes", "failures", "error rate", "p95 duration", "peak concurrency", "running now")
    assert {k: day[k] for k in shown} == {"runs": "27", "successes": "14", "failures": "7", "error rate": "33 %",
                                          "p95 duration": "20.00 s", "peak concurrency": "4",
                                          "running now": "2"}  # fmt: skip
    assert {k: kept[k] for k in shown} == {"runs": "47", "successes": "24", "failures": "17", "error rate": "41 %",
                                           "p95 duration": "118.00 s", "peak concurrency": "4",
                                           "running now": "2"}  # fmt: skip
    # The charts are Chart.js's, drawn from the same figures: the bars per state add up to the
    # day's counts, the per-task bars name the task, and both canvases hold a drawing.
    expect(page.locator("#bk-dashboard")).to_have_attribute("data-charts", "2")
    sums = page.evaluate("""() => Chart.getChart('bk-chart-hours').data.datasets.map(
        (set) => [set.label, set.data.reduce((a, b) => a + b, 0)])""")
    assert dict(sums) == {"success": 14, "failure": 7, "other": 6}, sums
    assert page.evaluate("() => Chart.getChart('bk-chart-tasks').data.labels") == [TASK]
    for chart in ("bk-chart-hours", "bk-chart-tasks"):
        assert drawn_pixels(page, chart) > 1_000, f"{chart} looks blank"


def next_cron(now: dt.datetime, zone: str, hours: set[int], minute: int, count: int) -> list[dt.datetime]:
    """The next `count` times after `now` at `minute` past one of `hours`, by the wall clock of `zone`."""
    tz, found = ZoneInfo(zone), list[dt.datetime]()
    day = now.astimezone(tz).date()
    while len(found) < count:
        for hour in sorted(hours):
            at = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
            if at > now and len(found) < count:
                found.append(at)
        day += dt.timedelta(days=1)
    return found


def shown(at: dt.datetime) -> tuple[str, str]:
    """A time as the upcoming runs give it: in its zone (named), then in UTC."""
    return f"{at:%Y-%m-%d %H:%M:%S %Z}", f"{at.astimezone(UTC):%H:%M:%S} UTC"


def test_the_dashboard_lists_the_upcoming_runs_in_their_zones(page: Page, live_server: LiveServer) -> None:
    """The next 24 hours' runs, soonest first, at most three per schedule, each at the time
    worked out here from the schedule (not from the product's code): a Berlin crontab (once a
    day), a New York one every 6 hours (three of its four), an interval of 7 hours from its
    last run, a one-off in 3 hours. A disabled schedule and a one-off in 30 hours are not listed."""
    now = timezone.now().replace(microsecond=0)
    berlin = CrontabSchedule.objects.create(minute="30", hour="2", timezone="Europe/Berlin")
    new_york = CrontabSchedule.objects.create(minute="0", hour="*/6", timezone="America/New_York")
    seven = IntervalSchedule.objects.create(every=7, period=IntervalSchedule.HOURS)
    hourly = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
    soon = ClockedSchedule.objects.create(clocked_time=now + dt.timedelta(hours=3))
    later = ClockedSchedule.objects.create(clocked_time=now + dt.timedelta(hours=30))
    PeriodicTask.objects.create(name="nightly-report", task=TASK, crontab=berlin)
    PeriodicTask.objects.create(name="new-york-sync", task=TASK, crontab=new_york)
    PeriodicTask.objects.create(name="every-seven-hours", task=TASK, interval=seven,
                                last_run_at=now - dt.timedelta(hours=1))  # fmt: skip
    PeriodicTask.objects.create(name="switched-off", task=TASK, interval=hourly, enabled=False)
    PeriodicTask.objects.create(name="one-off-soon", task=TASK, clocked=soon, one_off=True)
    PeriodicTask.objects.create(name="one-off-later", task=TASK, clocked=later, one_off=True)
    expected = [("nightly-report", at) for at in next_cron(now, "Europe/Berlin", {2}, 30, 1)]
    expected += [("new-york-sync", at) for at in next_cron(now, "America/New_York", {0, 6, 12, 18}, 0, 3)]
    expected += [("every-seven-hours", now + dt.timedelta(hours=h)) for h in (6, 13, 20)]  # UTC: the server's zone
    expected += [("one-off-soon", now + dt.timedelta(hours=3))]
    expected.sort(key=lambda row: (row[1], row[0]))
    force_login(page, live_server.url, User.objects.create_superuser("operator", password="x"))

    page.goto(f"{live_server.url}/admin/dashboard/")
    rows = page.locator("#bk-upcoming tr:has(td)")
    expect(rows).to_have_count(len(expected))
    shot(page, "upcoming")
    listed = []
    for row in rows.all():
        name = row.locator("td a").inner_text()
        at, utc = row.locator("td").nth(1).inner_text().split("\n")
        assert row.locator("td").nth(2).inner_text().startswith("in "), name
        listed.append((name, (at.strip(), utc.strip())))
    assert listed == [(name, shown(at)) for name, at in expected]


def test_a_running_runs_page_shows_its_end_without_a_reload(page: Page, live_server: LiveServer) -> None:
    """The run's page refreshes itself while the run is running: the recorder writes the end
    to the row, and the open page shows SUCCESS, the result and the duration by itself; then
    it stops refreshing."""
    now = timezone.now()
    row = run("PROGRESS", now - dt.timedelta(seconds=5), 0.2)
    force_login(page, live_server.url, User.objects.create_superuser("operator", password="x"))
    page.goto(f"{live_server.url}/admin/scheduler_app/run/{row.pk}/change/")
    badge = page.locator(".field-state .bk-badge")
    expect(badge).to_have_text("PROGRESS")
    expect(page.locator(".field-completed .readonly")).to_have_text("–")
    shot(page, "running")

    done = timezone.now()
    TaskResult.objects.filter(pk=row.pk).update(status="SUCCESS", result=json.dumps({"rows": 42}), date_done=done)
    expect(badge).to_have_text("SUCCESS", timeout=REFRESH_MS)  # no reload here: the page's own
    expect(page.locator(".field-pretty_result")).to_contain_text('"rows": 42')
    expect(page.locator(".field-completed .readonly")).to_have_text(
        timezone.localtime(done).strftime("%Y-%m-%d %H:%M:%S %Z")
    )
    expect(page.locator("#content h1")).to_contain_text("— SUCCESS")
    assert page.locator("meta[http-equiv=refresh]").count() == 0  # a finished run's page stays put
    shot(page, "finished")
