"""Probes of the broker and the workers behind it: reachability, queue depths, workers.

Used by the health check, the statistics task, the dashboard and the console's services;
every probe answers within a few seconds and reports a failure instead of raising.

Web requests and the console's services talk to the broker through `bounded_connection()`,
a connection of their own whose every call waits REDIS_REQUEST_TIMEOUT at most: the app's
pooled connections are the workers' (a 30 s socket timeout, retries for as long as the
broker takes), and a request on them against a hung Redis waits 30 s to minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from celery import current_app
from django.conf import settings
from kombu import Connection

from scheduler_app import catalog
from scheduler_app.connection import redis_client, request_timeout


@dataclass(frozen=True)
class BrokerStatus:
    reachable: bool
    error: str = ""


def bound() -> float:
    """Seconds each broker call of a web request (or of the console's services) waits at most."""
    return request_timeout() or float(settings.REDIS_REQUEST_TIMEOUT)


def bounded_connection() -> Connection:
    """A broker connection of its own, for one request: connecting and every answer wait
    `bound()` seconds at most, and a lost connection is tried once more (kombu's ensure)."""
    seconds = bound()
    options: dict[str, Any] = {"socket_timeout": seconds, "socket_connect_timeout": seconds, "max_retries": 1}
    sentinel = current_app.conf.broker_transport_options.get("sentinel_kwargs")
    if sentinel:  # asking the sentinels for the primary is bounded too
        options["sentinel_kwargs"] = {**sentinel, "socket_timeout": seconds, "socket_connect_timeout": seconds}
    return current_app.connection_for_write(connect_timeout=seconds, transport_options=options)


def broker_status() -> BrokerStatus:
    client = redis_client(bound())
    try:
        client.ping()
    except redis.RedisError as exc:
        return BrokerStatus(False, f"{type(exc).__name__}: {exc}")
    finally:
        client.close()
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
    with bounded_connection() as conn:
        for queue in known_queues():
            depths[queue] = _depth(conn, queue)
    return depths


def _depth(conn: Connection, queue: str) -> int:
    try:
        channel = conn.default_channel  # kombu-stubs type it StdChannel, which lacks the transports' queue_declare
        return int(channel.queue_declare(queue=queue, passive=True).message_count)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001  (a queue nobody declared yet is empty)
        return 0 if "NOT_FOUND" in str(exc) or "no queue" in str(exc).lower() else -1


def workers_online(timeout: float = 1.0, limit: int | None = None) -> list[str]:
    """Hostnames of the workers that answered a ping within `timeout` seconds (Celery waits
    the whole timeout for answers, unless `limit` of them came sooner)."""
    try:
        with bounded_connection() as conn:
            replies = current_app.control.ping(timeout=timeout, connection=conn, limit=limit) or []
    except Exception:  # noqa: BLE001  (no broker: no worker can answer either)
        return []
    return sorted(name for reply in replies for name in reply)
