"""django-celery-beat's public scheduler behaviour, held by `scheduler_app.beat.Scheduler`,
and every preview surface (the function, `list_schedules`, the admin preview, the API)
listing exactly what beat then sends. Beat runs in-process on the real database and Redis;
the clock is moved with time_machine and beat's real tick sends."""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from celery import current_app
from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import Client, override_settings
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

from scheduler_app import services
from scheduler_app.beat import Scheduler, checks
from scheduler_app.beat.leader import Lease, SlotLedger
from scheduler_app.beat.writes import PendingWrites
from scheduler_app.forms import ScheduleForm
from scheduler_app.models import SchedulePolicy
from scheduler_app.schedules import next_runs, why_not
from tests.beat.beatkit import interval, names, schedule, started

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clean_redis")]
UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
MINUTE = dt.timedelta(minutes=1)
NOON = dt.datetime(2026, 6, 1, 12, 30, tzinfo=UTC)


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("boss", password="x"))
    return client


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    with time_machine.travel(NOON, tick=False) as traveller:
        yield traveller


def slots_sent(sent: list[dict[str, Any]]) -> list[dt.datetime]:
    return [dt.datetime.fromisoformat(header["scheduled_for"]) for header in sent]


def tick_at(beat: Scheduler, clock: time_machine.Traveller, moments: list[dt.datetime]) -> None:
    """Beat's real tick, a second after each moment."""
    for moment in moments:
        clock.move_to(moment + dt.timedelta(seconds=1))
        beat.tick()


def previews(client: Client, task: PeriodicTask, count: int, form: dict[str, str]) -> dict[str, list[str]]:
    """The next runs, in UTC, as each surface lists them."""
    task = PeriodicTask.objects.get(pk=task.pk)
    out = io.StringIO()
    call_command("list_schedules", "--next", str(count), stdout=out)
    api = client.get(f"/api/schedules/{task.pk}/next-runs/", {"count": count}).json()
    admin = client.get("/admin/django_celery_beat/periodictask/preview/", {**form, "object": task.pk}).json()
    return {
        "function": [run.at.isoformat() for run in next_runs(task, count) if run.at],
        "command": re.findall(r"= (\S+) UTC", out.getvalue())[:count],
        "api": [run["utc"] for run in api["runs"]],
        "admin": [run["utc"] for run in admin["runs"]][:count],
    }


def interval_form(task: PeriodicTask, every: int, period: str, **fields: str) -> dict[str, str]:
    return {"name": task.name, "task": task.task, "kind": "interval", "every": str(every), "period": period,
            "args": "[]", "kwargs": "{}", "headers": "{}", "enabled": "on", **fields}  # fmt: skip


# --- every preview lists what beat sends -----------------------------------------------------


@pytest.mark.parametrize("catch_up", ["once", "skip"])
def test_every_preview_after_an_outage_lists_what_beat_then_sends(
    clock: time_machine.Traveller, admin_client: Client, sent: list[dict[str, Any]], catch_up: str
) -> None:
    last = NOON - 3.5 * HOUR  # 09:00 ran; 10:00, 11:00 and 12:00 were missed while beat was down
    task = schedule("hourly", last_run_at=last, interval=IntervalSchedule.objects.create(every=1, period="hours"))
    SchedulePolicy.objects.create(periodic_task=task, catch_up=catch_up)
    shown = previews(admin_client, task, 3, interval_form(task, 1, "hours"))
    later = [NOON + 0.5 * HOUR, NOON + 1.5 * HOUR]  # 13:00 and 14:00
    expected = ([NOON] if catch_up == "once" else []) + later + ([] if catch_up == "once" else [NOON + 2.5 * HOUR])
    assert shown == {surface: [at.isoformat() for at in expected] for surface in shown}
    beat = started()  # at 12:30
    tick_at(beat, clock, later)
    once = [NOON - 0.5 * HOUR] if catch_up == "once" else []  # sent at 12:30, for the backlog's latest slot
    assert slots_sent(sent) == once + later
    beat.close()


