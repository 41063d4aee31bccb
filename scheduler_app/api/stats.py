"""/api/stats/: the run figures the dashboard shows, platform-wide and per task, over a window
(1h, 24h, 7d), the queues and workers, and a page of schedules as the schedule list shows them.

Every figure comes from the selectors the console reads (`selectors.run_figures_by_task`,
`broker_figures`, `schedule_figures`), so the API and the dashboard never disagree. The
queues and workers are read through Redis with the request's bound (REDIS_REQUEST_TIMEOUT)
and shared for a few seconds, as the dashboard shares them (the workers' inspect waits its
whole timeout), and the run figures too, for 5 s (a minute for 7 days, as the trends page:
that window reads a quarter of a million rows at a million runs). When Redis does not answer,
the queues and workers are null and `broker_error` says why."""

from __future__ import annotations

from typing import Any

from django.core.cache import cache
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from scheduler_app import selectors
from scheduler_app.api import params
from scheduler_app.api import serializers as api
from scheduler_app.api.permissions import StaffWithModelPermission

WINDOWS = ("1h", "24h", "7d")
DEFAULT_WINDOW = "24h"
PAGE_SIZE, MAX_PAGE_SIZE = 50, 500
PARAMETERS = ("window", "page", "page_size")
BROKER_KEY = "beatkeeper:api:stats:broker"
BROKER_SECONDS = 5  # as the dashboard shares its figures (admin/dashboard.py SHARED_SECONDS)
# The run figures of a window are shared as long: 5 s as the dashboard's, a minute for 7 days
# (as the trends page's): its figures read a quarter of a million rows at a million kept runs.
FIGURES_SECONDS = {"1h": 5, "24h": 5, "7d": 60}
SCHEDULE_PERM = "django_celery_beat.view_periodictask"


def refuse_unknown_parameters(request: Request) -> None:
    """A query parameter this endpoint does not take is a 400 naming the ones it takes: a
    typo (`windw=7d`) must not answer the default window's figures in silence."""
    unknown = sorted(name for name in request.query_params if name not in PARAMETERS)
    if unknown:
        hint = f"unknown parameter; the parameters taken here are {', '.join(PARAMETERS)}."
        raise ValidationError({name: [hint] for name in unknown})


def broker_figures() -> dict[str, Any]:
    found = cache.get(BROKER_KEY)
    if found is None:
        found = selectors.broker_figures()
        cache.set(BROKER_KEY, found, BROKER_SECONDS)
    return dict(found)


def run_figures(window: str) -> dict[str, Any]:
    """The window's figures (`selectors.run_figures_by_task`), all and per task, with the
    moment they were computed at (`now`) and the window's start (`since`)."""
    key = f"beatkeeper:api:stats:runs:{window}"
    found = cache.get(key)
    if found is None:
        now = timezone.now()
        since = now - selectors.SINCE[window]
        platform, per_task = selectors.run_figures_by_task(since, now)
        tasks = [{"task": name, **figures} for name, figures in per_task.items()]
        tasks.sort(key=lambda figures: (-figures["runs"], figures["task"]))
        found = {"now": now, "since": since, "runs": platform, "tasks": tasks}
        cache.set(key, found, FIGURES_SECONDS[window])
    return dict(found)


def schedule_page(request: Request, page: int, size: int, now: Any) -> dict[str, Any]:
    tasks = PeriodicTask.objects.select_related("interval", "crontab", "solar", "clocked", "policy")
    tasks = tasks.order_by("name", "pk")  # the console's order
    count = tasks.count()  # counting schedules is cheap (the runs are never counted)
    shown = list(tasks[(page - 1) * size : page * size])
    url = request.build_absolute_uri()
    return {
        "count": count,
        "page": page,
        "page_size": size,
        "next": replace_query_param(url, "page", page + 1) if page * size < count else None,
        "previous": replace_query_param(url, "page", page - 1) if page > 1 else None,
        "results": selectors.schedule_figures(shown, now),
    }


class Stats(APIView):
    """Run statistics over a window, platform-wide and per task; queues and workers; schedules.
    The run figures are shared for FIGURES_SECONDS (`now`: when they were computed)."""

    permission_classes = [StaffWithModelPermission]
    action_perms = {"list": "scheduler_app.view_run"}  # as the runs and the dashboard's run figures

    @extend_schema(
        parameters=[
            OpenApiParameter("window", str, enum=list(WINDOWS), description=f"Default {DEFAULT_WINDOW}."),
            OpenApiParameter("page", int, description="The page of schedules, from 1 (default 1)."),
            OpenApiParameter(
                "page_size", int, description=f"Schedules per page, 1 to {MAX_PAGE_SIZE} (default {PAGE_SIZE})."
            ),
        ],
        responses=api.StatsSerializer,
        description=(
            "The dashboard's run figures over the window (runs created since its start), for all "
            "tasks and per task, computed at `now` (shared for 5 s; 60 s for 7d); queue depths and the "
            "workers online (null, with broker_error, when "
            "Redis does not answer within REDIS_REQUEST_TIMEOUT; shared for 5 s); a page of schedules "
            "with their last and next run, success rate and median duration of their last 20 runs "
            "(with the permission to view schedules). Unknown parameters are refused (400)."
        ),
    )
    def get(self, request: Request) -> Response:
        refuse_unknown_parameters(request)
        window = params.choice(request, "window", WINDOWS) or DEFAULT_WINDOW
        page = params.whole_number(request, "page", 1, 1, 10**9)  # checked whether the page is shown or not
        size = params.whole_number(request, "page_size", PAGE_SIZE, 1, MAX_PAGE_SIZE)
        shown = request.user.has_perm(SCHEDULE_PERM)
        schedules = schedule_page(request, page, size, timezone.now()) if shown else None
        broker = broker_figures()
        workers = broker["workers"]
        data = {
            "window": window, **run_figures(window),
            "queues": broker["queues"], "workers_online": None if workers is None else len(workers),
            "workers": workers, "broker_error": broker["error"], "schedules": schedules,
        }  # fmt: skip
        return Response(api.StatsSerializer(data).data)
