"""Pages with live regions ({% live_region %}, scheduler_app/templatetags/beatkeeper_live.py):
the whole page for a visit, only the region for htmx's refresh of it."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse


def render(request: HttpRequest, page: str, region: str, title: str, context: dict[str, Any]) -> TemplateResponse:
    """`page` (which includes `region`) with the admin's context, or `region` alone when htmx asks."""
    if getattr(request, "htmx", False):
        return TemplateResponse(request, region, {"request": request, **context})
    return TemplateResponse(request, page, {**admin.site.each_context(request), "title": title, **context})
