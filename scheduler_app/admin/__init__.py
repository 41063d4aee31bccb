"""The operations console: schedules, runs and the dashboard in the Django admin.

django-celery-beat's schedule admin and django-celery-results' result admin are replaced
by ours; their shared-schedule admins (crontabs, intervals, ...) stay as they are."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import GroupResult, TaskResult
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import TokenProxy

from scheduler_app.admin import (
    audit,  # noqa: F401  (registers the audit log)
    calendars,  # noqa: F401  (registers the business calendars)
    pools,  # noqa: F401  (registers the concurrency pools)
)
from scheduler_app.admin.runs import RunAdmin
from scheduler_app.admin.schedules import ScheduleAdmin
from scheduler_app.models import Run

for model in (PeriodicTask, TaskResult, GroupResult):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
admin.site.register(PeriodicTask, ScheduleAdmin)
admin.site.register(Run, RunAdmin)
admin.site.index_template = "beatkeeper/index.html"
# Issue 15: the sidebar of every model takes 276 px of a laptop's width, and at 1024 px leaves
# a list beside its filters no room; the breadcrumbs and the index lead to the same pages.
admin.site.enable_nav_sidebar = False


class SuperuserTokenAdmin(TokenAdmin):
    """API tokens are kept as they are (DRF's authtoken): whoever reads one acts as its user,
    so only superusers see or make them here (`manage.py api_token` does the same)."""

    def has_module_permission(self, request: Any) -> bool:
        return bool(request.user.is_superuser)

    def has_view_permission(self, request: Any, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)

    def has_add_permission(self, request: Any) -> bool:
        return bool(request.user.is_superuser)

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)


if admin.site.is_registered(TokenProxy):
    admin.site.unregister(TokenProxy)
admin.site.register(TokenProxy, SuperuserTokenAdmin)
