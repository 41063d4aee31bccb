"""System checks that refuse a broken configuration at start-up, with a clear message."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from scheduler_app import catalog


@checks.register()
def time_limits_fit_visibility_timeout(**kwargs: Any) -> list[checks.CheckMessage]:
    """A run outliving the visibility timeout would be delivered again while it runs."""
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    return [
        checks.Error(
            f"{d.task} has a hard time limit of {d.time_limit}s, not below the broker's "
            f"visibility timeout of {timeout}s: a long run would be delivered twice.",
            hint="Raise CELERY_VISIBILITY_TIMEOUT above the longest time limit, or lower the limit.",
            id="beatkeeper.E001",
        )
        for d in catalog.definitions()
        if d.time_limit is not None and d.time_limit >= timeout
    ]
