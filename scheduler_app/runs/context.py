"""A run's context: the facts of the run that travel in its message's `beatkeeper` header
(trigger, schedule, scheduled-for and queued-at times, who asked), read by every process
that writes one of its states."""

from __future__ import annotations

from typing import Any

HEADER = "beatkeeper"


def header_of(request: Any) -> dict[str, Any]:
    header = getattr(request, HEADER, None) or (getattr(request, "headers", None) or {}).get(HEADER) or {}
    return header if isinstance(header, dict) else {}


def context_of(header: dict[str, Any], request: Any) -> dict[str, Any]:
    """The run's facts that travel in its message header."""
    return {
        "trigger": header.get("trigger", "direct"),
        "schedule": header.get("schedule") or getattr(request, "periodic_task_name", None),
        "scheduled_for": header.get("scheduled_for"),
        "queued_at": header.get("queued_at"),
        **{key: header[key] for key in ("by", "retry_of", "slot", "backfill") if header.get(key)},
    }
