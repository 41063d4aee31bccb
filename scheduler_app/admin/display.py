"""How the console shows times, states and durations: small, escaped HTML pieces."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timesince
from django_celery_results.models import TaskResult

from scheduler_app.runs.history import RUNNING, run_context
from scheduler_app.runs.states import TERMINAL_STATES

STATE_CLASSES = {
    "SUCCESS": "ok",
    "FAILURE": "bad",
    "EXPIRED": "bad",
    "REVOKED": "warn",
    "RETRY": "warn",
    "SKIPPED": "muted",
    "WAITING": "info",
    "PENDING": "info",
    "RECEIVED": "info",
    "STARTED": "run",
    "PROGRESS": "run",
}


def state_badge(state: str) -> SafeString:
    return format_html('<span class="bk-badge bk-{}">{}</span>', STATE_CLASSES.get(state, "muted"), state)


def local_and_utc(local: dt.datetime | None, utc: dt.datetime | None) -> SafeString:
    """A slot in its schedule's zone (named), the UTC time under it, the whole in the title."""
    if local is None or utc is None:
        return format_html("{}", "–")
    full = f"{local:%Y-%m-%d %H:%M:%S %Z} ({utc:%H:%M:%S} UTC)"
    if local.tzname() == "UTC":  # the zone is UTC: the time once, not "08:20 UTC" twice
        return format_html(
            '<span title="{}">{}<small>{}</small></span>',
            f"{utc:%Y-%m-%d %H:%M:%S} UTC",
            f"{local:%H:%M UTC}",
            f"{local:%Y-%m-%d}",
        )
    return format_html(
        '<span title="{}">{}<small>{} · {} UTC</small></span>',
        full,
        f"{local:%H:%M %Z}",
        f"{local:%Y-%m-%d}",
        f"{utc:%H:%M}",
    )


def moment(value: dt.datetime | None) -> str:
    """A time on the console's pages: to the second, in the server's zone, the zone named."""
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z") if value else "–"


def short_moment(value: dt.datetime | None) -> SafeString:
    """A time in a list's cell: date and time to the second on two short lines, the zone named."""
    if value is None:
        return format_html("{}", "–")
    local = timezone.localtime(value)
    return format_html(
        '<span title="{}">{}<small>{}</small></span>', moment(value), f"{local:%H:%M:%S %Z}", f"{local:%Y-%m-%d}"
    )


def ago(moment: dt.datetime | None) -> SafeString:
    if moment is None:
        return format_html("{}", "–")
    when = "in " + timesince(timezone.now(), moment) if moment > timezone.now() else timesince(moment) + " ago"
    return format_html('<span title="{}">{}</span>', moment.isoformat(), when)


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def took(run: TaskResult, now: dt.datetime | None = None) -> str:
    """How long a finished run took; "running for 12 s" for one still running; "–" otherwise."""
    if run.status in RUNNING and run.date_started:
        return f"running for {seconds(((now or timezone.now()) - run.date_started).total_seconds())}"
    if run.status not in TERMINAL_STATES:
        return "–"
    return seconds((run.date_done - run.date_started).total_seconds() if run.date_started and run.date_done else None)


def completed(run: TaskResult) -> str:
    """When a run finished; "–" while it has not (the row's date_done moves with every write)."""
    return moment(run.date_done) if run.status in TERMINAL_STATES else "–"


def run_title(run: TaskResult) -> str:
    """`Run <task> <short id> — <STATE>`: the run's page title and breadcrumb."""
    return f"Run {run.task_name or 'unknown task'} {run.task_id[:8]} — {run.status}"


def run_url(run: TaskResult) -> str:
    return reverse("admin:scheduler_app_run_change", args=[run.pk])


def trigger_of(run: TaskResult) -> str:
    context = run_context(run)
    trigger = context.get("trigger", "")
    return f"{trigger} ({context['by']})" if context.get("by") else trigger


def query(**params: str) -> str:
    return urlencode(params)


def incident_badge(kind: str) -> SafeString:
    classes = {"late": "warn", "failing": "bad", "recovered": "ok"}
    return format_html('<span class="bk-badge bk-{}">{}</span>', classes.get(kind, "muted"), kind)
