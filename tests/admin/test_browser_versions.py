"""Schedule versions in a real headless Chromium (tests/browser.py): the schedule's page lists
its versions (who, when, door, fields changed); a version's page sets it beside today's
schedule, field by field, and restores it with one button; the restore is itself a version.
Screenshots go to test-artifacts/screenshots/test_browser_versions/."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django_celery_beat.models import PeriodicTask
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from tests.api.test_api import token_client
from tests.browser import check_legible, force_login

pytestmark = pytest.mark.django_db(transaction=True)
NAME = "nightly-warehouse-export-to-the-finance-team-bucket"


def send(client: Client, method: str, url: str, data: Mapping[str, object]) -> int:
    return int(getattr(client, method)(url, json.dumps(data), content_type="application/json").status_code)


def test_a_schedules_versions_are_listed_compared_and_restored(page: Page, live_server: LiveServer) -> None:
    boss = User.objects.create_superuser("operator", password="x")
    api = token_client(boss)
    body = {"name": NAME, "task": "maintenance.cleanup_old_runs", "kind": "crontab", "minute": "30", "hour": "2",
            "timezone": "Europe/Berlin", "kwargs": {"max_age_hours": 48}, "policy": {"max_retries": 2}}  # fmt: skip
    assert send(api, "post", "/api/schedules/", body) == 201
    pk = PeriodicTask.objects.get(name=NAME).pk
    change = {"hour": "4", "kwargs": {"max_age_hours": 24}, "policy": {"max_retries": 6}}
    assert send(api, "patch", f"/api/schedules/{pk}/", change) == 200
    force_login(page, live_server.url, boss)
    page.goto(f"{live_server.url}/admin/django_celery_beat/periodictask/{pk}/change/")
    rows = page.locator("#bk-versions tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("update")
    expect(rows.first).to_contain_text("operator (api)")
    expect(rows.first).to_contain_text("kwargs, policy.max_retries, schedule.hour")
    check_legible(page, "schedule-versions")
    rows.nth(1).locator("a").click()
    expect(page.locator("#bk-version-made")).to_contain_text("Version 1: create by operator through the api")
    differences = page.locator("#bk-version-differences tbody tr")
    expect(differences.filter(has_text="schedule.hour")).to_contain_text("24")  # then 2, today 4
    hour = differences.filter(has_text="schedule.hour").locator("td")
    expect(hour.nth(1)).to_have_text("2")
    expect(hour.nth(2)).to_have_text("4")
    expect(differences.filter(has_text="policy.max_retries").locator("td").nth(1)).to_have_text("2")
    check_legible(page, "schedule-version")
    page.locator("#bk-version-restore input[type=submit]").click()
    expect(page.locator(".messagelist")).to_contain_text("Restored version 1; the restore is itself a new version.")
    expect(page.locator("#bk-versions tbody tr").first).to_contain_text("restore of version 1")
    task = PeriodicTask.objects.get(pk=pk)
    assert (task.crontab.hour, json.loads(task.kwargs), task.policy.max_retries) == ("2", {"max_age_hours": 48}, 2)
    page.locator("#bk-versions tbody tr").nth(2).locator("a").click()  # version 1 again: today is the same
    expect(page.locator("#bk-version-same")).to_have_text("Today's schedule is the same as this version.")
    expect(page.locator("#bk-version-restore")).to_have_count(0)
