"""The run ledger's backlog as /metrics, /readyz and the dashboard show it: fake entries
in the real stream (`bk:ledger`, with ids of the past to make lag), a fake recorder
report, and Redis away. No recorder runs here: what the tests put in the stream stays."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

from scheduler_app.connection import redis_client
from scheduler_app.monitoring import readiness
from scheduler_app.runs import ledger, recorder
from tests.ports import free_port

pytestmark = pytest.mark.django_db(transaction=True)  # /readyz checks the database from a thread of its own
OPEN = {"METRICS_TOKEN": "", "METRICS_ALLOWED_IPS": ["127.0.0.0/8"]}
KEYS = (ledger.STREAM, ledger.DEAD, recorder.STATUS_KEY)
RECORDER = "test-host:4242"


@pytest.fixture
def stream() -> Iterator[redis.Redis]:
    """The ledger's keys, emptied for the test: what was there is set aside and put back
    afterwards (an explicit old id can only be added to a stream that has no newer one)."""
    client = redis_client()
    aside = f"test-aside-{uuid.uuid4().hex[:10]}"
    moved = []
    for name in KEYS:
        if client.exists(name):
            client.rename(name, f"{aside}:{name}")
            moved.append(name)
    yield client
    client.delete(*KEYS)
    for name in moved:
        client.rename(f"{aside}:{name}", name)
    client.close()


def add_old(client: redis.Redis, seconds_ago: float, count: int = 1) -> None:
    """`count` entries in the ledger's stream, as if written `seconds_ago` and never recorded."""
    ms = int((time.time() - seconds_ago) * 1000)
    for n in range(count):
        client.xadd(ledger.STREAM, {"e": b"{}"}, id=f"{ms}-{n}")


def report(client: redis.Redis, seconds_ago: float, recorded: int = 0) -> None:
    """What a recorder writes after each batch (recorder.Recorder._status)."""
    client.hset(recorder.STATUS_KEY, mapping={"recorder": RECORDER, "at": time.time() - seconds_ago})
    if recorded:
        client.hincrby(recorder.STATUS_KEY, "recorded", recorded)


def empty(client: redis.Redis) -> None:
    """As the recorder leaves the stream once it wrote everything: acknowledged and deleted."""
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", client.xrange(ledger.STREAM))
    ids = [entry_id for entry_id, _ in entries]
    if ids:
        client.xdel(ledger.STREAM, *ids)


def unreachable_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens, and no other test is given it: refused at once


# --- /metrics ---------------------------------------------------------------------------


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape() -> Samples:
    cache.clear()
    response = Client().get("/metrics")
    assert response.status_code == 200, response.content
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@override_settings(**OPEN)
def test_metrics_show_the_backlog_its_lag_the_dead_events_and_the_recorder(stream: redis.Redis) -> None:
    add_old(stream, 120, count=3)
    stream.xadd(ledger.DEAD, {"e": b"{}", "error": "refused", "entry": b"1-0"})
    report(stream, 5, recorded=42)

    samples = scrape()

    assert value(samples, "beatkeeper_collector_success", part="ledger") == 1
    assert value(samples, "beatkeeper_ledger_backlog_events") == 3
    assert 119 < (value(samples, "beatkeeper_ledger_lag_seconds") or 0) < 3600
    assert value(samples, "beatkeeper_ledger_dead_events") == 1
    assert 4 < (value(samples, "beatkeeper_ledger_recorder_last_report_age_seconds") or 0) < 3600
    assert value(samples, "beatkeeper_ledger_backlog_over_limit") == 0
    assert value(samples, "beatkeeper_ledger_recorded_total") == 42

    with override_settings(LEDGER_BACKLOG_LIMIT=2):
        assert value(scrape(), "beatkeeper_ledger_backlog_over_limit") == 1

    empty(stream)
    samples = scrape()
    assert value(samples, "beatkeeper_ledger_backlog_events") == 0
    assert value(samples, "beatkeeper_ledger_lag_seconds") == 0
    assert value(samples, "beatkeeper_ledger_recorded_total") == 42


@override_settings(**OPEN)
def test_metrics_leave_out_the_report_age_when_no_recorder_ever_reported(stream: redis.Redis) -> None:
    samples = scrape()

    assert value(samples, "beatkeeper_ledger_backlog_events") == 0
    assert value(samples, "beatkeeper_ledger_lag_seconds") == 0
    assert value(samples, "beatkeeper_ledger_recorded_total") == 0
    assert not any(name == "beatkeeper_ledger_recorder_last_report_age_seconds" for name, _ in samples)


@override_settings(**OPEN)
def test_metrics_say_the_ledger_part_failed_when_redis_is_away() -> None:
    with override_settings(REDIS_URL=unreachable_url()):
        samples = scrape()

    assert value(samples, "beatkeeper_collector_success", part="ledger") == 0
    assert not any(name.startswith("beatkeeper_ledger_") for name, _ in samples)
    assert value(samples, "beatkeeper_collector_success", part="runs") == 1  # the rest is served


# --- /readyz ----------------------------------------------------------------------------


