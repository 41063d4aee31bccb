"""The system health check's judgement, and its probes against a broker that is not there."""

from __future__ import annotations

import logging

import pytest
from django.test import override_settings

from maintenance import tasks
from maintenance.health import PlatformSample, evaluate
from maintenance.system import HostSample, sample_host

THRESHOLDS = {"memory_percent": 80, "disk_percent": 90, "cpu_percent": 90, "queue_depth": 1000}
CALM_HOST = HostSample(memory_percent=40, disk_percent=50, cpu_percent=10)
CALM_PLATFORM = PlatformSample(True, "", ["worker@a"], {"celery": 3})


def test_it_is_healthy_when_nothing_crosses_a_threshold() -> None:
    result = evaluate(CALM_HOST, CALM_PLATFORM, THRESHOLDS)
    assert result["status"] == "healthy"
    assert set(result["checks"]) == {"memory", "disk", "cpu", "broker", "workers", "queues"}
    assert result["checks"]["workers"]["count"] == 1
    assert result["timestamp"]


def test_it_warns_once_per_threshold_crossed(caplog: pytest.LogCaptureFixture) -> None:
    host = HostSample(memory_percent=85.5, disk_percent=95, cpu_percent=10)
    platform = PlatformSample(True, "", ["worker@a"], {"celery": 5000})
    with caplog.at_level(logging.WARNING, logger="maintenance.health"):
        result = evaluate(host, platform, THRESHOLDS)
    assert result["status"] == "warning"
    warned = sorted(r.getMessage().split()[2] for r in caplog.records)
    assert warned == ["disk", "memory", "queues"]
    assert "85.5% used (warning above 80%)" in result["checks"]["memory"]["detail"]


def test_it_warns_when_no_worker_answers() -> None:
    result = evaluate(CALM_HOST, PlatformSample(True, "", [], {"celery": 0}), THRESHOLDS)
    assert (result["status"], result["checks"]["workers"]["status"]) == ("warning", "warning")


def test_it_is_an_error_when_the_broker_is_unreachable() -> None:
    result = evaluate(CALM_HOST, PlatformSample(False, "ConnectionError: refused", [], {}), THRESHOLDS)
    assert result["status"] == "error"
    assert "check REDIS_URL" in result["checks"]["broker"]["detail"]


@override_settings(REDIS_URL="redis://127.0.0.1:1/0")
def test_it_reports_a_broker_that_does_not_answer_instead_of_hanging() -> None:
    sample = tasks.platform_sample()
    assert sample.broker_reachable is False
    assert "Connection" in sample.broker_error
    assert sample.workers == []
    assert set(sample.queue_depths.values()) == {-1}


def test_it_samples_the_real_host() -> None:
    sample = sample_host("/", cpu_interval=0.1)
    for value in sample.as_dict().values():
        assert 0 <= value <= 100
