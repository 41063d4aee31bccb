from __future__ import annotations

from django.contrib import admin
from django.urls import path

from scheduler_app import views

admin.site.site_header = "Beatkeeper"
admin.site.site_title = "Beatkeeper"
admin.site.index_title = "Operations console"

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
]
