"""/metrics: Prometheus text read from the runs, schedule health, the broker and beat at
scrape time, behind a bearer token and/or an address list."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any, TypedDict

import pytest
from django.core.cache import cache
from django.test import Client, override_settings
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult
from prometheus_client.parser import text_string_to_metric_families

from scheduler_app.beat import leader
from scheduler_app.connection import redis_client
from scheduler_app.models import Pool, ScheduleHealth
from scheduler_app.runs import pools

pytestmark = pytest.mark.django_db
TOKEN = "s3cret-metrics-token"
OPEN = {"METRICS_TOKEN": "", "METRICS_ALLOWED_IPS": ["127.0.0.0/8"]}


def scrape(**headers: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a fresh scrape, by name and labels."""
    cache.clear()
    response = Client().get("/metrics", **headers)
    assert response.status_code == 200, response.content
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def run(task: str, status: str, *, schedule: str = "", created: dt.datetime | None = None,
        started: dt.datetime | None = None, done: dt.datetime | None = None,
        slot: dt.datetime | None = None) -> None:  # fmt: skip
    """A recorded run with the given times (date_created and date_done are auto fields: set after)."""
    meta = {"trigger": "beat" if slot else "manual", "scheduled_for": slot.isoformat() if slot else None}
    row = TaskResult.objects.create(
        task_id=str(uuid.uuid4()), task_name=task, periodic_task_name=schedule or None, status=status,
        meta=json.dumps(meta),
    )  # fmt: skip
    now = timezone.now()
    TaskResult.objects.filter(pk=row.pk).update(
        date_created=created or now, date_started=started, date_done=done or now
    )


@override_settings(**OPEN)
def test_it_counts_the_runs_of_the_last_day_by_task_schedule_and_state() -> None:
    now = timezone.now()
    for status in ("SUCCESS", "SUCCESS", "SUCCESS", "FAILURE"):
        run("tests.metrics.count", status, schedule="nightly-report")
    run("tests.metrics.count", "SUCCESS")  # no schedule: sent by hand
    run("tests.metrics.count", "SUCCESS", schedule="nightly-report", created=now - dt.timedelta(hours=25))

    samples = scrape()

    key = {"task": "tests.metrics.count", "schedule": "nightly-report"}
    assert value(samples, "beatkeeper_runs_last_24h", **key, state="SUCCESS") == 3
    assert value(samples, "beatkeeper_runs_last_24h", **key, state="FAILURE") == 1
    assert value(samples, "beatkeeper_runs_last_24h", task="tests.metrics.count", schedule="", state="SUCCESS") == 1
    assert value(samples, "beatkeeper_collector_success", part="runs") == 1


