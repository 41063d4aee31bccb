"""Statistics of the platform, as one structured log line."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from django.db.models import Count
from django.utils import timezone
from django_celery_results.models import TaskResult

logger = logging.getLogger(__name__)


def runs_by_status(since: dt.datetime) -> dict[str, int]:
    rows = TaskResult.objects.filter(date_done__gte=since).values("status").annotate(n=Count("pk"))
    return {row["status"]: row["n"] for row in rows.order_by("status")}


def log_statistics(
    window: dt.timedelta, *, queue_depths: dict[str, int], workers: list[str], host: dict[str, float]
) -> dict[str, Any]:
    now = timezone.now()
    stats = {
        "window_seconds": int(window.total_seconds()),
        "runs_by_status": runs_by_status(now - window),
        "queue_depths": queue_depths,
        "workers": len(workers),
        "host": host,
        "timestamp": now.isoformat(),
    }
    logger.info("beatkeeper.statistics %s", json.dumps(stats, sort_keys=True))
    return stats
