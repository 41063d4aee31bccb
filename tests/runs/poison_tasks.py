"""Tasks for the poison-message tests; a test worker loads them with --include.

What happened is counted in Redis under a key the test chooses.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from celery import shared_task

from scheduler_app.catalog import platform_task
from scheduler_app.connection import redis_client


@shared_task(name="tests.poison.echo")
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """A plain task (not a PlatformTask): the guard covers every task."""
    return {"args": len(args), "kwargs": sorted(kwargs)}


@shared_task(name="tests.poison.kills_its_process")
def kills_its_process(key: str) -> None:
    """Kills the pool process running it, every time: the message comes back each time."""
    redis_client().incr(f"{key}:runs")
    os.kill(os.getpid(), signal.SIGKILL)


@platform_task(name="tests.poison.killed_once")
def killed_once(key: str) -> dict[str, Any]:
    """Kills its pool process on the first run only; the second run finishes."""
    runs = redis_client().incr(f"{key}:runs")
    if runs == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"runs": runs}