@override_settings(**OPEN)
def test_it_folds_schedules_beyond_the_limit_into_other(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("scheduler_app.monitoring.metrics.MAX_SCHEDULES", 2)
    for name, runs in (("busy", 3), ("middling", 2), ("quiet-a", 1), ("quiet-b", 1)):
        for _ in range(runs):
            run("tests.metrics.fold", "SUCCESS", schedule=name)

    samples = scrape()

    names = {
        dict(labels)["schedule"]
        for (name, labels), _ in samples.items()
        if name == "beatkeeper_runs_last_24h" and dict(labels)["task"] == "tests.metrics.fold"
    }
    assert names == {"busy", "middling", "_other"}
    assert (
        value(samples, "beatkeeper_runs_last_24h", task="tests.metrics.fold", schedule="_other", state="SUCCESS") == 2
    )


@override_settings(**OPEN)
def test_it_measures_durations_and_lateness_of_recent_runs() -> None:
    now = timezone.now()
    task = "tests.metrics.timing"
    for seconds, late in ((0.3, 0.2), (4, 3), (50, 40)):
        slot = now - dt.timedelta(minutes=5)
        started = slot + dt.timedelta(seconds=late)
        run(
            task, "SUCCESS", schedule="timing", started=started, done=started + dt.timedelta(seconds=seconds), slot=slot
        )
    old = now - dt.timedelta(hours=2)  # outside the 15-minute window
    run(task, "SUCCESS", created=old, started=old, done=old + dt.timedelta(seconds=999), slot=old)
    run(task, "SUCCESS", started=now, done=now + dt.timedelta(seconds=2))  # manual: a duration, no lateness

    samples = scrape()

    duration = "beatkeeper_run_duration_seconds_bucket"
    assert value(samples, duration, task=task, le="0.5") == 1
    assert value(samples, duration, task=task, le="2.5") == 2
    assert value(samples, duration, task=task, le="5.0") == 3
    assert value(samples, duration, task=task, le="60.0") == 4
    assert value(samples, duration, task=task, le="+Inf") == 4
    assert value(samples, "beatkeeper_run_duration_seconds_gsum", task=task) == pytest.approx(56.3)
    lateness = "beatkeeper_run_lateness_seconds_bucket"
    assert value(samples, lateness, task=task, le="0.5") == 1
    assert value(samples, lateness, task=task, le="5.0") == 2
    assert value(samples, lateness, task=task, le="+Inf") == 3
    assert value(samples, "beatkeeper_run_lateness_seconds_gsum", task=task) == pytest.approx(43.2)


def schedule(name: str, state: str, failures: int = 0) -> None:
    every = IntervalSchedule.objects.get_or_create(every=5, period=IntervalSchedule.MINUTES)[0]
    task = PeriodicTask.objects.create(name=name, task="tests.metrics.health", interval=every)
    now = timezone.now()
    ScheduleHealth.objects.create(periodic_task=task, state=state, since=now, failures=failures, checked_at=now)


@override_settings(**OPEN)
def test_it_counts_late_and_failing_schedules_and_names_them() -> None:
    schedule("metrics-ok", ScheduleHealth.OK)
    schedule("metrics-late", ScheduleHealth.LATE)
    schedule("metrics-failing", ScheduleHealth.FAILING, failures=3)
    schedule("metrics-failing-too", ScheduleHealth.FAILING, failures=1)

    samples = scrape()

    assert value(samples, "beatkeeper_schedules", health="ok") == 1
    assert value(samples, "beatkeeper_schedules", health="late") == 1
    assert value(samples, "beatkeeper_schedules", health="failing") == 2
    assert value(samples, "beatkeeper_schedule_unhealthy", schedule="metrics-late", health="late") == 1
    assert value(samples, "beatkeeper_schedule_failures", schedule="metrics-failing") == 3
    assert value(samples, "beatkeeper_schedule_unhealthy", schedule="metrics-ok", health="ok") is None
    assert value(samples, "beatkeeper_schedule_check_timestamp_seconds") == pytest.approx(
        timezone.now().timestamp(), abs=60
    )


@override_settings(**OPEN)
def test_it_reports_the_broker_the_workers_and_each_beat_with_its_leader() -> None:
    client = redis_client()
    lease = leader.Lease(ttl=10, node="beat-metrics-lead")
    assert lease.hold()
    try:
        leader.beat(client, "beat-metrics-lead", {"role": "leader", "lag": 0.25, "sent": 7})
        leader.beat(client, "beat-metrics-standby", {"role": "follower", "lag": 0, "sent": 0})

        samples = scrape()
    finally:
        lease.release()
        client.delete(leader.HEARTBEAT_KEY)

    assert value(samples, "beatkeeper_broker_up") == 1
    assert value(samples, "beatkeeper_workers_online") == 0  # no worker runs in this test
    assert value(samples, "beatkeeper_queue_depth", queue="celery") is not None
    assert value(samples, "beatkeeper_beat_has_leader") == 1
    assert value(samples, "beatkeeper_beat_leader", node="beat-metrics-lead") == 1
    assert value(samples, "beatkeeper_beat_leader", node="beat-metrics-standby") == 0
    assert value(samples, "beatkeeper_beat_lag_seconds", node="beat-metrics-lead") == 0.25
    assert value(samples, "beatkeeper_beat_sent_total", node="beat-metrics-lead") == 7
    assert 0 <= (value(samples, "beatkeeper_beat_seconds_since_tick", node="beat-metrics-lead") or -1) < 5


@override_settings(**OPEN)
def test_it_reports_each_pools_size_slots_in_use_and_runs_waiting(key: str) -> None:
    pool = Pool.objects.create(name=key, size=1)
    holder, waiter = pools.PoolSlot(pool.spec(), "run-a"), pools.PoolSlot(pool.spec(), "run-b")
    try:
        assert holder.acquire().admitted and not waiter.acquire().admitted
        samples = scrape()
    finally:
        holder.release()
    assert value(samples, "beatkeeper_pool_size", pool=key) == 1
    assert value(samples, "beatkeeper_pool_slots_in_use", pool=key) == 1
    assert value(samples, "beatkeeper_pool_waiting", pool=key) == 1
    assert value(samples, "beatkeeper_collector_success", part="pools") == 1


@override_settings(**OPEN)
def test_it_serves_the_same_text_for_a_few_seconds_and_is_never_cached_downstream() -> None:
    first = Client().get("/metrics")
    run("tests.metrics.cache", "SUCCESS", schedule="cached")
    second = Client().get("/metrics")

    assert first.content == second.content  # one collection serves every scrape for CACHE_SECONDS
    assert "no-store" in second["Cache-Control"]
    assert second["Content-Type"].startswith("text/plain; version=")
    cache.clear()  # as when CACHE_SECONDS have passed
    assert b"tests.metrics.cache" in Client().get("/metrics").content


@override_settings(METRICS_TOKEN=TOKEN, METRICS_ALLOWED_IPS=[])
def test_it_wants_the_bearer_token_when_one_is_set() -> None:
    missing = Client().get("/metrics")
    wrong = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer not-the-token")
    basic = Client().get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}")
    right = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert (missing.status_code, wrong.status_code, basic.status_code) == (401, 401, 401)
    assert missing["WWW-Authenticate"].startswith("Bearer")
    assert b"beatkeeper_" not in wrong.content
    assert right.status_code == 200
    assert b"beatkeeper_collector_success" in right.content


