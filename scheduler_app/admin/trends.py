"""The console's trends page: per task, throughput (runs per hour), error rate and p50/p95
duration over the last 24 hours or 7 days, as charts (Chart.js, vendored under
static/beatkeeper/vendor/) and a table. The figures are computed by `insights.trends`,
shared between viewers for a minute per window (they read a whole window of runs, for all
tasks at once: a task's series is taken from them, so choosing a task costs no query, and only
a task of those figures can be chosen), and handed to the page's script as JSON through
`json_script` (escaped). Seen with the permission to view runs."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from scheduler_app import insights

VIEW = "scheduler_app.view_run"
SHARED_SECONDS = 60


def figures(window: str) -> insights.Trends:
    """All tasks' figures over the window (`window` is one of insights.WINDOWS)."""
    key = f"beatkeeper:trends:{window}"
    found: insights.Trends | None = cache.get(key)
    if found is None:
        found = insights.trends(timezone.now(), window)
        cache.set(key, found, SHARED_SECONDS)
    return found


def rows(found: insights.Trends) -> list[dict[str, Any]]:
    runs = reverse("admin:scheduler_app_run_changelist")
    return [
        {"task": name, "figures": f, "per_hour": found.per_hour(f),
         "error_rate": None if f.error_rate is None else 100 * f.error_rate,
         "chart_url": "?" + urlencode({"window": found.window, "task": name}),
         "runs_url": runs + "?" + urlencode({"task": name, "since": found.window})}
        for name, f in sorted(found.per_task.items(), key=lambda item: (-item[1].runs, item[0]))
    ]  # fmt: skip


def trends_view(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm(VIEW):
        raise PermissionDenied
    window = request.GET.get("window", "24h")
    window = window if window in insights.WINDOWS else "24h"
    everything = figures(window)
    asked = request.GET.get("task") or None
    task = asked if asked in everything.per_task else None
    found = everything.of(task)
    context = {**admin.site.each_context(request), "title": "Trends", "trends": found, "rows": rows(found),
               "window": window, "windows": list(insights.WINDOWS), "task": task,
               "unknown": asked if asked is not None and task is None else None,
               "tasks": sorted(found.per_task), "chart_data": found.chart_data()}  # fmt: skip
    return TemplateResponse(request, "beatkeeper/trends.html", context)


def urls() -> list[Any]:
    return [path("", admin.site.admin_view(trends_view), name="beatkeeper-trends")]
