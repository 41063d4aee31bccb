"""The failures and trends pages in a real headless Chromium at a laptop's and a small
screen's width: each table within its container, the traceback in a monospace font with
its indentation, both charts drawn (pixels on the canvas) within their boxes. Screenshots
go to test-artifacts/screenshots/test_browser_insights/."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from tests.admin.test_failures_trends import OTHER, TASK, run
from tests.browser import check_legible, drawn_pixels, force_login, shot

pytestmark = pytest.mark.django_db(transaction=True)
WIDTHS = (1440, 1024)
OVERFLOW = """(selector) => {
  const element = document.querySelector(selector);
  const box = element.parentElement.getBoundingClientRect();
  const main = document.querySelector('#content').getBoundingClientRect();
  const own = element.getBoundingClientRect();
  return {width: own.width, parent: box.width, right: own.right, main: main.right,
          page: document.documentElement.scrollWidth, window: window.innerWidth};
}"""


def rows_of_a_busy_day() -> None:
    now = timezone.now()
    for hour in range(0, 20, 2):
        for seconds in (0.4, 1.2, 3.5):
            run(TASK, created=now - dt.timedelta(hours=hour, minutes=5), seconds=seconds + hour / 10)
        run(OTHER, "FAILURE", created=now - dt.timedelta(hours=hour, minutes=7), seconds=2, exc="ConnectionError")
    run("billing.tasks.a_task_with_a_rather_long_name_that_must_wrap_in_its_cell", "FAILURE", exc="KeyError")


def within(page: Page, selector: str) -> None:
    box = page.evaluate(OVERFLOW, selector)
    assert box["width"] <= box["parent"] + 1 and box["right"] <= box["main"] + 1, box
    assert box["page"] <= box["window"], box  # no sideways scrolling of the whole page


@pytest.mark.parametrize("width", WIDTHS)
def test_the_failures_page_fits_and_keeps_the_tracebacks_shape(page: Page, live_server: LiveServer, width: int) -> None:
    rows_of_a_busy_day()
    force_login(page, live_server.url, User.objects.create_superuser("operator", password="x"))
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(f"{live_server.url}/admin/failures/?window=7d")
    expect(page.locator(".bk-failure-group")).to_have_count(2)
    expect(page.locator(".bk-failure-count").first).to_have_text("10")
    within(page, "#result_list")
    page.locator(".bk-failure-sample summary").first.click()
    traceback = page.locator(".bk-traceback").first
    expect(traceback).to_be_visible()
    style = traceback.evaluate("(e) => [getComputedStyle(e).fontFamily, getComputedStyle(e).whiteSpace]")
    assert "mono" in style[0].lower() and style[1] == "pre", style
    assert '\n  File "job.py", line 3, in run\n    fetch()' in traceback.inner_text()
    within(page, "#result_list")
    shot(page, f"failures-{width}")
    page.locator("a.button", has_text="Retry").first.click()
    expect(page.locator("#bk-failures-confirm")).to_contain_text("Send 10 failed runs")
    shot(page, f"failures-confirm-{width}")


@pytest.mark.parametrize("width", WIDTHS)
def test_the_trends_page_draws_both_charts_within_their_boxes(page: Page, live_server: LiveServer, width: int) -> None:
    rows_of_a_busy_day()
    force_login(page, live_server.url, User.objects.create_superuser("operator", password="x"))
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(f"{live_server.url}/admin/trends/?window=24h&task={TASK}")
    expect(page.locator("#bk-trends")).to_have_attribute("data-drawn", "1")
    for chart in ("bk-chart-throughput", "bk-chart-duration"):
        within(page, f"#{chart}")
        assert drawn_pixels(page, chart) > 2_000, f"{chart} looks blank"
        assert page.locator(f"#{chart}").bounding_box()["height"] >= 250  # type: ignore[index]
    within(page, "#result_list")
    expect(page.locator("#result_list")).to_contain_text(TASK)
    shot(page, f"trends-{width}")
    page.goto(f"{live_server.url}/admin/trends/?window=7d")
    expect(page.locator("#bk-trends")).to_have_attribute("data-drawn", "1")
    assert drawn_pixels(page, "bk-chart-duration") > 2_000
    shot(page, f"trends-7d-{width}")


def test_the_failures_and_trends_pages_are_legible_and_the_failures_refresh(
    page: Page, live_server: LiveServer
) -> None:
    """Both pages at 1440 and 1024 px, light and dark (tests/browser.py's `check_legible`), and
    the failures page's groups refresh themselves (every 10 s) without a reload."""
    rows_of_a_busy_day()
    force_login(page, live_server.url, User.objects.create_superuser("operator", password="x"))
    page.goto(f"{live_server.url}/admin/failures/?window=7d")
    expect(page.locator(".bk-failure-group")).to_have_count(2)
    page.locator(".bk-failure-sample summary").first.click()  # an open traceback in the pictures
    check_legible(page, "failures")
    page.locator(".bk-failure-sample details[open] summary").click()  # closed: an open one holds the refresh
    page.evaluate("document.activeElement.blur()")  # and so does the focus on its summary
    page.evaluate("window.bkNotReloaded = true")
    run("reports.tasks.a_new_failure", "FAILURE", exc="ValueError")
    expect(page.locator(".bk-failure-group")).to_have_count(3, timeout=25_000)  # the refresh, not a reload
    assert "window=7d" in (page.locator("#bk-failures-live").get_attribute("hx-get") or "")
    assert page.evaluate("window.bkNotReloaded") is True

    page.goto(f"{live_server.url}/admin/trends/?window=24h&task={TASK}")
    expect(page.locator("#bk-trends")).to_have_attribute("data-drawn", "1")
    check_legible(page, "trends")
