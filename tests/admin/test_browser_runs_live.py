"""The runs list refreshes itself (issue 15's live lists), in a real headless Chromium: a run
written to the database appears without a reload, the list keeps its filters, and a ticked
box holds the refresh until it is unticked; after a refresh Django's actions still work on
the new rows. Screenshots go to test-artifacts/screenshots/test_browser_runs_live/."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from tests.admin.test_browser_pages import run
from tests.browser import force_login, shot

pytestmark = pytest.mark.django_db(transaction=True)
REFRESH_MS = 25_000  # the list asks every 10 s; a 2-core machine may be slow to answer
# Count the live region's idle checks (htmx calls bkLiveIdle at each 10 s tick) and what they said.
COUNT_CHECKS = """() => {
  const asked = window.bkLiveIdle;
  window.bkChecks = [];
  window.bkLiveIdle = id => { const idle = asked(id); window.bkChecks.push(idle); return idle; };
}"""


def test_the_runs_list_shows_a_new_run_without_a_reload_and_keeps_its_filter(
    page: Page, live_server: LiveServer
) -> None:
    first = run("nightly", "FAILURE")
    force_login(page, live_server.url, User.objects.create_superuser("operator", password="x"))
    page.goto(f"{live_server.url}/admin/scheduler_app/run/?state=FAILURE")
    region = page.locator("#bk-runs")
    expect(region).to_contain_text(first.task_id[:8])
    assert "state=FAILURE" in (region.get_attribute("hx-get") or "")
    page.evaluate("window.bkNotReloaded = true")

    failed, succeeded = run("nightly", "FAILURE"), run("nightly", "SUCCESS")
    expect(region).to_contain_text(failed.task_id[:8], timeout=REFRESH_MS)  # the refresh, not a reload
    expect(region).not_to_contain_text(succeeded.task_id[:8])  # the filter held
    expect(region.locator("tr input.action-select")).to_have_count(2)
    assert page.evaluate("window.bkNotReloaded") is True
    shot(page, "runs-refreshed")

    # A ticked box holds the refresh: the list stays as it is while one is ticked.
    page.evaluate(COUNT_CHECKS)
    box = region.locator("tr input.action-select").first
    box.check()
    page.evaluate("document.activeElement.blur()")  # the tick alone holds it, not the focus
    waiting = run("nightly", "FAILURE")
    page.wait_for_function("window.bkChecks.length >= 1", timeout=REFRESH_MS)  # a tick came and passed
    assert page.evaluate("window.bkChecks") == [False] * len(page.evaluate("window.bkChecks"))
    expect(region).not_to_contain_text(waiting.task_id[:8])
    expect(box).to_be_checked()
    expect(page.locator(".action-counter")).to_have_text("1 of 2 selected")

    box.uncheck()
    page.evaluate("document.activeElement.blur()")
    expect(region).to_contain_text(waiting.task_id[:8], timeout=REFRESH_MS)
    assert page.evaluate("window.bkNotReloaded") is True
    # Django's actions.js is bound to the new rows: ticking one marks it and counts it.
    fresh = region.locator("tr input.action-select").first
    fresh.check()
    expect(fresh.locator("xpath=ancestor::tr")).to_have_class("selected")
    expect(page.locator(".action-counter")).to_have_text("1 of 3 selected")
    page.locator("#action-toggle").check()
    expect(page.locator(".action-counter")).to_have_text("3 of 3 selected")
    shot(page, "runs-ticked")
