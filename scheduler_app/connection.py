"""The platform's Redis connection (REDIS_URL): the broker's server, used for locks,
claims and probes."""

from __future__ import annotations

import redis
from django.conf import settings


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=3, socket_timeout=5, health_check_interval=25
    )
