"""At worker start-up the platform checks itself once, so an operator sees it work at once.

With several workers starting together, a short Redis claim lets exactly one of them send
the check.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.signals import worker_ready
from django.conf import settings

from scheduler_app.connection import redis_client

logger = logging.getLogger(__name__)
CLAIM_KEY = "beatkeeper:startup-health-check"
CLAIM_SECONDS = 60


@worker_ready.connect
def send_startup_health_check(sender: Any = None, **kwargs: Any) -> None:
    if not settings.STARTUP_HEALTH_CHECK:
        return
    try:
        claimed = redis_client().set(CLAIM_KEY, "1", nx=True, ex=CLAIM_SECONDS)
    except redis.RedisError as exc:
        logger.warning("start-up health check not sent: broker unreachable (%s)", exc)
        return
    if claimed:
        sender.app.send_task("maintenance.system_health_check")
        logger.info("start-up health check sent")
