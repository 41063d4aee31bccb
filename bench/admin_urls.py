"""URLs for bench/runs_admin.py: the project's own, plus the stock django-celery-results
TaskResultAdmin on an admin site of its own at /stock-admin/ (the baseline)."""

from __future__ import annotations

from django.contrib.admin import AdminSite
from django.urls import path
from django_celery_results.admin import TaskResultAdmin
from django_celery_results.models import TaskResult

from project.urls import urlpatterns as project_urlpatterns

stock_site = AdminSite(name="stock")
stock_site.register(TaskResult, TaskResultAdmin)

urlpatterns = [
    path("stock-admin/", stock_site.urls),
    *project_urlpatterns,
]
