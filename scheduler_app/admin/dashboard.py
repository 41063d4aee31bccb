"""The dashboard: the console's front page of figures, refreshed in place every few
seconds (the page fetches its panel again; nothing else reloads). The figures over all
kept runs are cached for a minute: they read the whole run table."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from scheduler_app import selectors
from scheduler_app.admin import charts

REFRESH_SECONDS = 10
SLOW_FIGURES_SECONDS = 60


def can_see(request: HttpRequest) -> bool:
    user = request.user
    return user.has_perm("django_celery_beat.view_periodictask") or user.has_perm("scheduler_app.view_run")


def figures() -> dict[str, Any]:
    now = timezone.now()
    data = selectors.dashboard(now, slow=cache.get("beatkeeper:dashboard:slow"))
    cache.set("beatkeeper:dashboard:slow", {"all": data["all"], "upcoming": data["upcoming"]}, SLOW_FIGURES_SECONDS)
    data["hour_chart"] = charts.runs_per_hour(data["per_hour"])
    data["task_chart"] = charts.median_per_task(data["per_task"])
    return data


def dashboard_view(request: HttpRequest) -> HttpResponse:
    if not can_see(request):
        raise PermissionDenied
    context = {**admin.site.each_context(request), "title": "Dashboard", "refresh": REFRESH_SECONDS, **figures()}
    return TemplateResponse(request, "beatkeeper/dashboard.html", context)


def panel_view(request: HttpRequest) -> HttpResponse:
    if not can_see(request):
        raise PermissionDenied
    return TemplateResponse(request, "beatkeeper/dashboard_panel.html", figures())
