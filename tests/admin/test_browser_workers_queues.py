"""The Workers and Queues pages in a real headless Chromium, with a real worker and broker:
at 1440 and 1024 px, light and dark, no table is wider than its container (tests/browser.py's
`check_legible`) and the text is shown, and each page's table refreshes itself (htmx)
without a reload. Screenshots go to
test-artifacts/screenshots/test_browser_workers_queues/."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from scheduler_app import backlog, broker, fleet, services
from scheduler_app.connection import redis_client
from tests import tasks  # noqa: F401  (tests.sleeper and tests.record are registered here too)
from tests.admin.test_workers_queues import hostname
from tests.browser import check_legible, login, shot
from tests.processes import worker

pytestmark = pytest.mark.django_db(transaction=True)
PASSWORD = "correct horse battery staple"


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"bk-test-{uuid.uuid4().hex[:8]}"
    yield name
    with broker.bounded_connection() as conn:
        channel = backlog.channel_of(conn)
        channel.client.delete(*[key for _, key in backlog.keys_of(channel, name)])
    redis_client().delete(fleet.SEEN)


def send(task: str, queue: str, *args: object, **kwargs: object) -> str:
    return services.send(task, list(args), kwargs, options={"queue": queue}, header={"trigger": "manual", "by": "op"})


def test_the_workers_and_queues_pages_fit_and_refresh_themselves(
    page: Page, live_server: LiveServer, tmp_path: Path, queue: str, key: str
) -> None:
    User.objects.create_superuser("op", "op@example.com", PASSWORD)
    login(page, live_server.url, "op", PASSWORD)
    with worker(tmp_path, "-Q", f"celery,{queue}", "--include", "tests.tasks") as proc:
        name = hostname(proc)
        page.goto(f"{live_server.url}/admin/workers/")
        table = page.locator("#bk-worker-list")
        expect(table).to_contain_text(name)
        expect(table.locator(".bk-worker-queues")).to_contain_text(queue)
        expect(table.locator(".bk-worker-pool")).to_contain_text("prefork,2 processes")
        expect(page.locator("#bk-worker-count")).to_contain_text("0 runs running")
        page.evaluate("window.bkNotReloaded = true")
        run = send("tests.sleeper", queue, key, seconds=15, steps=15)
        expect(page.locator("#bk-worker-count")).to_contain_text("1 run running", timeout=20_000)  # a refresh
        expect(page.locator("#bk-held-runs")).to_contain_text(run)
        assert page.evaluate("window.bkNotReloaded") is True
        check_legible(page, "workers")  # 1440 and 1024 px, light and dark

    idle = f"{queue}-idle"  # no worker consumes it
    send("tests.record", idle, key, "a")
    send("tests.record", idle, key, "b")
    page.goto(f"{live_server.url}/admin/queues/?queue={idle}")
    depth = page.locator(f'tr[data-queue="{idle}"] .bk-queue-depth')
    expect(depth).to_have_text("2")
    expect(page.locator(f'tr[data-queue="{idle}"] .bk-queue-consumers')).to_have_text("no worker")
    expect(page.locator(f'tr[data-queue="{idle}"] .bk-queue-oldest')).to_contain_text("ago")
    expect(page.locator("#bk-dead-letters-link")).to_be_visible()
    page.evaluate("window.bkNotReloaded = true")
    send("tests.record", idle, key, "c")
    expect(depth).to_have_text("3", timeout=20_000)  # the live refresh, not a reload
    assert page.evaluate("window.bkNotReloaded") is True
    check_legible(page, "queues")

    page.locator(f'tr[data-queue="{idle}"] .bk-purge').click()
    expect(page.locator("#bk-purge-depth")).to_have_text("3")
    shot(page, "purge-confirm")
    page.locator('#bk-queue-purge input[type="submit"]').click()
    expect(page.locator(".messagelist")).to_contain_text(f"Purged {idle}: 3 messages dropped, 3 queued runs")
    with broker.bounded_connection() as conn:
        channel = backlog.channel_of(conn)
        channel.client.delete(*[key for _, key in backlog.keys_of(channel, idle)])
