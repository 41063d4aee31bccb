"""The dashboard: the console's front page of figures, refreshed in place every few
seconds (the page fetches its panel again; nothing else reloads). A viewer sees the
schedule figures with the permission to view schedules, the run figures with the
permission to view runs. The figures are shared between viewers for a few seconds, and
those over all kept runs for a minute: they read the whole run table. The run ledger's
backlog (what the recorder has yet to write) is shown to every viewer, like the workers.
When Redis does not answer, the page says so at the top and shows what the database has."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import admin
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from scheduler_app import schedules, selectors
from scheduler_app.admin import charts, display

REFRESH_SECONDS = 10
SHARED_SECONDS = 5
SLOW_FIGURES_SECONDS = 60
SLOW_KEY = "beatkeeper:dashboard:all-runs"


def permissions(request: HttpRequest) -> tuple[bool, bool]:
    user = request.user
    return user.has_perm("django_celery_beat.view_periodictask"), user.has_perm("scheduler_app.view_run")


def figures(schedules_too: bool, runs_too: bool) -> dict[str, Any]:
    key = f"beatkeeper:dashboard:{int(schedules_too)}{int(runs_too)}"
    data = cache.get(key)
    if data is None:
        slow = cache.get(SLOW_KEY)
        now = timezone.now()
        data = selectors.dashboard(now, schedules_too=schedules_too, runs_too=runs_too, slow=slow)
        if schedules_too:
            data["upcoming"] = upcoming_rows(now)
        if runs_too:
            if slow is None:  # kept for a minute from when it was computed, not from each view
                cache.set(SLOW_KEY, {"all": data["all"]}, SLOW_FIGURES_SECONDS)
            data["hour_chart"] = charts.runs_per_hour(data["per_hour"])
            data["task_chart"] = charts.median_per_task(data["per_task"])
        cache.set(key, data, SHARED_SECONDS)
    return {**data, "show_schedules": schedules_too, "show_runs": runs_too}


def upcoming_rows(now: dt.datetime) -> list[dict[str, Any]]:
    """The next 24 hours' runs, from the schedules themselves (not the last minute's check,
    which left a schedule's run out until it had been checked, and dropped one already due):
    each with its time in its zone, the zone named, and the schedule in words."""
    return [{"pk": task.pk, "name": task.name, "words": schedules.shown_description(task),
             "at": f"{run.local():%Y-%m-%d %H:%M:%S %Z}", "utc": f"{run.at:%H:%M:%S} UTC",
             "in": display.ago(run.at)}
            for task, run in schedules.upcoming(now)]  # fmt: skip


def dashboard_view(request: HttpRequest) -> HttpResponse:
    allowed = permissions(request)
    if not any(allowed):
        raise PermissionDenied
    context = {**admin.site.each_context(request), "title": "Dashboard", "refresh": REFRESH_SECONDS,
               **figures(*allowed)}  # fmt: skip
    return TemplateResponse(request, "beatkeeper/dashboard.html", context)


def panel_view(request: HttpRequest) -> HttpResponse:
    allowed = permissions(request)
    if not any(allowed):
        raise PermissionDenied
    return TemplateResponse(request, "beatkeeper/dashboard_panel.html", figures(*allowed))