@override_settings(METRICS_TOKEN="", METRICS_ALLOWED_IPS=["10.0.0.0/8", "2001:db8::/32"])
def test_it_answers_only_the_allowed_networks_when_a_list_is_set() -> None:
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="::ffff:10.1.2.3").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="2001:db8::7").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="192.168.1.5").get("/metrics").status_code == 403
    # An allowed address that carries a forwarded header is a proxy's: whoever is behind it is
    # unknown, so the list alone does not let it in (an address the list refuses proves nothing).
    proxied = Client(REMOTE_ADDR="10.1.2.3").get("/metrics", HTTP_X_FORWARDED_FOR="10.1.2.4")
    assert proxied.status_code == 403
    assert b"through a proxy, /metrics needs METRICS_TOKEN" in proxied.content


class BearerAuth(TypedDict):
    """The token's request header (a TypedDict: `**` of it fills none of Client.get's parameters)."""

    HTTP_AUTHORIZATION: str


@override_settings(METRICS_TOKEN=TOKEN, METRICS_ALLOWED_IPS=["10.0.0.0/8"])
def test_it_wants_both_the_address_and_the_token_when_both_are_set() -> None:
    auth: BearerAuth = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics", **auth).status_code == 200
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 401
    assert Client(REMOTE_ADDR="192.168.1.5").get("/metrics", **auth).status_code == 403


@override_settings(METRICS_TOKEN="", METRICS_ALLOWED_IPS=[])
def test_it_serves_nothing_when_neither_token_nor_networks_are_set() -> None:
    response = Client().get("/metrics")
    assert response.status_code == 403
    assert b"METRICS_TOKEN" in response.content


@override_settings(METRICS_TOKEN=TOKEN, METRICS_ALLOWED_IPS=[])
def test_it_answers_a_scrape_that_calls_the_pod_by_ip_address() -> None:
    response = Client().get("/metrics", HTTP_HOST="10.244.1.17:8000", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
