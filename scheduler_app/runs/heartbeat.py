"""Keep a live worker's messages from being delivered a second time.

Redis has no acknowledgement timeout of its own: kombu remembers each delivered,
unacknowledged message in the `unacked_index` sorted set, scored by delivery time, and
any worker puts it back on its queue once the score is older than the visibility
timeout. Without more, a run longer than the timeout, or a countdown/ETA further away
than it, is delivered twice while its worker is alive (Celery's known pitfall).

So each worker refreshes the score of every message it still holds (running, reserved
or waiting for its ETA) every quarter of the timeout. A worker that dies stops
refreshing, and its messages come back after the timeout: a bounded redelivery time
with a short timeout, and no duplicate however long a run or an ETA.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast

import redis
from celery.signals import worker_ready, worker_shutdown
from celery.worker import state as worker_state
from celery.worker.request import Request
from django.conf import settings

from scheduler_app.connection import redis_client

logger = logging.getLogger(__name__)
_stop = threading.Event()


def held_requests(timer: Any) -> list[Request]:
    """Running and reserved requests, and those the consumer's timer holds for their ETA."""
    for _ in range(3):  # the worker changes these while we copy them
        try:
            waiting = [entry.entry.args[0] for entry in list(timer.schedule.queue) if entry.entry.args]
            held = list(worker_state.reserved_requests) + list(worker_state.active_requests) + waiting
            return [request for request in held if isinstance(request, Request)]
        except RuntimeError:
            continue
    return []


def held_delivery_tags(timer: Any) -> list[str]:
    tags = (getattr(request.message, "delivery_tag", None) for request in held_requests(timer))
    return sorted({tag for tag in tags if tag})


def refresh(client: redis.Redis, tags: list[str], key: str) -> int:
    """Mark the messages as just delivered; only tags still in the index are touched."""
    if not tags:
        return 0
    now = time.time()
    # Without incr=True, ZADD answers a count (the stub's union also covers incr's score or None).
    return int(cast(int, client.zadd(key, dict.fromkeys(tags, now), xx=True, ch=True)))


def interval() -> float:
    timeout: float = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    return max(1.0, timeout / 4)


def _beat(key: str, timer: Any) -> None:
    client = redis_client()
    while not _stop.wait(interval()):
        try:
            refresh(client, held_delivery_tags(timer), key)
        except redis.RedisError as exc:
            logger.warning("could not refresh held messages (broker unreachable?): %s", exc)


@worker_ready.connect
def start_heartbeat(sender: Any = None, **kwargs: Any) -> None:
    key = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("unacked_index_key", "unacked_index")
    _stop.clear()
    timer = sender.timer  # the consumer's: it holds countdown/ETA requests until due
    threading.Thread(target=_beat, args=(key, timer), name="unacked-heartbeat", daemon=True).start()


@worker_shutdown.connect
def stop_heartbeat(**kwargs: Any) -> None:
    _stop.set()
