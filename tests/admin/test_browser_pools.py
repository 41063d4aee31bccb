"""Concurrency pools in a real headless Chromium (tests/browser.py): the list says each pool's
slots in use and runs waiting, a pool's page shows the runs holding a slot and those waiting in
order (with their task and schedule, linked to the run) and follows them live as a slot frees;
a pool in use cannot be deleted (the page says who uses it); a bad pool is refused with what is
allowed. The slots are the real Redis script's (`runs.pools`). Screenshots go to
test-artifacts/screenshots/test_browser_pools/."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from scheduler_app.models import Pool, SchedulePolicy
from scheduler_app.runs import pools
from tests.browser import check_legible, force_login

pytestmark = pytest.mark.django_db(transaction=True)
POOLS = "/admin/scheduler_app/pool/"
TASK = "maintenance.purge_expired_sessions"
SCHEDULE = "nightly-warehouse-export-to-the-finance-team-bucket"


@pytest.fixture
def busy() -> Iterator[tuple[Pool, list[pools.PoolSlot], list[str]]]:
    """A pool of 2 used by a schedule: two runs hold its slots, two wait (recorded runs of the schedule)."""
    pool = Pool.objects.create(name="partner-exports", size=2, lease=30, rate="60/m", description="The partner's API")
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    task = PeriodicTask.objects.create(name=SCHEDULE, task=TASK, interval=every)
    SchedulePolicy.objects.create(periodic_task=task, pool=pool)
    ids = [str(uuid.uuid4()) for _ in range(4)]
    for run_id in ids:
        TaskResult.objects.create(task_id=run_id, task_name=TASK, periodic_task_name=SCHEDULE, status="WAITING",
                                  meta=json.dumps({"trigger": "beat"}))  # fmt: skip
    slots = [pools.PoolSlot(pool.spec(), run_id) for run_id in ids]
    assert [slot.acquire().admitted for slot in slots] == [True, True, False, False]
    yield pool, slots, ids
    for slot in slots:
        slot.release()
    pools.forget(pool.name)


def test_a_pools_page_shows_its_holders_and_waiters_and_follows_them_live(
    page: Page, live_server: LiveServer, busy: tuple[Pool, list[pools.PoolSlot], list[str]]
) -> None:
    pool, slots, ids = busy
    force_login(page, live_server.url, User.objects.create_superuser("operator", password="x"))
    page.goto(live_server.url + POOLS)
    row = page.locator("#result_list tbody tr", has_text="partner-exports")
    expect(row).to_contain_text("2 of 2 in use; 2 waiting")
    expect(row).to_contain_text("60/m")
    check_legible(page, "pools")
    row.locator("a", has_text="partner-exports").click()
    expect(page.locator("#bk-pool-summary")).to_have_text("2 of 2 slots in use; 2 runs waiting.")
    holders = page.locator("#bk-pool-holders tbody tr")
    expect(holders).to_have_count(2)
    expect(holders.first).to_contain_text(SCHEDULE)
    waiting = page.locator("#bk-pool-waiting tbody tr")
    expect(waiting.nth(0)).to_contain_text(f"1{ids[2]}")
    expect(waiting.nth(1)).to_contain_text(f"2{ids[3]}")
    expect(page.locator(".field-used_by")).to_contain_text(SCHEDULE)
    expect(page.locator(".field-name .readonly")).to_have_text("partner-exports")  # a name never changes
    check_legible(page, "pool-change")
    slots[0].release()  # a run ends; the first waiter takes its slot
    assert slots[2].acquire().admitted
    expect(page.locator("#bk-pool-summary")).to_have_text("2 of 2 slots in use; 1 run waiting.", timeout=12_000)
    expect(page.locator("#bk-pool-waiting tbody tr")).to_have_count(1)
    href = page.locator("#bk-pool-holders a", has_text=ids[2]).get_attribute("href") or ""
    assert href.endswith(f"/admin/scheduler_app/run/{TaskResult.objects.get(task_id=ids[2]).pk}/change/")


def test_a_pool_in_use_is_not_deleted_and_a_bad_one_is_refused_saying_what_is_allowed(
    page: Page, live_server: LiveServer, busy: tuple[Pool, list[pools.PoolSlot], list[str]]
) -> None:
    pool, _, _ = busy
    force_login(page, live_server.url, User.objects.create_superuser("operator", password="x"))
    page.goto(f"{live_server.url}{POOLS}{pool.pk}/delete/")
    expect(page.locator("#content")).to_contain_text("would require deleting the following protected related objects")
    expect(page.locator("#content")).to_contain_text(f"policy of {SCHEDULE}")
    check_legible(page, "pool-delete-refused")
    page.goto(f"{live_server.url}{POOLS}add/")
    page.locator("#id_name").fill("exports now!")
    page.locator("#id_size").fill("0")
    page.locator("#id_rate").fill("fast")
    page.locator("input[name=_save]").click()
    errors = page.locator(".errorlist")
    expect(errors.nth(0)).to_contain_text("letters, digits, '_', '.' and '-'")
    expect(page.locator(".field-size .errorlist")).to_contain_text("greater than or equal to 1")
    expect(page.locator(".field-rate .errorlist")).to_contain_text("use a count per unit: 60/m, 5/s, 100/h")
    check_legible(page, "pool-add-refused")
    assert list(Pool.objects.values_list("name", flat=True)) == ["partner-exports"]
