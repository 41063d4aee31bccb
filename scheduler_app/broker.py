"""Probes of the broker and the workers behind it: reachability, queue depths, workers.

Used by the health check and the statistics task; every probe answers within a few
seconds and reports a failure instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import current_app
from kombu import Connection

from scheduler_app import catalog
from scheduler_app.connection import redis_client


@dataclass(frozen=True)
class BrokerStatus:
    reachable: bool
    error: str = ""


def broker_status() -> BrokerStatus:
    try:
        redis_client().ping()
    except redis.RedisError as exc:
        return BrokerStatus(False, f"{type(exc).__name__}: {exc}")
    return BrokerStatus(True)


def known_queues() -> list[str]:
    queues = {current_app.conf.task_default_queue}
    queues.update(d.queue for d in catalog.definitions() if d.queue)
    return sorted(queues)


def queue_depths() -> dict[str, int]:
    """Messages waiting per queue (all priority levels); -1 where the broker did not answer."""
    if not broker_status().reachable:
        return dict.fromkeys(known_queues(), -1)
    depths = {}
    with current_app.connection_for_read() as conn:
        for queue in known_queues():
            depths[queue] = _depth(conn, queue)
    return depths


def _depth(conn: Connection, queue: str) -> int:
    try:
        channel = conn.default_channel  # kombu-stubs type it StdChannel, which lacks the transports' queue_declare
        return int(channel.queue_declare(queue=queue, passive=True).message_count)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001  (a queue nobody declared yet is empty)
        return 0 if "NOT_FOUND" in str(exc) or "no queue" in str(exc).lower() else -1


def workers_online(timeout: float = 1.0) -> list[str]:
    """Hostnames of the workers that answered a ping within `timeout` seconds."""
    try:
        replies = current_app.control.ping(timeout=timeout) or []
    except Exception:  # noqa: BLE001  (no broker: no worker can answer either)
        return []
    return sorted(name for reply in replies for name in reply)
