"""Beat: when each schedule runs, and sending each slot once under the leader's lease.

`scheduler_app.beat.Scheduler` is the path `CELERY_BEAT_SCHEDULER` names. It is loaded on
first use, so that importing `beat.slots` or `beat.leader` (the console, monitoring) does
not import the scheduler and django-celery-beat's `schedulers` module with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scheduler_app.beat.scheduler import Scheduler

__all__ = ["Scheduler"]


def __getattr__(name: str) -> Any:
    if name == "Scheduler":
        from scheduler_app.beat.scheduler import Scheduler

        return Scheduler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
