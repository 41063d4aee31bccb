"""/api/ itself: an index of the endpoints, and the browsable documentation (Swagger UI at
/api/docs/, Redoc at /api/redoc/) for staff, its scripts served from this server
(drf-spectacular-sidecar), so it works offline and behind a strict proxy."""

from __future__ import annotations

from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from drf_spectacular.utils import extend_schema, inline_serializer
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

ENDPOINTS = {
    "schedules": ("schedule-list", "Schedules: list, create; /<id>/ read, change, delete, pause, resume, run."),
    "runs": ("run-list", "Runs, newest first; /<id or run id>/ read, retry, revoke."),
    "tasks": ("api-tasks", "The registered tasks, with their parameters' defaults and policy."),
    "dead_letters": ("dead-letter-list", "Messages a worker set aside instead of running them."),
    "calendars": (
        "calendar-list",
        "Business calendars: list, create; /<id>/ read, change (dates replaced when sent), delete.",
    ),
    "pools": (
        "pool-list",
        "Concurrency pools: list, create; /<name>/ read with its slots now (holders, waiting), change, delete.",
    ),
    "backfills": (
        "backfill-list",
        "Backfills, newest first; /<id>/ read with its slots, cancel. Start one with "
        "POST /api/schedules/<id>/backfill/.",
    ),
    "stats": ("api-stats", "Run figures over ?window=1h|24h|7d, all and per task; queues, workers; schedules."),
    "schema": ("api-schema", "The OpenAPI schema (JSON)."),
    "docs": ("api-docs", "The API's documentation, Swagger UI (staff, in a browser)."),
    "redoc": ("api-redoc", "The API's documentation, Redoc (staff, in a browser)."),
}


class ApiIndex(APIView):
    """What /api/ offers: each endpoint's URL and what it is for."""

    permission_classes = [IsAdminUser]

    @extend_schema(responses=inline_serializer("Index", {"schedules": serializers.DictField()}))
    def get(self, request: Request) -> Response:
        return Response(
            {key: {"url": reverse(name, request=request), "about": about} for key, (name, about) in ENDPOINTS.items()}
        )


# Redoc's page without its Google Fonts links.
TEMPLATES: dict[type[APIView], str] = {SpectacularRedocView: "beatkeeper/api_redoc.html"}


def docs_view(view: type[SpectacularSwaggerView | SpectacularRedocView]) -> Any:
    """A documentation page for staff: others are sent to the admin's login, as the console's pages do."""
    template = TEMPLATES.get(view, view.template_name)
    return staff_member_required(
        view.as_view(url_name="api-schema", permission_classes=[IsAdminUser], template_name=template)
    )
