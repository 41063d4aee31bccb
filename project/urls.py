from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from scheduler_app.admin import deadletters, failures, moved, queues, trends, workers
from scheduler_app.admin.dashboard import dashboard_view, panel_view

admin.site.site_header = "Beatkeeper"
admin.site.site_title = "Beatkeeper"
admin.site.index_title = "Operations console"

urlpatterns = [
    path("admin/dashboard/", admin.site.admin_view(dashboard_view), name="beatkeeper-dashboard"),
    path("admin/dashboard/panel/", admin.site.admin_view(panel_view), name="beatkeeper-dashboard-panel"),
    path("admin/dead-letters/", include(deadletters.urls())),
    path("admin/failures/", include(failures.urls())),
    path("admin/trends/", include(trends.urls())),
    path("admin/workers/", include(workers.urls())),
    path("admin/queues/", include(queues.urls())),
    path("admin/django_celery_results/taskresult/", include(moved.urls())),  # the runs' old address
    path("admin/", admin.site.urls),
    path("api/", include("scheduler_app.api.urls")),
]
