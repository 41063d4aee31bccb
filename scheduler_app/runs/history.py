"""Run history: the facts of a run beyond Celery's, kept in TaskResult.meta.

Every message sent by a Beatkeeper process carries a `beatkeeper` header with its
trigger and queued-at time (beat adds the schedule and scheduled-for time). On the
worker, `task_prerun` copies it into `request.meta` before Celery writes the STARTED
row, so the context is stored with every state write at no extra cost. A retry or a
redelivery of the same run reads the run's row once and carries the earlier attempts on.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from celery import states as celery_states
from celery.signals import before_task_publish, task_prerun, task_revoked
from django.utils import timezone
from django_celery_results.models import TaskResult

from scheduler_app.runs import states

HEADER = "beatkeeper"
TRIGGERS = ("beat", "manual", "api", "retry", "direct")  # "by": who asked, for all but beat and direct
RUNNING = {celery_states.STARTED, states.PROGRESS}


@before_task_publish.connect
def stamp_queued_at(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    if headers is None:
        return
    context = headers.setdefault(HEADER, {})
    if isinstance(context, dict):
        context.setdefault("queued_at", timezone.now().isoformat())
        context.setdefault("trigger", "beat" if headers.get("periodic_task_name") else "direct")


@task_prerun.connect
def attach_run_context(task_id: str = "", task: Any = None, **kwargs: Any) -> None:
    request = task.request
    header = header_of(request)
    attempts = earlier_attempts(task_id) if request.retries or _redelivered(request) else []
    # A run queued from the console was recorded PENDING; if it was revoked while no
    # worker was up to hear it, PlatformTask ends it before it starts (runtime.py).
    revocation = revocation_of(task_id) if header.get("recorded") else None
    request.revoked_while_queued = revocation is not None
    request.meta = {
        **context_of(header, request),
        "attempt": len(attempts) + 1,
        "attempts": attempts,
        **(revocation or {}),
    }


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
        **{key: header[key] for key in ("by", "retry_of") if header.get(key)},
    }


@task_revoked.connect
def record_revocation(sender: Any = None, request: Any = None, expired: bool = False, terminated: bool = False,
                      **kwargs: Any) -> None:  # fmt: skip
    """Celery records a revoked or expired run as REVOKED with no context; the platform
    says what happened and keeps the run's trigger, schedule and who asked."""
    if sender is None or request is None:
        return
    request.meta = context_of(header_of(request), request)
    if expired:
        result: dict[str, Any] = {"reason": "not started before it expired", "expires": str(request.expires)}
        sender.backend.store_result(request.id, result, states.EXPIRED, request=request)
    else:
        result = {"reason": "revoked", "terminated": bool(terminated)}
        sender.backend.store_result(request.id, result, celery_states.REVOKED, request=request)


def revocation_of(task_id: str) -> dict[str, Any] | None:
    """Who revoked the run and when, if its row says it was revoked before it started."""
    row = TaskResult.objects.filter(task_id=task_id, status=celery_states.REVOKED).only("meta").first()
    if row is None:
        return None
    meta = run_context(row)
    return {key: meta[key] for key in ("revoked_by", "revoked_at") if key in meta}


def _redelivered(request: Any) -> bool:
    return bool((request.delivery_info or {}).get("redelivered"))


def earlier_attempts(task_id: str) -> list[dict[str, Any]]:
    row = TaskResult.objects.filter(task_id=task_id).first()
    if row is None:
        return []
    meta = run_context(row)
    earlier = list(meta.get("attempts", []))
    started: dt.datetime | None = row.date_started
    earlier.append(
        {
            "attempt": meta.get("attempt", len(earlier) + 1),
            "state": "INTERRUPTED" if row.status in RUNNING else row.status,
            "started": started.isoformat() if started else None,
            "ended": row.date_done.isoformat() if row.date_done else None,
            "worker": row.worker,
            "error": _error_of(row),
        }
    )
    return earlier


def _error_of(row: TaskResult) -> str | None:
    """`Type: message` of the exception a run stopped on, if it stopped on one."""
    try:
        stored = json.loads(row.result or "null")
    except ValueError:
        stored = None
    if isinstance(stored, dict) and "exc_type" in stored:
        message = stored.get("exc_message") or []
        text = " ".join(map(str, message)) if isinstance(message, list | tuple) else str(message)
        return f"{stored['exc_type']}: {text}"
    lines = [line for line in (row.traceback or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def run_context(row: TaskResult) -> dict[str, Any]:
    """The platform's facts of a recorded run (for the admin, the API and tests); empty for
    a row whose meta is not a JSON object (written by something else)."""
    try:
        meta = json.loads(row.meta or "{}") if isinstance(row.meta, str) else (row.meta or {})
    except ValueError:
        return {}
    if not isinstance(meta, dict):
        return {}
    return {key: value for key, value in meta.items() if key != "children"}