def test_a_crontab_on_minutes_runs_through_the_repeated_hour_as_its_preview_says(
    clock: time_machine.Traveller, sent: list[dict[str, Any]]
) -> None:
    cron = CrontabSchedule.objects.create(minute="*/20", hour="1-3", timezone="Europe/Berlin")
    start = dt.datetime(2026, 10, 25, 1, 50, tzinfo=BERLIN)  # the night Berlin falls back at 03:00 CEST
    clock.move_to(start)
    task = schedule("night", crontab=cron, interval=None, last_run_at=dt.datetime(2026, 10, 25, 1, 40, tzinfo=BERLIN))
    preview = [run.at for run in next_runs(PeriodicTask.objects.get(pk=task.pk), 7) if run.at]
    local = [at.astimezone(BERLIN).strftime("%H:%M %Z") for at in preview]
    assert local == ["02:00 CEST", "02:20 CEST", "02:40 CEST", "02:00 CET", "02:20 CET", "02:40 CET", "03:00 CET"]
    beat = started()
    tick_at(beat, clock, preview)
    assert slots_sent(sent) == preview
    beat.close()


# --- start time -----------------------------------------------------------------------------------


def test_an_interval_runs_first_at_its_start_time_then_every_interval_from_it(
    clock: time_machine.Traveller, admin_client: Client, sent: list[dict[str, Any]]
) -> None:
    clock.move_to(dt.datetime(2026, 6, 1, 15, 0, tzinfo=UTC))
    start = dt.datetime(2026, 6, 2, 9, 0, tzinfo=UTC)
    daily = IntervalSchedule.objects.create(every=1, period="days")
    task = schedule("daily at nine", interval=daily, start_time=start)
    form = interval_form(task, 1, "days", start_time_0="2026-06-02", start_time_1="09:00:00")
    assert previews(admin_client, task, 2, form) == {
        surface: [start.isoformat(), (start + DAY).isoformat()] for surface in ("function", "command", "api", "admin")
    }
    beat = started()
    tick_at(beat, clock, [start - dt.timedelta(minutes=1)])
    assert sent == []  # nothing before the start time (stock: the same)
    tick_at(beat, clock, [start, start + DAY])
    assert slots_sent(sent) == [start, start + DAY]
    beat.close()


def test_a_start_time_already_past_sets_the_phase_of_an_interval(
    clock: time_machine.Traveller, sent: list[dict[str, Any]]
) -> None:
    clock.move_to(dt.datetime(2026, 6, 1, 15, 0, tzinfo=UTC))  # saved at 15:00, to start at 09:00 today
    task = schedule("daily", interval=IntervalSchedule.objects.create(every=1, period="days"),
                    start_time=dt.datetime(2026, 6, 1, 9, 0, tzinfo=UTC))  # fmt: skip
    tomorrow = dt.datetime(2026, 6, 2, 9, 0, tzinfo=UTC)
    assert [run.at for run in next_runs(PeriodicTask.objects.get(pk=task.pk), 2)] == [tomorrow, tomorrow + DAY]
    beat = started()
    assert sent == []  # not at once (stock sends at once, then every day at 15:00)
    tick_at(beat, clock, [tomorrow])
    assert slots_sent(sent) == [tomorrow]
    beat.close()


# --- one-off and clocked --------------------------------------------------------------------------


def test_a_clocked_schedule_runs_once_and_is_disabled_even_when_one_off_is_false(
    clock: time_machine.Traveller, sent: list[dict[str, Any]]
) -> None:
    moment = NOON + dt.timedelta(minutes=5)
    clocked = ClockedSchedule.objects.create(clocked_time=moment)
    task = schedule("at five past", clocked=clocked, interval=None, one_off=True)
    PeriodicTask.objects.filter(pk=task.pk).update(one_off=False)  # save() refuses this; update() does not
    assert [run.at for run in next_runs(PeriodicTask.objects.get(pk=task.pk), 3)] == [moment]
    beat = started()
    tick_at(beat, clock, [moment, moment + HOUR])
    beat.housekeeping()  # writes what was sent
    assert slots_sent(sent) == [moment]
    row = PeriodicTask.objects.get(pk=task.pk)
    assert (row.enabled, row.total_run_count, why_not(row)) == (False, 0, "disabled")
    beat.close()


