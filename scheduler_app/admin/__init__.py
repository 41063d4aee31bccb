"""The operations console: schedules, runs and the dashboard in the Django admin.

django-celery-beat's schedule admin and django-celery-results' result admin are replaced
by ours; their shared-schedule admins (crontabs, intervals, ...) stay as they are."""

from __future__ import annotations

from django.contrib import admin
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import GroupResult, TaskResult

from scheduler_app.admin import audit  # noqa: F401  (registers the audit log)
from scheduler_app.admin.runs import RunAdmin
from scheduler_app.admin.schedules import ScheduleAdmin
from scheduler_app.models import Run

for model in (PeriodicTask, TaskResult, GroupResult):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
admin.site.register(PeriodicTask, ScheduleAdmin)
admin.site.register(Run, RunAdmin)
admin.site.index_template = "beatkeeper/index.html"
