"""seed_default_tasks: idempotent, keeps operator edits, --reset, --dry-run."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from scheduler_app import catalog
from scheduler_app.models import SchedulePolicy

pytestmark = pytest.mark.django_db

CATALOG_SIZE = len(catalog.definitions())


def seed(*args: str) -> str:
    out = StringIO()
    call_command("seed_default_tasks", *args, stdout=out)
    return out.getvalue()


def snapshot() -> list[tuple[object, ...]]:
    rows = PeriodicTask.objects.order_by("name")
    return [(t.name, t.task, t.interval_id, t.crontab_id, t.kwargs, t.enabled, t.date_changed) for t in rows]


def test_it_creates_one_schedule_per_catalog_definition() -> None:
    output = seed()
    assert f"{CATALOG_SIZE} created, 0 updated, 0 unchanged" in output
    names = set(PeriodicTask.objects.values_list("name", flat=True))
    assert names == {d.name for d in catalog.definitions()}
    assert SchedulePolicy.objects.filter(catalog_key="maintenance.cleanup_old_runs").exists()


def test_it_seeds_the_catalogs_schedules_and_options() -> None:
    seed()
    health = PeriodicTask.objects.get(name="System health check")
    assert (health.interval.every, health.interval.period) == (5, IntervalSchedule.MINUTES)
    assert health.expire_seconds == 300
    purge = PeriodicTask.objects.get(name="Purge expired sessions")
    assert (purge.crontab.minute, purge.crontab.hour, str(purge.crontab.timezone)) == ("17", "3", "UTC")


def test_it_changes_nothing_on_a_second_run() -> None:
    seed()
    before = snapshot()
    output = seed()
    assert f"0 created, 0 updated, {CATALOG_SIZE} unchanged" in output
    assert snapshot() == before


def test_it_keeps_what_an_operator_edited() -> None:
    seed()
    every_minute, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.filter(name="System health check").update(interval=every_minute)
    PeriodicTask.objects.filter(name="Log statistics").update(enabled=False, kwargs='{"window_minutes": 60}')
    output = seed()
    assert "[kept operator edits: schedule; --reset to replace]" in output
    assert "[kept operator edits: kwargs, enabled; --reset to replace]" in output
    assert PeriodicTask.objects.get(name="System health check").interval == every_minute
    stats = PeriodicTask.objects.get(name="Log statistics")
    assert (stats.enabled, json.loads(stats.kwargs)) == (False, {"window_minutes": 60})


def test_it_follows_the_catalog_for_fields_the_operator_left_alone() -> None:
    seed()
    task = PeriodicTask.objects.get(name="Clean up old runs")
    PeriodicTask.objects.filter(pk=task.pk).update(description="as an older release seeded it", enabled=False)
    policy = SchedulePolicy.objects.get(periodic_task=task)
    policy.seeded_state["description"] = "as an older release seeded it"
    policy.save()
    output = seed()
    task.refresh_from_db()
    assert task.description == catalog._definitions["maintenance.cleanup_old_runs"].description
    assert task.enabled is False  # the operator's edit survives the upgrade
    assert "1 updated" in output


def test_it_finds_a_renamed_schedule_by_its_catalog_key() -> None:
    seed()
    PeriodicTask.objects.filter(name="Log statistics").update(name="Stats (renamed by ops)")
    output = seed()
    assert f"0 created, 0 updated, {CATALOG_SIZE} unchanged" in output
    assert not PeriodicTask.objects.filter(name="Log statistics").exists()


def test_it_puts_every_field_back_with_reset() -> None:
    seed()
    PeriodicTask.objects.filter(name="Log statistics").update(enabled=False, kwargs='{"window_minutes": 60}')
    output = seed("--reset")
    stats = PeriodicTask.objects.get(name="Log statistics")
    assert (stats.enabled, json.loads(stats.kwargs)) == (True, {})
    assert "1 updated" in output


def test_it_writes_nothing_in_a_dry_run() -> None:
    output = seed("--dry-run")
    assert f"dry run, nothing written: {CATALOG_SIZE} created" in output
    assert PeriodicTask.objects.count() == 0
    seed()
    PeriodicTask.objects.filter(name="Log statistics").update(enabled=False)
    before = snapshot()
    output = seed("--reset", "--dry-run")
    assert "enabled False -> True" in output
    assert snapshot() == before


def test_it_leaves_a_hand_made_schedule_of_the_same_name_to_its_owner() -> None:
    hourly, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    PeriodicTask.objects.create(name="Log statistics", task="maintenance.log_statistics", interval=hourly)
    output = seed()
    assert "kept operator edits: schedule" in output
    assert PeriodicTask.objects.get(name="Log statistics").interval == hourly