def test_a_one_off_that_already_ran_is_disabled_not_run_again(sent: list[dict[str, Any]]) -> None:
    moment = ClockedSchedule.objects.create(clocked_time=timezone.now())
    clocked = schedule("ran once", clocked=moment, interval=None, one_off=True)
    PeriodicTask.objects.filter(pk=clocked.pk).update(one_off=False, total_run_count=1)  # as older beats left it
    one_off = schedule("one-off interval", 30, ago=31, one_off=True)
    PeriodicTask.objects.filter(pk=one_off.pk).update(total_run_count=1)
    for task in (clocked, one_off):
        assert why_not(PeriodicTask.objects.get(pk=task.pk)) == "one-off already run"
    beat = started()
    beat.housekeeping()
    assert sent == []
    rows = PeriodicTask.objects.filter(pk__in=[clocked.pk, one_off.pk]).values_list("enabled", "total_run_count")
    assert list(rows) == [(False, 0), (False, 0)]
    services.resume(PeriodicTask.objects.get(pk=clocked.pk), by=None)  # enabled again, it runs once more
    beat.housekeeping()
    beat.tick()
    assert names(sent) == ["ran once"]
    beat.close()


def test_a_schedule_that_ran_made_a_one_off_in_its_form_runs_once(
    clock: time_machine.Traveller, sent: list[dict[str, Any]]
) -> None:
    task = schedule("hourly", 3600, last_run_at=NOON - dt.timedelta(minutes=30))
    PeriodicTask.objects.filter(pk=task.pk).update(total_run_count=5)
    at = NOON + dt.timedelta(minutes=5)
    form = ScheduleForm({**interval_form(task, 1, "hours"), "kind": "clocked", "clocked_time": at.isoformat(),
                         "one_off": "on"},
                        instance=PeriodicTask.objects.get(pk=task.pk))  # fmt: skip
    assert form.is_valid(), form.errors
    assert [run.at for run in next_runs(form.save(), 3)] == [at]  # one run: a one-off
    beat = started()
    tick_at(beat, clock, [at, at + HOUR])
    assert slots_sent(sent) == [at]
    beat.close()


def test_a_one_off_interval_previews_the_one_run_beat_sends(
    clock: time_machine.Traveller, sent: list[dict[str, Any]]
) -> None:
    task = schedule("once, a minute on", 60, last_run_at=NOON, one_off=True)
    assert [run.at for run in next_runs(PeriodicTask.objects.get(pk=task.pk), 3)] == [NOON + MINUTE]
    beat = started()
    tick_at(beat, clock, [NOON + MINUTE, NOON + 2 * MINUTE])
    assert slots_sent(sent) == [NOON + MINUTE]
    beat.close()


def test_an_enable_made_before_beat_writes_its_disable_is_kept() -> None:
    task = schedule("ran before", 30, ago=31, one_off=True)
    PeriodicTask.objects.filter(pk=task.pk).update(total_run_count=1)
    writes = PendingWrites(SlotLedger(Lease(ttl=3)))
    writes.already_ran(task.pk, clocked=False)  # what a beat loading it decided
    services.resume(PeriodicTask.objects.get(pk=task.pk), by=None)  # meanwhile, an operator enables it
    writes.flush()
    assert PeriodicTask.objects.filter(pk=task.pk).values_list("enabled", "total_run_count").get() == (True, 0)


# --- expiry, edits, headers (django-celery-beat's documented behaviour) ----------------------------


def test_it_disables_a_schedule_at_its_expiry_and_sends_nothing_after(
    clock: time_machine.Traveller, sent: list[dict[str, Any]]
) -> None:
    task = schedule("short-lived", 60, last_run_at=NOON, expires=NOON + dt.timedelta(seconds=90))
    beat = started()
    tick_at(beat, clock, [NOON + dt.timedelta(seconds=60), NOON + dt.timedelta(seconds=120)])
    beat.housekeeping()
    assert slots_sent(sent) == [NOON + dt.timedelta(seconds=60)]
    assert PeriodicTask.objects.get(pk=task.pk).enabled is False
    beat.close()


