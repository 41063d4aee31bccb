"""RunPolicy and its per-schedule overrides, without a worker."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from scheduler_app.models import SchedulePolicy
from scheduler_app.runs.policy import RunPolicy
from scheduler_app.runs.runtime import ResultNotSerializable, backoff, ensure_serializable, report_progress


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"overlap": "sometimes"}, "overlap must be one of"),
        ({"catch_up": "all"}, "catch_up must be one of"),
        ({"lock_ttl": 1}, "lock_ttl must be at least 3 seconds"),
        ({"soft_time_limit": 60, "time_limit": 60}, "soft_time_limit must be below time_limit"),
    ],
)
def test_it_refuses_a_policy_that_cannot_work(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunPolicy(**fields)  # type: ignore[arg-type]  # invalid on purpose: values RunPolicy's types rule out


def test_it_overrides_only_what_a_schedule_sets() -> None:
    base = RunPolicy(overlap="skip", max_retries=3, soft_time_limit=50, time_limit=60)
    merged = base.with_overrides({"max_retries": 0, "lock_ttl": None, "unknown": 1})
    assert (merged.overlap, merged.max_retries, merged.lock_ttl) == ("skip", 0, 60)


def test_it_brings_the_soft_limit_below_a_lower_hard_limit() -> None:
    merged = RunPolicy(soft_time_limit=600, time_limit=660).with_overrides({"time_limit": 100})
    assert (merged.soft_time_limit, merged.time_limit) == (90, 100)


def test_it_doubles_the_backoff_up_to_its_cap_with_jitter_in_the_upper_half() -> None:
    exact = RunPolicy(retry_backoff=2, retry_backoff_max=10, retry_jitter=False)
    assert [backoff(exact, n) for n in range(5)] == [2, 4, 8, 10, 10]
    jittered = RunPolicy(retry_backoff=8, retry_jitter=True)
    assert all(4 <= backoff(jittered, 0) <= 8 for _ in range(50))


def test_it_names_the_task_and_the_fix_for_a_result_that_is_not_json() -> None:
    with pytest.raises(ResultNotSerializable, match="reports.build returned a set.*Return a dict of plain values"):
        ensure_serializable("reports.build", {1, 2})
    ensure_serializable("reports.build", {"when": "2026-01-01", "n": [1, 2.5, None]})


def test_it_reports_no_progress_outside_a_worker() -> None:
    assert report_progress(50, "half way") is False


@pytest.mark.django_db
def test_it_rejects_schedule_overrides_that_contradict_each_other() -> None:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    task = PeriodicTask.objects.create(name="p", task="maintenance.cleanup_old_runs", interval=every)
    policy = SchedulePolicy(periodic_task=task, soft_time_limit=120, time_limit=60)
    with pytest.raises(ValidationError, match="soft_time_limit must be below time_limit"):
        policy.full_clean()
    SchedulePolicy(periodic_task=task, time_limit=60).full_clean()  # the soft limit follows it
