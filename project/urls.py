from __future__ import annotations

from django.contrib import admin
from django.urls import path

admin.site.site_header = "Beatkeeper"
admin.site.site_title = "Beatkeeper"
admin.site.index_title = "Operations console"

urlpatterns = [
    path("admin/", admin.site.urls),
]
