"""The audit log in the console: every write made through the API, read-only."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from django.contrib import admin
from django.utils.html import format_html

from scheduler_app.admin.readonly import ReadOnly
from scheduler_app.models import AuditEntry

if TYPE_CHECKING:  # Django's classes take no type arguments at run time (no django_stubs_ext.monkeypatch)
    AuditEntryModelAdmin = admin.ModelAdmin[AuditEntry]
else:
    AuditEntryModelAdmin = admin.ModelAdmin


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnly, AuditEntryModelAdmin):
    list_display = ["at", "actor_name", "via", "action", "object_type", "object_id", "object_repr"]
    list_filter = ["via", "action", "object_type"]
    search_fields = ["actor_name", "object_repr", "object_id"]
    date_hierarchy = None
    show_full_result_count = False
    readonly_fields = ["at", "actor", "actor_name", "via", "action", "object_type", "object_id", "object_repr",
                       "what_changed"]  # fmt: skip
    exclude = ["changes"]

    @admin.display(description="what changed")
    def what_changed(self, entry: AuditEntry) -> str:
        return format_html("<pre class='bk-json'>{}</pre>", json.dumps(entry.changes, indent=2, sort_keys=True))
