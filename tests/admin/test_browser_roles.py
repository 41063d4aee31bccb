"""The seeded roles in a real headless Chromium: on a schedule's page a Viewer sees the schedule
(in words) and no control (no run now, pause, duplicate, save, nor an input); an Operator sees
run now and pause, and no save, duplicate or policy input, and pausing from there works. Screenshots go to
test-artifacts/screenshots/test_browser_roles/."""

from __future__ import annotations

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from tests.browser import force_login, shot
from tests.roles_kit import person

pytestmark = pytest.mark.django_db(transaction=True)
TASK = "maintenance.purge_expired_sessions"


def schedule_page(page: Page, live_server: LiveServer, who: str) -> PeriodicTask:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    task = PeriodicTask.objects.create(name="nightly export", task=TASK, interval=every)
    force_login(page, live_server.url, person(who))
    page.goto(f"{live_server.url}/admin/django_celery_beat/periodictask/{task.pk}/change/")
    expect(page.locator("#content h1, #content h2").first).to_be_visible()
    expect(page.get_by_text("nightly export").first).to_be_visible()
    return task


def test_a_viewer_sees_a_schedule_and_no_control(page: Page, live_server: LiveServer) -> None:
    schedule_page(page, live_server, "viewer")
    expect(page.locator(".breadcrumbs")).to_contain_text("nightly export")
    for control in ("#bk-run-now", "#bk-pause", "#bk-resume", "#bk-duplicate", "input[name=_save]",
                    "input[name=_continue]", "a.deletelink"):  # fmt: skip
        expect(page.locator(control)).to_have_count(0)
    expect(page.locator(".field-schedule .readonly")).to_have_text("every hour")  # in words, not empty inputs
    expect(page.locator("#content input:not([type=hidden]), #content select, #content textarea")).to_have_count(0)
    expect(page.locator("#bk-preview")).to_have_count(0)  # it follows the inputs: none here
    shot(page, "viewer")


def test_an_operator_sees_run_now_and_pause_but_no_save(page: Page, live_server: LiveServer) -> None:
    task = schedule_page(page, live_server, "operator")
    expect(page.locator("#bk-run-now")).to_be_visible()
    expect(page.locator("#bk-pause")).to_be_visible()
    for control in ("#bk-duplicate", "input[name=_save]", "input[name=_continue]", "a.deletelink"):
        expect(page.locator(control)).to_have_count(0)
    expect(page.locator("#content input:not([type=hidden]):not(#bk-pause-note), #content select")).to_have_count(0)
    shot(page, "operator")
    page.locator("#bk-pause-note").fill("deploy window")
    page.locator("#bk-pause").click()
    expect(page.locator(".messagelist")).to_contain_text("Paused")
    expect(page.locator("#bk-resume")).to_be_visible()
    task.refresh_from_db()
    assert not task.enabled and task.policy.pause_note == "deploy window"
