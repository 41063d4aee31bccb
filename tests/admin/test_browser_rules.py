"""Issue 17 in a real headless Chromium (tests/browser.py): the schedule page's preview shows
what beat sends as the page stands (a slot a calendar skips, struck through with its reason;
a moved one with where it goes; the jitter beside the nominal slot; H in words), and the
business calendar's pages (list, add, change with its excluded days and the schedules on it)
fit and read. Screenshots go to test-artifacts/screenshots/test_browser_rules/."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from scheduler_app import forms
from scheduler_app.models import BusinessCalendar, CalendarExclusion, SchedulePolicy
from tests.browser import AA_CONTRAST, backdrop, check_legible, contrast, force_login, parse_colour

pytestmark = pytest.mark.django_db(transaction=True)
NAME = "warehouse-export"
CALENDARS = "/admin/scheduler_app/businesscalendar/"


@pytest.fixture
def frozen_week() -> tuple[PeriodicTask, BusinessCalendar]:
    """A daily 09:00 UTC schedule with 30 s of jitter on a calendar that excludes the day
    after tomorrow (a release freeze)."""
    calendar = BusinessCalendar.objects.create(name="Releases", timezone="UTC")
    freeze = timezone.now().date() + dt.timedelta(days=2)
    CalendarExclusion.objects.create(calendar=calendar, first_day=freeze, label="Release freeze")
    task = PeriodicTask.objects.create(name=NAME, task="maintenance.log_statistics",
                                       crontab=CrontabSchedule.objects.create(minute="0", hour="9"))  # fmt: skip
    policy = SchedulePolicy.objects.create(periodic_task=task, jitter=30)
    policy.calendars.add(calendar)
    return task, calendar


def test_the_preview_shows_skipped_moved_and_jittered_slots_and_h_in_words(
    page: Page, live_server: LiveServer, frozen_week: tuple[PeriodicTask, BusinessCalendar]
) -> None:
    task, calendar = frozen_week
    force_login(page, live_server.url, User.objects.create_superuser("operator", password="x"))
    page.goto(f"{live_server.url}/admin/django_celery_beat/periodictask/{task.pk}/change/")
    skipped = page.locator("#bk-preview-table tr.bk-skipped")
    expect(skipped).to_have_count(1)
    expect(skipped).to_contain_text("not sent; skipped: Release freeze (Releases)")
    struck = skipped.locator("td").first.evaluate("e => getComputedStyle(e).textDecorationLine")
    assert struck == "line-through"
    note = skipped.locator("td").nth(2)
    colours = note.evaluate("""e => { const all = [];
        for (let el = e; el; el = el.parentElement) all.push(getComputedStyle(el).backgroundColor);
        return [getComputedStyle(e).color, all]; }""")
    assert contrast(parse_colour(colours[0]), backdrop(colours[1])) >= AA_CONTRAST  # the reason reads
    sent = page.locator("#bk-preview-table tbody tr:not(.bk-skipped)").first
    expect(sent.locator("td").nth(2)).to_contain_text("09:00:00 UTC; jitter +")
    expect(page.locator(".field-calendar_rules")).to_contain_text("jitter up to 30 s; calendars Releases")

    page.locator("#id_policy-0-calendar_rule").select_option("move")  # the inline as it stands, unsaved
    expect(skipped).to_have_count(0)
    moved = page.locator("#bk-preview-table tbody tr", has_text="moved: Release freeze (Releases)")
    expect(moved).to_have_count(1)
    expect(moved.locator("td").first).to_contain_text(" 00:00:")  # the next allowed moment, plus its jitter

    page.locator("#id_minute").fill("H")
    minute = forms.resolved_field("H", NAME, "minute")
    expect(page.locator("#bk-preview-status")).to_contain_text(f"H: minute {minute} chosen by hash of the name.")
    regular = page.locator("#bk-preview-table tbody tr:not(.bk-skipped)").filter(has_not_text="moved:")
    expect(regular.nth(1).locator("td").nth(1)).to_contain_text(f" 09:{int(minute):02d}:")  # not the moved one
    check_legible(page, "schedule-preview-rules")
    assert SchedulePolicy.objects.get(pk=task.policy.pk).calendar_rule == ""  # the preview saved nothing


def test_the_calendar_pages_show_what_they_exclude_and_who_uses_them(
    page: Page, live_server: LiveServer, frozen_week: tuple[PeriodicTask, BusinessCalendar]
) -> None:
    task, calendar = frozen_week
    calendar.holiday_country, calendar.weekdays = "DE", "mon,tue,wed,thu,fri"
    calendar.save()
    force_login(page, live_server.url, User.objects.create_superuser("operator", password="x"))
    page.goto(live_server.url + CALENDARS)
    expect(page.locator("#result_list")).to_contain_text("Releases")
    check_legible(page, "calendars")
    page.goto(f"{live_server.url}{CALENDARS}{calendar.pk}/change/")
    expect(page.locator("#bk-calendar-upcoming")).to_contain_text("Release freeze")
    expect(page.locator(".field-upcoming")).to_contain_text("Every week: days other than mon,tue,wed,thu,fri.")
    page.locator(".field-used_by a", has_text=NAME).click()
    expect(page).to_have_url(f"{live_server.url}/admin/django_celery_beat/periodictask/{task.pk}/change/")
    page.goto(f"{live_server.url}{CALENDARS}{calendar.pk}/change/")
    check_legible(page, "calendar-change")
    page.goto(f"{live_server.url}{CALENDARS}add/")
    page.locator("#id_name").fill("Night shift")
    page.locator("#id_day_starts").fill("18:00")
    page.locator("#id_day_ends").fill("06:00")
    page.locator("input[name=_save]").click()
    expect(page.locator(".errorlist")).to_contain_text("The day must end after it starts (18:00)")
    check_legible(page, "calendar-add-refused")
    assert not BusinessCalendar.objects.filter(name="Night shift").exists()
