"""The system health check: host resources, broker, workers and queues against thresholds."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from maintenance.system import HostSample

logger = logging.getLogger(__name__)

OK, WARNING, ERROR = "ok", "warning", "error"
OVERALL = {OK: "healthy", WARNING: "warning", ERROR: "error"}
RANK = {OK: 0, WARNING: 1, ERROR: 2}


@dataclass(frozen=True)
class PlatformSample:
    broker_reachable: bool
    broker_error: str
    workers: list[str]
    queue_depths: dict[str, int]


def evaluate(host: HostSample, platform: PlatformSample, thresholds: Mapping[str, float]) -> dict[str, Any]:
    """Judge the samples; log one warning per threshold crossed. Pure apart from logging."""
    checks = {
        "memory": _percent(host.memory_percent, thresholds["memory_percent"]),
        "disk": _percent(host.disk_percent, thresholds["disk_percent"]),
        "cpu": _percent(host.cpu_percent, thresholds["cpu_percent"]),
        "broker": _broker(platform),
        "workers": _workers(platform),
        "queues": _queues(platform, thresholds["queue_depth"]),
    }
    for name, check in checks.items():
        if check["status"] != OK:
            logger.warning("health check %s is %s: %s", name, check["status"], check["detail"])
    worst = max((c["status"] for c in checks.values()), key=RANK.__getitem__)
    return {"status": OVERALL[worst], "checks": checks, "timestamp": timezone.now().isoformat()}


def _percent(value: float, threshold: float) -> dict[str, Any]:
    status = WARNING if value > threshold else OK
    detail = f"{value:.1f}% used (warning above {threshold:g}%)"
    return {"status": status, "percent": value, "threshold": threshold, "detail": detail}


def _broker(platform: PlatformSample) -> dict[str, Any]:
    if platform.broker_reachable:
        return {"status": OK, "reachable": True, "detail": "broker answered a ping"}
    detail = f"broker unreachable ({platform.broker_error}); check REDIS_URL and the Redis server"
    return {"status": ERROR, "reachable": False, "detail": detail}


def _workers(platform: PlatformSample) -> dict[str, Any]:
    count = len(platform.workers)
    status = OK if count else WARNING
    detail = f"{count} worker(s) answered a ping" if count else "no worker answered a ping"
    return {"status": status, "count": count, "names": platform.workers, "detail": detail}


def _queues(platform: PlatformSample, threshold: float) -> dict[str, Any]:
    deep = {q: n for q, n in platform.queue_depths.items() if n > threshold}
    unknown = [q for q, n in platform.queue_depths.items() if n < 0]
    status = WARNING if deep or unknown else OK
    detail = f"queues over {threshold:g} messages: {deep}" if deep else "queues within limits"
    if unknown:
        detail += f"; depth unknown for {unknown}"
    return {"status": status, "depths": platform.queue_depths, "threshold": threshold, "detail": detail}
