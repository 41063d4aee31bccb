"""Run history: the facts of a run beyond Celery's, kept in TaskResult.meta.

Every message sent by a Beatkeeper process carries a `beatkeeper` header with its
trigger and queued-at time (beat adds the schedule and scheduled-for time). On the
worker, `task_prerun` copies it into `request.meta` before Celery writes the STARTED
row, so the context is stored with every state write at no extra cost. A retry or a
redelivery of the same run reads the run's row once and carries the earlier attempts on.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import logging
from typing import Any

from celery import states as celery_states
from celery.signals import before_task_publish, task_prerun, task_received, task_revoked
from django.db import DatabaseError
from django.utils import timezone
from django_celery_results.models import TaskResult

from scheduler_app.runs import ledger, pools, state_history, states
from scheduler_app.runs.context import HEADER as HEADER
from scheduler_app.runs.context import context_of, header_of
from scheduler_app.runs.policy import RunPolicy

TRIGGERS = ("beat", "manual", "api", "retry", "backfill", "direct")  # "by": who asked, for all but beat and direct
RUNNING = {celery_states.STARTED, states.PROGRESS}
FINISHED = {celery_states.SUCCESS, celery_states.FAILURE, celery_states.REVOKED, states.SKIPPED, states.EXPIRED}
RECEIVED_AT = "bk_received_at"  # the request's field with the moment the worker received the message
logger = logging.getLogger(__name__)


@before_task_publish.connect
def stamp_queued_at(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    if headers is None:
        return
    context = headers.setdefault(HEADER, {})
    if isinstance(context, dict):
        context.setdefault("queued_at", timezone.now().isoformat())
        context.setdefault("trigger", "beat" if headers.get("periodic_task_name") else "direct")


@task_received.connect
def stamp_received(request: Any = None, **kwargs: Any) -> None:
    """When the worker took the message (its main process; an ETA run's too, before it
    waits): carried in the request to the process that runs it, so its RECEIVED state is
    recorded with the run's first write, at no extra write."""
    if request is not None:
        request.request_dict[RECEIVED_AT] = timezone.now().isoformat()


def received_state(request: Any) -> dict[str, Any]:
    at = getattr(request, RECEIVED_AT, None)
    return {state_history.KEY: [[state_history.RECEIVED, at]]} if isinstance(at, str) else {}


@task_prerun.connect
def attach_run_context(task_id: str = "", task: Any = None, **kwargs: Any) -> None:
    request = task.request
    header = header_of(request)
    again = bool(request.retries) or _redelivered(request)
    # One read of the run's latest state (Redis first, the row if Redis no longer has it),
    # only for a run that may have one: a retry, a redelivery, a run queued by the console.
    before = recorded_run(task_id) if again or header.get("recorded") else None
    attempts = earlier_attempts(before) if again and before is not None else []
    # A redelivered message of a run that already finished (its acknowledgement was lost
    # with the connection) is not run again: PlatformTask acknowledges it (runtime.py).
    request.finished_before = bool(before is not None and _redelivered(request) and before.status in FINISHED)
    # A run queued from the console was recorded PENDING; if it was revoked while no
    # worker was up to hear it, PlatformTask ends it before it starts (runtime.py).
    revocation = revocation_of(before) if before is not None and header.get("recorded") else None
    request.revoked_while_queued = revocation is not None
    if request.finished_before and before is not None:
        # The run's own context and attempt: the STARTED Celery writes before PlatformTask
        # acknowledges the message then ranks below the end already recorded, and is dropped.
        request.meta = run_context(before)
        return
    request.meta = {
        **context_of(header, request),
        # A retry is attempt retries + 1 at least, even when its earlier attempts cannot be
        # read (Redis no longer has them and the database is away).
        "attempt": max(len(attempts) + 1, int(request.retries or 0) + 1),
        "attempts": attempts,
        **(revocation or {}),
        **received_state(request),
    }


@task_revoked.connect
def record_revocation(sender: Any = None, request: Any = None, expired: bool = False, terminated: bool = False,
                      **kwargs: Any) -> None:  # fmt: skip
    """Celery records a revoked or expired run as REVOKED with no context; the platform
    says what happened and keeps the run's trigger, schedule and who asked."""
    if sender is None or request is None:
        return
    leave_pool_line(sender, request)
    # Written by the worker's main process, after Celery's own REVOKED, which it refines.
    found = ledger.latest(request.id)
    request.meta = (found.context() if found is not None else None) or context_of(header_of(request), request)
    request.bk_refines = True
    if expired:
        result: dict[str, Any] = {"reason": "not started before it expired", "expires": str(request.expires)}
        sender.backend.store_result(request.id, result, states.EXPIRED, request=request)
    else:
        result = {"reason": "revoked", "terminated": bool(terminated)}
        sender.backend.store_result(request.id, result, celery_states.REVOKED, request=request)


def leave_pool_line(task: Any, request: Any) -> None:
    """A run revoked or expired while it waited for its pool's slot asks no more: out of the line."""
    policy = getattr(task, "policy", None)
    if not isinstance(policy, RunPolicy):
        return
    try:
        pool = policy.with_overrides(header_of(request).get("policy")).pool
    except ValueError:  # a bad override: the run ran under its task's own policy
        pool = policy.pool
    pools.leave_line(pool, request.id)


def recorded_run(task_id: str) -> TaskResult | None:
    """The run's latest state: from Redis while it is recent or not yet written, else its
    row; None if neither has it or the database is away (a run must not wait for it)."""
    found = ledger.latest(task_id)
    if found is not None:
        return found.as_row()
    try:
        return TaskResult.objects.filter(task_id=task_id).first()
    except DatabaseError:
        logger.warning("run %s: the database is unreachable; its earlier attempts are not carried on", task_id)
        return None


def revocation_of(row: TaskResult) -> dict[str, Any] | None:
    """Who revoked the run and when, if it was revoked before it started."""
    if row.status != celery_states.REVOKED:
        return None
    meta = run_context(row)
    return {key: meta[key] for key in ("revoked_by", "revoked_at") if key in meta}


def _redelivered(request: Any) -> bool:
    return bool((request.delivery_info or {}).get("redelivered"))


def earlier_attempts(row: TaskResult) -> list[dict[str, Any]]:
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


REPR_LIMIT = 1024  # characters of a run's arguments Celery records (argsrepr / kwargsrepr, cut past it)


def recorded_arguments(stored: str | None) -> tuple[Any, bool]:
    """A run's recorded args or kwargs as data, and whether they were cut. django-celery-results
    keeps them as a JSON string holding their Python repr, which Celery cuts at REPR_LIMIT
    characters: a repr that parses and is not that long is the data; one that does not
    parse, or may have been cut (a cut string still parses), is answered as its text, with True."""
    if not stored:
        return None, False
    try:
        text = json.loads(stored)
    except (ValueError, RecursionError):
        return stored, True
    if not isinstance(text, str):
        return text, False  # stored as data (written by something else)
    if len(text) >= REPR_LIMIT - 8:
        return text, True
    try:
        value = ast.literal_eval(text)
        value = list(value) if isinstance(value, tuple) else value  # a worker may record args as a tuple
        json.dumps(value)  # a shortened repr ends in "..." (Ellipsis): not data
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text, True
    return value, False


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