def test_it_sends_the_rows_headers_and_arguments_and_picks_up_an_edit(
    clock: time_machine.Traveller, published: list[dict[str, Any]]
) -> None:
    task = schedule("tenant", 60, last_run_at=NOON, args='["acme"]', kwargs='{"full": true}',
                    headers='{"tenant": "acme"}')  # fmt: skip
    beat = started()
    tick_at(beat, clock, [NOON + dt.timedelta(seconds=60)])
    task.args, task.headers = '["globex"]', '{"tenant": "globex"}'
    task.save()
    beat.housekeeping()  # reads the change log
    tick_at(beat, clock, [NOON + dt.timedelta(seconds=120)])
    first, second = published
    assert (first["args"], first["kwargs"], second["args"]) == (["acme"], {"full": True}, ["globex"])
    for message, tenant in ((first, "acme"), (second, "globex")):
        headers = message["headers"]
        assert headers["tenant"] == tenant
        assert headers["celery_beat_task"] is True  # as Celery's own beat marks its sends
        assert headers["periodic_task_name"] == "tenant"
        assert headers["beatkeeper"]["trigger"] == "beat"
    beat.close()


# --- the inherited hooks, on Beatkeeper's entries -------------------------------------------------


def test_the_inherited_per_entry_hooks_work_or_say_what_to_use(published: list[dict[str, Any]]) -> None:
    schedule("hook", 60, ago=30)
    beat = started()
    entry = beat.schedule["hook"]
    due, seconds = entry.is_due()
    assert due is False and 28 <= seconds <= 30
    with pytest.raises(NotImplementedError, match="claimed under the leader's lease.*run now"):
        beat.reserve(entry)
    with pytest.raises(NotImplementedError, match="apply_entry"):
        beat.apply_async(entry)
    result = beat.apply_async(entry, advance=False)
    beat.apply_entry(entry)
    assert [m["headers"]["id"] for m in published][:1] == [result.id]
    assert len(published) == 2 and all(m["headers"]["celery_beat_task"] for m in published)
    assert {m["headers"]["beatkeeper"]["trigger"] for m in published} == {"direct"}  # none of its slots
    clock_free = entry.next_slot
    assert clock_free is not None
    with time_machine.travel(clock_free + dt.timedelta(seconds=1), tick=False):
        assert tuple(entry.is_due()) == (True, 1.0)  # due: look again after BEAT_CHECK_SECONDS
    assert beat.schedule["hook"].next_slot == entry.next_slot  # its schedule did not move
    snapshot = beat.schedule
    assert beat.schedules_equal(snapshot, beat.schedule)
    PeriodicTask.objects.filter(name="hook").get().save()  # saved unchanged: reloaded, the same schedule
    beat.housekeeping()
    assert beat.schedules_equal(snapshot, beat.schedule)
    task = PeriodicTask.objects.get(name="hook")
    task.interval = interval(45)
    task.save()
    beat.housekeeping()
    assert not beat.schedules_equal(snapshot, beat.schedule)
    beat.close()


def test_result_expires_is_refused_at_start_up_with_what_to_set_instead() -> None:
    with override_settings(CELERY_RESULT_EXPIRES=dt.timedelta(days=1)):
        (error,) = checks.check_result_expires()
    assert error.id == "beatkeeper.E001" and "RUN_RETENTION_KEEP_LAST" in (error.hint or "")
    assert checks.check_result_expires() == []
    with override_settings():
        del settings.CELERY_RESULT_EXPIRES  # unset: Celery's default of one day applies
        assert [e.id for e in checks.check_result_expires()] == ["beatkeeper.E001"]
    current_app.conf.result_expires = dt.timedelta(days=1)
    try:
        with pytest.raises(ImproperlyConfigured, match="celery.backend_cleanup.*RUN_RETENTION_HOURS"):
            Scheduler(app=current_app)
    finally:
        current_app.conf.result_expires = None


# --- the preview, the admin's preview and the API against beat's real ticks, per kind --------

STEP = dt.timedelta(seconds=50)  # beat's clock moves this far per tick: every slot goes out within the grace


def sweep(beat: Scheduler, clock: time_machine.Traveller, until: dt.datetime) -> None:
    """Beat's real tick every STEP from now to `until`: a clock that does not know the slots
    (ticking at the previewed moments would hide a slot the preview left out)."""
    moment = timezone.now()
    while moment <= until:
        moment += STEP
        clock.move_to(moment)
        beat.tick()


def crontab_form(task: PeriodicTask, minute: str, hour: str, zone: str) -> dict[str, str]:
    return {"name": task.name, "task": task.task, "kind": "crontab", "minute": minute, "hour": hour,
            "day_of_month": "*", "month_of_year": "*", "day_of_week": "*", "cron_timezone": zone,
            "args": "[]", "kwargs": "{}", "headers": "{}", "enabled": "on"}  # fmt: skip


