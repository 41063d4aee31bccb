"""/api/: an index, schedules, runs, tasks, dead letters, statistics; the OpenAPI schema at /api/schema/ and its
browsable documentation at /api/docs/ (Swagger UI) and /api/redoc/ (Redoc)."""

from __future__ import annotations

from django.urls import include, path, re_path
from drf_spectacular.renderers import OpenApiJsonRenderer
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.permissions import IsAdminUser
from rest_framework.routers import DefaultRouter

from scheduler_app.api.backfills import BackfillViewSet, ScheduleBackfill
from scheduler_app.api.calendars import CalendarViewSet
from scheduler_app.api.deadletters import DeadLetterViewSet
from scheduler_app.api.index import ApiIndex, docs_view
from scheduler_app.api.pools import PoolViewSet
from scheduler_app.api.stats import Stats
from scheduler_app.api.views import RunViewSet, ScheduleViewSet, TaskList, not_found

router = DefaultRouter()
router.include_root_view = False
router.register("schedules", ScheduleViewSet, basename="schedule")
router.register("runs", RunViewSet, basename="run")
router.register("dead-letters", DeadLetterViewSet, basename="dead-letter")
router.register("backfills", BackfillViewSet, basename="backfill")
router.register("calendars", CalendarViewSet, basename="calendar")
router.register("pools", PoolViewSet, basename="pool")

urlpatterns = [
    path("", ApiIndex.as_view(), name="api-index"),
    path("tasks/", TaskList.as_view(), name="api-tasks"),
    path("stats/", Stats.as_view(), name="api-stats"),
    path("schedules/<int:pk>/backfill/", ScheduleBackfill.as_view(), name="api-schedule-backfill"),
    path("docs/", docs_view(SpectacularSwaggerView), name="api-docs"),
    path("redoc/", docs_view(SpectacularRedocView), name="api-redoc"),
    path(
        "schema/",
        SpectacularAPIView.as_view(permission_classes=[IsAdminUser], renderer_classes=[OpenApiJsonRenderer]),
        name="api-schema",
    ),
    path("", include(router.urls)),
    re_path(r"", not_found),  # what no route matches under /api/ answers in JSON too
]
