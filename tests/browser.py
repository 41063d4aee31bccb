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


# --- Legibility: what every console page's test checks (issue 15) -------------------------
# A page's test calls `check_legible(page, "name")` once the page shows what it should: at
# 1440 and 1024 px, in light and in dark mode, no table or card is wider than its container
# and every state badge's text reads at WCAG AA (4.5:1) against its background; a screenshot
# of each. `overflowing(page)` and `badge_contrasts(page)` are the two checks on their own.

WIDTHS = (1440, 1024)
AA_CONTRAST = 4.5
BADGES = ".bk-badge, .bk-long"  # the console's state badges: coloured boxes with text
# The page (no sideways scrolling), the content area, each table, card and module: content wider
# than its box, or a box wider than its parent.
_OVERFLOWS = r"""() => {
  const label = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
    (typeof e.className === 'string' && e.className.trim() ? '.' + e.className.trim().split(/\s+/).join('.') : '');
  const page = document.documentElement;
  const found = page.scrollWidth > page.clientWidth + 1
    ? [`the page scrolls sideways: ${page.scrollWidth} px in ${page.clientWidth} px`] : [];
  const boxes = [document.querySelector('#content-main'),
                 ...document.querySelectorAll('#content table, #content .bk-card, #content .module')];
  for (const box of boxes.filter(Boolean)) {
    const parent = box.parentElement;
    const scrolls = ['auto', 'scroll'].includes(getComputedStyle(box).overflowX);
    if (box.tagName !== 'TABLE' && !scrolls && box.scrollWidth > box.clientWidth + 1) {
      const right = box.getBoundingClientRect().left + box.clientWidth;
      const out = [...box.querySelectorAll('*')].filter(e => e.getBoundingClientRect().right > right + 1);
      found.push(`${label(box)}: content ${box.scrollWidth} px in ${box.clientWidth} px` +
                 ` (sticking out: ${out.slice(-2).map(label).join(', ')})`);
    }
    const width = Math.round(box.getBoundingClientRect().width);
    if (parent && width > parent.clientWidth + 1)
      found.push(`${label(box)}: ${width} px in a ${parent.clientWidth} px container`);
  }
  return found;
}"""
# Each badge's text colour and the background colours from it up to the root (the first opaque one counts).
_BADGE_COLOURS = """selector => [...document.querySelectorAll(selector)].filter(b => b.offsetParent !== null).map(b => {
  const backgrounds = [];
  for (let el = b; el; el = el.parentElement) backgrounds.push(getComputedStyle(el).backgroundColor);
  return {text: b.textContent.trim(), color: getComputedStyle(b).color, backgrounds};
})"""


def check_legible(page: Page, name: str, *, badges: int = 0) -> None:
    """At 1440 and 1024 px, light and dark: nothing overflows and every badge reads at 4.5:1
    (at least `badges` of them on the page); a screenshot of each, `<name>-<width>[-dark]`."""
    try:
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            for width in WIDTHS:
                page.set_viewport_size({"width": width, "height": 900})
                where = f"{name} at {width} px, {scheme}"
                shot(page, f"{name}-{width}" + ("-dark" if scheme == "dark" else ""))  # also of a page that fails
                assert overflowing(page) == [], f"{where}: wider than its container"
                found = badge_contrasts(page)
                assert len(found) >= badges, f"{where}: {len(found)} badges shown, {badges} expected"
                low = [(text, round(ratio, 2)) for text, ratio in found if ratio < AA_CONTRAST]
                assert low == [], f"{where}: badge text under {AA_CONTRAST}:1"
    finally:
        page.emulate_media(color_scheme="light")
        page.set_viewport_size(VIEWPORT)


def overflowing(page: Page) -> list[str]:
    """The content area, tables and cards wider than their container (empty when all fit)."""
    found: list[str] = page.evaluate(_OVERFLOWS)
    return found


def badge_contrasts(page: Page) -> list[tuple[str, float]]:
    """Each visible badge's text and its contrast ratio against what is behind it."""
    shown: list[dict[str, object]] = page.evaluate(_BADGE_COLOURS, BADGES)
    return [
        (str(badge["text"]), contrast(parse_colour(str(badge["color"])), backdrop(list(badge["backgrounds"]))))  # type: ignore[call-overload]
        for badge in shown
    ]


RGB = tuple[float, float, float]


def parse_colour(css: str) -> tuple[float, float, float, float]:
    """`rgb(r, g, b)` or `rgba(r, g, b, a)` (what getComputedStyle gives) as 0-255 channels and alpha."""
    numbers = [float(n) for n in re.findall(r"[\d.]+", css)]
    if not css.startswith("rgb") or len(numbers) not in (3, 4):
        raise ValueError(f"not an rgb() colour: {css!r}")
    red, green, blue, alpha = (*numbers, 1.0) if len(numbers) == 3 else numbers
    return red, green, blue, alpha


def backdrop(backgrounds: list[str]) -> tuple[float, float, float, float]:
    """The colour behind an element: its own and its ancestors' backgrounds, innermost
    first, laid over each other on the white canvas (translucent ones blended)."""
    layers = [parse_colour(css) for css in backgrounds]
    colour: RGB = (255.0, 255.0, 255.0)
    for red, green, blue, alpha in reversed(layers):
        colour = (red * alpha + colour[0] * (1 - alpha), green * alpha + colour[1] * (1 - alpha),
                  blue * alpha + colour[2] * (1 - alpha))  # fmt: skip
    return (*colour, 1.0)


def luminance(colour: tuple[float, float, float, float]) -> float:
    """WCAG 2's relative luminance of an sRGB colour."""

    def linear(channel: float) -> float:
        c = channel / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    red, green, blue, _ = colour
    return 0.2126 * linear(red) + 0.7152 * linear(green) + 0.0722 * linear(blue)


def contrast(text: tuple[float, float, float, float], background: tuple[float, float, float, float]) -> float:
    """WCAG 2's contrast ratio, 1 to 21 (text with alpha is laid over the background first)."""
    alpha = text[3]
    seen = tuple(t * alpha + b * (1 - alpha) for t, b in zip(text[:3], background[:3], strict=True))
    lighter, darker = sorted((luminance((*seen, 1.0)), luminance(background)), reverse=True)  # type: ignore[arg-type]
    return (lighter + 0.05) / (darker + 0.05)


PIXELS = """(id) => {
  const canvas = document.getElementById(id);
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let drawn = 0;
  for (let i = 3; i < data.length; i += 4) { if (data[i] > 0) drawn++; }
  return drawn;
}"""


def drawn_pixels(page: Page, canvas_id: str) -> int:
    """How many pixels of a canvas hold a drawing (not transparent): a chart that drew nothing has none."""
    return int(page.evaluate(PIXELS, canvas_id))
