"""Trivial tasks for bench/platform_overhead.py: the same body, plain and platform."""

from __future__ import annotations

from celery import shared_task

from bench.counting import count
from scheduler_app.catalog import platform_task


@shared_task(name="bench.plain")
def plain(n: int) -> dict[str, int]:
    return {"n": n}


@platform_task(name="bench.platform")
def platform(n: int) -> dict[str, int]:
    return {"n": n}


@platform_task(name="bench.platform_locked", overlap="skip")
def platform_locked(n: int) -> dict[str, int]:
    return {"n": n}


@shared_task(name="bench.counted")
def counted(n: int) -> dict[str, int]:
    count()
    return {"n": n}


@platform_task(name="bench.counted_platform")
def counted_platform(n: int) -> dict[str, int]:
    count()
    return {"n": n}
