"""Browser tests: the admin in a real headless Chromium (Debian's, which `make test` installs),
driven by Playwright's sync API. Registered from tests/conftest.py.

A test that takes `page` gets a fresh browser context (no cookies, 1400x900); it pairs with
pytest-django's `live_server` and `@pytest.mark.django_db(transaction=True)`, so that the
server's thread sees the rows the test writes. `shot(page, name)` keeps a full-page PNG under
test-artifacts/screenshots/<module>/<test>/, and a failing test leaves one named `failure`.
"""

from __future__ import annotations

import os
import re
import shutil
import weakref
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.conf import settings
from django.test import Client
from playwright.sync_api import Browser, BrowserContext, Error, Page, ViewportSize, expect, sync_playwright

if TYPE_CHECKING:
    from django.contrib.auth.models import User

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = Path(os.environ.get("BEATKEEPER_CHROMIUM") or "/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",  # root in CI, and no user namespaces in containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no calls home from a machine without internet
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1400, "height": 900}
BROWSER_FIXTURES = {"browser", "page"}

_CALL_REPORT = pytest.StashKey[pytest.TestReport]()
_SHOT_DIRS: weakref.WeakKeyDictionary[BrowserContext, Path] = weakref.WeakKeyDictionary()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the browser tests last (after pytest-django's own ordering, which stays as it was).

    While Playwright runs, its event loop counts as running in the test thread (see `browser`),
    so every test after the first browser test would run inside it. Last, only browser tests do.
    """
    items.sort(key=_is_browser_test)
    if _in_ci() and any(map(_is_browser_test, items)):
        _require_chromium()  # fail CI at once, not after the rest of the suite


def _is_browser_test(item: pytest.Item) -> bool:
    return bool(BROWSER_FIXTURES & set(getattr(item, "fixturenames", ())))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _require_chromium() -> None:
    """Skip the browser tests on a developer's machine without Chromium; fail the run under CI."""
    if CHROMIUM.exists():
        return
    message = f"the browser tests need Chromium at {CHROMIUM} (`make test` installs Debian's chromium)"
    if _in_ci():
        pytest.exit(f"{message}\nThe test suite needs it; nothing was skipped.", returncode=3)
    pytest.skip(message)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep the call phase's report, so the `page` fixture knows to take a failure screenshot."""
    report = yield
    if report.when == "call":
        item.stash[_CALL_REPORT] = report
    return report


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One Chromium for the whole run; each test gets its own context from `page`.

    Playwright's sync API runs its asyncio event loop in the test thread (on a greenlet it
    switches to), and the loop stays the thread's running loop between calls. Django sees a
    running loop and refuses ORM calls (SynchronousOnlyOperation) in the test and in
    pytest-django's database fixtures. Nothing is really concurrent: the loop only runs while a
    Playwright call blocks, and the live server answers from its own thread. So the check is off
    while Playwright runs, and browser tests run last so no other test runs without it.
    """
    _require_chromium()
    expect.set_options(timeout=10_000)  # a 2-core CI machine can take more than the default 5 s
    with (
        pytest.MonkeyPatch.context() as patch,
        sync_playwright() as playwright,
    ):
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A page in a new context, so no test sees another's cookies; screenshots it if the test fails."""
    context = browser.new_context(viewport=VIEWPORT)
    _SHOT_DIRS[context] = _screenshot_dir(request.node)
    shutil.rmtree(_SHOT_DIRS[context], ignore_errors=True)  # only this run's pictures
    try:
        yield context.new_page()
        report = request.node.stash.get(_CALL_REPORT, None)
        if report is not None and report.failed:
            _failure_shot(context)
    finally:
        context.close()


def _screenshot_dir(item: pytest.Item) -> Path:
    name = re.sub(r"[^\w.\[\]=-]+", "_", item.name)  # parametrized ids may hold slashes or spaces
    return SCREENSHOTS / item.path.stem / name


def _failure_shot(context: BrowserContext) -> None:
    """The last page as it was when the test failed; a page that crashed gives none, quietly,
    so the test's own error stays the one reported."""
    for number, failed_page in enumerate(context.pages):
        try:
            shot(failed_page, "failure" if number == 0 else f"failure-{number}")
        except Error:
            pass


def shot(page: Page, name: str) -> Path:
    """Save a full-page PNG of `page` as test-artifacts/screenshots/<module>/<test>/<name>.png.

    CI keeps test-artifacts/, so a reviewer sees what the browser saw; returns the file's path.
    """
    try:
        directory = _SHOT_DIRS[page.context]
    except KeyError:
        raise ValueError("shot() takes a page from the `page` fixture (it knows the test's name)") from None
    path = directory / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    return path


def login(page: Page, base_url: str, username: str, password: str) -> None:
    """Sign in through the admin's login form, as a person would.

    Returns once the page the form leads to has loaded: the admin (or the `next` page), or the
    form again with its error, for a wrong password or a user who is not staff.
    """
    page.goto(f"{base_url.rstrip('/')}/admin/login/")
    page.locator("#id_username").fill(username)
    page.locator("#id_password").fill(password)
    with page.expect_event("load"):  # the next document's load, whichever page it is
        page.locator('#login-form [type="submit"]').click()


def force_login(page: Page, base_url: str, user: User) -> None:
    """Give the page's context a logged-in session for `user` without the login form.

    For users the admin's form refuses (not staff), and for tests about other pages than login.
    """
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    page.context.add_cookies([{"name": cookie.key, "value": cookie.value, "url": base_url}])