@pytest.fixture
def beat_and_workers_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beat and workers pass (test_readyz.py checks them with real processes): what fails is the ledger."""
    monkeypatch.setattr(readiness, "check_beat", lambda: readiness.Check(True))
    monkeypatch.setattr(readiness, "check_workers", lambda: readiness.Check(True))


def readyz() -> tuple[int, dict[str, Any]]:
    cache.clear()  # a fresh round of checks, not the answer kept for READYZ_CACHE_SECONDS
    response = Client().get("/readyz")
    return response.status_code, response.json()


@pytest.mark.usefixtures("beat_and_workers_ready")
def test_readyz_fails_on_the_ledger_while_changes_wait_too_long_and_is_ready_once_recorded(
    stream: redis.Redis,
) -> None:
    add_old(stream, 120, count=2)
    stream.xadd(ledger.DEAD, {"e": b"{}", "error": "refused", "entry": b"1-0"})
    report(stream, 90)  # the recorder stopped a minute and a half ago

    status, body = readyz()

    assert status == 503
    assert body["failing"] == ["ledger"]
    check = body["checks"]["ledger"]
    assert re.fullmatch(
        r"the oldest unrecorded run state change is 1\d\ds old \(limit 60s\): "
        r"check that `manage.py record_runs` runs and that the database answers",
        check["error"],
    ), check["error"]
    details = check["details"]
    assert (details["backlog"], details["max_lag"], details["dead"], details["recorder"]) == (2, 60, 1, RECORDER)
    assert 119 < details["lag_seconds"] < 3600
    assert 89 < details["recorder_age"] < 3600

    empty(stream)
    status, body = readyz()

    assert status == 200, body
    check = body["checks"]["ledger"]
    assert check["ok"] and check["error"] is None
    assert (check["details"]["backlog"], check["details"]["lag_seconds"]) == (0, 0)
    assert check["details"]["dead"] == 1  # dead events are for an operator, not a reason to be unready


@pytest.mark.usefixtures("beat_and_workers_ready")
def test_readyz_fails_on_the_ledger_when_the_backlog_is_over_its_limit(stream: redis.Redis) -> None:
    for _ in range(3):
        stream.xadd(ledger.STREAM, {"e": b"{}"})  # fresh: no lag

    with override_settings(LEDGER_BACKLOG_LIMIT=2):
        status, body = readyz()
    assert status == 503 and body["failing"] == ["ledger"]
    assert body["checks"]["ledger"]["error"] == (
        "3 run state changes wait to be recorded (limit 2): "
        "check that `manage.py record_runs` runs and that the database answers"
    )

    assert readyz()[0] == 200  # the default limit


def test_readyz_does_not_check_the_ledger_without_the_broker() -> None:
    with override_settings(REDIS_URL=unreachable_url()):
        status, body = readyz()

    assert status == 503
    assert body["failing"] == ["broker", "beat", "workers", "ledger"]
    assert body["checks"]["ledger"]["error"] == "not checked: the broker does not answer"


# --- the dashboard ----------------------------------------------------------------------


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("ledger-boss", password="x"))
    return client


def ledger_card(client: Client) -> str:
    cache.clear()  # the dashboard shares its figures for a few seconds
    response = client.get("/admin/dashboard/panel/")
    assert response.status_code == 200
    found = re.search(r'<div class="bk-card" id="bk-ledger">.*?</div>', response.content.decode(), re.S)
    assert found, response.content.decode()
    return found.group(0)


def test_the_dashboard_shows_the_ledger_and_flags_lag_a_silent_recorder_and_dead_events(
    admin_client: Client, stream: redis.Redis
) -> None:
    add_old(stream, 120, count=2)
    stream.xadd(ledger.DEAD, {"e": b"{}", "error": "refused", "entry": b"1-0"})
    report(stream, 45)

    card = ledger_card(admin_client)

    assert '<h3 class="bk-bad">Run ledger</h3>' in card
    assert '<span class="bk-bad">2 state changes to record</span>' in card  # waiting, the recorder silent
    assert re.search(r'Lag: <span class="bk-bad">1\d\d\.\d s</span> \(limit 60 s\)', card), card
    assert re.search(rf'<span class="bk-bad">{RECORDER}, last report \d+\.\d s ago</span>', card), card
    assert 'Dead events: <span class="bk-bad">1</span>' in card


def test_the_dashboard_flags_nothing_while_the_recorder_keeps_up(admin_client: Client, stream: redis.Redis) -> None:
    stream.xadd(ledger.STREAM, {"e": b"{}"})
    report(stream, 0)

    card = ledger_card(admin_client)

    assert '<h3 class="">Run ledger</h3>' in card
    assert "1 state change to record" in card
    assert re.search(r"Lag: <span class=\"\">\d+\.\d s</span>", card), card
    assert f"{RECORDER}, last report" in card
    assert 'Dead events: <span class="">0</span>' in card
    assert "bk-bad" not in card

    empty(stream)
    stream.delete(recorder.STATUS_KEY)
    card = ledger_card(admin_client)
    assert "none has reported" in card and "0 state changes to record" in card
    assert "bk-bad" not in card  # no recorder, but nothing waits for one


def test_the_dashboard_says_redis_is_unreachable_when_it_is(admin_client: Client) -> None:
    with override_settings(REDIS_URL=unreachable_url()):
        card = ledger_card(admin_client)

    assert '<p class="bk-bad">Redis unreachable</p>' in card
