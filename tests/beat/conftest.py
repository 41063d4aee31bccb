"""Fixtures of the in-process beat tests (tests/beat/beatkit.py has the helpers)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery.signals import before_task_publish

from scheduler_app.beat import leader
from scheduler_app.connection import redis_client
from tests.beat.beatkit import QUEUE


@pytest.fixture
def clean_redis() -> Iterator[None]:
    """No lease, slot marks or queued messages of an earlier test."""
    client = redis_client()
    for pattern in (leader.PREFIX + "*", QUEUE + "*"):
        for key in client.scan_iter(match=pattern):
            client.delete(key)
    yield
    for key in client.scan_iter(match=QUEUE + "*"):
        client.delete(key)


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """Every message published, as (all its headers, its body's args and kwargs)."""
    messages: list[dict[str, Any]] = []

    def capture(headers: dict[str, Any] | None = None, body: Any = None, **kwargs: Any) -> None:
        args, kwargs_, _ = body if isinstance(body, tuple | list) and len(body) == 3 else ((), {}, None)
        messages.append({"headers": dict(headers or {}), "args": list(args), "kwargs": dict(kwargs_)})

    before_task_publish.connect(capture, weak=False)
    yield messages
    before_task_publish.disconnect(capture)


@pytest.fixture
def sent() -> Iterator[list[dict[str, Any]]]:
    """The beatkeeper header of every message published, as beat published it."""
    headers_seen: list[dict[str, Any]] = []

    def capture(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
        headers_seen.append(dict((headers or {}).get("beatkeeper", {})))

    before_task_publish.connect(capture, weak=False)
    yield headers_seen
    before_task_publish.disconnect(capture)