def one_of_each_kind(kind: str, clock: time_machine.Traveller) -> tuple[PeriodicTask, dict[str, str], list[str]]:
    """A schedule of `kind` with a last run, its admin form's fields, and its next runs as
    written by hand (UTC for interval, clocked and solar; the crontab's own zone for it)."""
    if kind == "interval with a last run":
        task = schedule("every 45 minutes", interval=IntervalSchedule.objects.create(every=45, period="minutes"),
                        last_run_at=NOON - 20 * MINUTE)  # fmt: skip
        runs = [(NOON + (25 + 45 * n) * MINUTE).isoformat() for n in range(4)]
        return task, interval_form(task, 45, "minutes"), runs
    if kind == "crontab across the spring-forward night":
        clock.move_to(dt.datetime(2026, 3, 27, 12, 0, tzinfo=BERLIN))  # Berlin skips 02:00-03:00 on the 29th
        cron = CrontabSchedule.objects.create(minute="30", hour="2", timezone="Europe/Berlin")
        task = schedule("at 02:30 in Berlin", crontab=cron, interval=None,
                        last_run_at=dt.datetime(2026, 3, 27, 2, 30, tzinfo=BERLIN))  # fmt: skip
        runs = ["2026-03-28 02:30 CET", "2026-03-29 03:00 CEST", "2026-03-30 02:30 CEST"]  # once, at the transition
        return task, crontab_form(task, "30", "2", "Europe/Berlin"), runs
    if kind == "clocked":
        at = NOON + 10 * MINUTE
        task = schedule(
            "at 12:40", clocked=ClockedSchedule.objects.create(clocked_time=at), interval=None, one_off=True
        )
        form = {**interval_form(task, 1, "hours"), "kind": "clocked", "clocked_time_0": f"{at:%Y-%m-%d}",
                "clocked_time_1": f"{at:%H:%M:%S}", "one_off": "on"}  # fmt: skip
        return task, form, [at.isoformat()]
    assert kind == "solar"
    sunrise = SolarSchedule.objects.create(event="sunrise", latitude=52.52, longitude=13.405)  # Berlin
    task = schedule("at sunrise in Berlin", solar=sunrise, interval=None, last_run_at=NOON - 8 * HOUR)
    form = {**interval_form(task, 1, "hours"), "kind": "solar", "solar_event": "sunrise", "latitude": "52.52",
            "longitude": "13.405"}  # fmt: skip
    return task, form, []  # ephem's minutes: checked against the days below, not written out


@pytest.mark.parametrize(
    "kind", ["interval with a last run", "crontab across the spring-forward night", "clocked", "solar"]
)
def test_the_preview_the_admins_preview_and_the_api_list_what_beat_then_sends(
    clock: time_machine.Traveller, admin_client: Client, sent: list[dict[str, Any]], kind: str
) -> None:
    """README (*Beat*): every preview lists what beat then sends, from the same code. One
    schedule of each kind, a last run where it has one: the function, `list_schedules`, the
    admin's preview endpoint (as a logged-in superuser) and `GET /api/schedules/{id}/next-runs/`
    give the same times, and beat's real tick, on a clock moved every 50 s, sends exactly those
    slots. A preview one slot off fails here."""
    task, form, by_hand = one_of_each_kind(kind, clock)
    shown = previews(admin_client, task, 3 if kind == "crontab across the spring-forward night" else 4, form)
    preview = shown["function"]
    assert preview, f"{kind}: no next run"
    assert shown == {surface: preview for surface in shown}
    times = [dt.datetime.fromisoformat(at) for at in preview]
    if kind == "crontab across the spring-forward night":
        assert [f"{at.astimezone(BERLIN):%Y-%m-%d %H:%M %Z}" for at in times] == by_hand
    elif kind == "solar":
        days = [at.date() for at in times]
        assert days == [NOON.date() + n * DAY for n in range(1, 5)] and all(2 <= at.hour <= 3 for at in times), times
    else:
        assert preview == by_hand
    beat = started()
    sweep(beat, clock, until=times[-1] + MINUTE)  # past the last previewed slot, short of the next one
    assert slots_sent(sent) == times, f"{kind}: beat sent {slots_sent(sent)}, the previews said {times}"
    beat.close()
