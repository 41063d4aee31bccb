"""What the schedules and runs pages show from issue 15's reads: a schedule's timeline of
its last slots (monitoring/timeline.py), a run's state history (runs/state_history.py) and
the flag on runs running longer than usual (insights.running_long). Small escaped pieces
of HTML from template includes, for the schedule and run admins to show."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app import insights
from scheduler_app.admin import display
from scheduler_app.monitoring import timeline
from scheduler_app.runs import state_history
from scheduler_app.runs.history import run_context

LEGEND = [(state, timeline.WORDS[state]) for state in ("ran", "failed", "late", "skipped", "missed", "due",
                                                        "running", "revoked")]  # fmt: skip


# --- A schedule's timeline ----------------------------------------------------------------


def attach_timelines(tasks: Any, now: dt.datetime | None = None) -> None:
    """The page's timelines in one query, kept on each schedule for its column."""
    tasks = list(tasks)
    found = timeline.timelines(tasks, now or timezone.now())
    for task in tasks:
        task.timeline_cells = found.get(task.pk, [])


def schedule_timeline(task: PeriodicTask, *, legend: bool = False) -> SafeString:
    cells = getattr(task, "timeline_cells", None)
    if cells is None:
        cells = timeline.timelines([task], timezone.now()).get(task.pk, [])
    urls = [reverse("admin:scheduler_app_run_change", args=[cell.run.pk]) if cell.run else "" for cell in cells]
    context = {"cells": list(zip(cells, urls, strict=True)), "legend": LEGEND if legend else None,
               "count": len(cells)}  # fmt: skip
    return SafeString(render_to_string("beatkeeper/timeline.html", context))


# --- A run's state history and the long-running flag -----------------------------------


def history_rows(run: TaskResult) -> list[dict[str, Any]]:
    """Queued (the context's `queued_at`), then each recorded state, with the time since queued."""
    queued = parse(run_context(run).get("queued_at"))
    entries: list[tuple[str, dt.datetime | None]] = [("QUEUED", queued)] if queued else []
    entries += [(status, parse(at)) for status, at in state_history.stored(run.meta)]
    origin = queued or next((at for _, at in entries if at), None)
    return [{"state": status, "at": at, "after": display.seconds((at - origin).total_seconds()) if origin else "–"}
            for status, at in entries if at is not None]  # fmt: skip


def parse(value: Any) -> dt.datetime | None:
    try:
        moment = dt.datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None


def state_history_html(run: TaskResult) -> SafeString:
    reason = getattr(run, "running_long", None)
    if reason is None:
        reason = insights.running_long([run], timezone.now()).get(run.task_id, "")
    return SafeString(render_to_string("beatkeeper/state_history.html", {"rows": history_rows(run), "long": reason}))


def flag_long_running(runs: Any) -> None:
    """Which of a page's runs run longer than usual, kept on each run for its state column."""
    runs = list(runs)
    flagged = insights.running_long(runs, timezone.now())
    for run in runs:
        run.running_long = flagged.get(run.task_id, "")


def long_marker(run: TaskResult) -> SafeString:
    reason = getattr(run, "running_long", "")
    if not reason:
        return SafeString("")
    return format_html(' <span class="bk-long" title="{}" aria-label="{}">long</span>', reason, reason)
