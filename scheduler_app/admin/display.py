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

from scheduler_app.runs.history import run_context

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
    if local is None or utc is None:
        return format_html("{}", "–")
    return format_html(
        '{}<br><small class="bk-muted">{} UTC</small>', local.strftime("%Y-%m-%d %H:%M %Z"), f"{utc:%H:%M}"
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
