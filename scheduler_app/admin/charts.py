"""The dashboard's two charts, as the figures Chart.js draws (static/beatkeeper/dashboard.js,
the same library as the trends page). The page carries them through Django's json_script,
so every label is escaped as JSON inside the page and set as text by the library."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone


def runs_per_hour(hours: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacked bars: runs per hour by state, the last 24 hours (hours in the server's zone)."""
    return {
        "labels": [local_hour(hour["hour"]) for hour in hours],
        "success": [hour["states"].get("SUCCESS", 0) for hour in hours],
        "failure": [hour["states"].get("FAILURE", 0) for hour in hours],
        "other": [hour["states"].get("OTHER", 0) for hour in hours],
        "zone": timezone.get_current_timezone_name(),
    }


def median_per_task(medians: list[tuple[str, float]]) -> dict[str, Any]:
    """Horizontal bars: median duration per task over the last 24 hours, in seconds."""
    return {"labels": [name for name, _ in medians], "seconds": [round(value, 3) for _, value in medians]}


def local_hour(moment: dt.datetime) -> str:
    return timezone.localtime(moment).strftime("%H:00")
