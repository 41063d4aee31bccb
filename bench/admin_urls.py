"""URLs for bench/runs_admin.py and bench/console_scale.py: the project's own, plus the stock
django-celery-results TaskResultAdmin and django-celery-beat PeriodicTaskAdmin on an admin
site of their own at /stock-admin/ (the baselines)."""

from __future__ import annotations

from django.contrib.admin import AdminSite
from django.urls import path
from django_celery_beat.admin import PeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask
from django_celery_results.admin import TaskResultAdmin
from django_celery_results.models import TaskResult

from project.urls import urlpatterns as project_urlpatterns

stock_site = AdminSite(name="stock")
stock_site.register(TaskResult, TaskResultAdmin)
stock_site.register(PeriodicTask, PeriodicTaskAdmin)

urlpatterns = [
    path("stock-admin/", stock_site.urls),
    *project_urlpatterns,
]
