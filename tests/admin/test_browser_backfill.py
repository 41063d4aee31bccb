"""Backfills in the console, in a real headless Chromium: the schedules list's "Backfill…"
action, its form, the confirmation page listing the slots (one that already ran marked
skipped), the backfill's page with its progress, the list, and the cancel confirmation;
each page checked with check_legible (1440 and 1024 px, light and dark)."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from scheduler_app.models import Backfill, BackfillSlot
from tests.browser import check_legible, force_login

pytestmark = pytest.mark.django_db(transaction=True)
HOUR = dt.timedelta(hours=1)
NAME = "nightly-warehouse-export-to-the-finance-team-bucket"


def schedule() -> tuple[PeriodicTask, dt.datetime]:
    every = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
    task = PeriodicTask.objects.create(name=NAME, task="maintenance.purge_expired_sessions", interval=every)
    anchor = timezone.now().replace(minute=0, second=0, microsecond=0) - 30 * HOUR
    PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=anchor)
    return task, anchor


def local_input(moment: dt.datetime) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%dT%H:%M")


def test_the_action_leads_to_a_form_a_confirmation_listing_the_slots_and_the_backfill_page(
    page: Page, live_server: LiveServer
) -> None:
    task, anchor = schedule()
    first = anchor + 20 * HOUR
    done_id = str(uuid.uuid4())
    meta = json.dumps({"trigger": "beat", "scheduled_for": (first + HOUR).isoformat()})
    TaskResult.objects.create(
        task_id=done_id, task_name=task.task, periodic_task_name=NAME, status="SUCCESS", meta=meta
    )
    force_login(page, live_server.url, User.objects.create_superuser("operator", password="x"))
    page.goto(f"{live_server.url}/admin/django_celery_beat/periodictask/")
    page.locator("#result_list input.action-select").first.check()
    page.locator("select[name=action]").select_option("backfill_action")
    page.locator("button[name=index]").click()
    expect(page.locator("#bk-backfill-form")).to_contain_text(NAME)
    check_legible(page, "backfill-form")

    page.locator("#id_start").fill(local_input(first))
    page.locator("#id_end").fill(local_input(first + 3 * HOUR))
    page.locator("#id_max_concurrent").fill("2")
    page.locator("#bk-backfill-preview").click()
    expect(page.locator("#bk-backfill-summary")).to_contain_text("4 slots, 3 to run, 1 skipped")
    rows = page.locator("#bk-backfill-slots tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.nth(1)).to_contain_text(f"skipped: already ran: run {done_id} SUCCESS")
    expect(page.locator("#bk-backfill-slots tr.bk-to-run")).to_have_count(3)
    assert Backfill.objects.count() == 0, "the confirmation page wrote something"
    check_legible(page, "backfill-confirm")

    page.locator("#bk-backfill-start").click()
    backfill = Backfill.objects.get()
    assert (backfill.max_concurrent, backfill.via, backfill.requested_by_name) == (2, "admin", "operator")
    expect(page.locator("#bk-backfill-progress")).to_contain_text("0 / 3 done")
    BackfillSlot.objects.filter(backfill=backfill, position=0).update(state="sent", finished=True, task_id=done_id)
    # The page refreshes its progress by itself (a live region, every 5 s): no reload.
    expect(page.locator("#bk-backfill-progress")).to_contain_text("1 / 3 done", timeout=15_000)
    expect(page.locator("#bk-backfill-progress")).to_contain_text("1 skipped")
    expect(page.locator(f"#bk-backfill-slots a:text-is('{done_id[:12]}…')")).to_have_count(1)
    check_legible(page, "backfill-page", badges=1)

    page.locator("#bk-backfill-cancel").click()
    expect(page.locator("#bk-backfill-cancel-confirm")).to_contain_text("Its 2 waiting slots will not run")
    check_legible(page, "backfill-cancel")
    page.locator("#bk-backfill-cancel-yes").click()
    expect(page.locator("#bk-backfill-progress")).to_contain_text("2 cancelled")
    backfill.refresh_from_db()
    assert backfill.state == "cancelled" and backfill.cancelled_by_name == "operator"

    page.goto(f"{live_server.url}/admin/scheduler_app/backfill/")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    check_legible(page, "backfills", badges=1)
