"""The audit log in the console: one trail of every write through the three doors (API,
admin, commands), read-only and filtered by door; and `Audited`, which makes an admin's
create, change and delete leave an entry as well as Django's own object history."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db import models
from django.db.models import QuerySet
from django.forms.models import model_to_dict
from django.http import HttpRequest
from django.utils.html import format_html
from django_celery_beat.models import PeriodicTask
from rest_framework.utils.encoders import JSONEncoder

from scheduler_app import audit
from scheduler_app.admin.readonly import ReadOnly
from scheduler_app.models import AuditEntry

if TYPE_CHECKING:  # Django's classes take no type arguments at run time (no django_stubs_ext.monkeypatch)
    AuditEntryModelAdmin = admin.ModelAdmin[AuditEntry]
    AuditedBase = admin.ModelAdmin[Any]
else:
    AuditEntryModelAdmin = admin.ModelAdmin
    AuditedBase = object

SECRET_FIELDS = {"key", "password"}  # never copied into the trail (an API token's key)
BEFORE = "_bk_audit_before"  # on the request: the object as it was, read before the save


class DoorFilter(admin.SimpleListFilter):
    """Which door the write came through: all three are offered, whether or not used yet."""

    title, parameter_name = "door", "via"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(audit.DOORS)

    def queryset(self, request: HttpRequest, queryset: QuerySet[AuditEntry]) -> QuerySet[AuditEntry]:
        return queryset.filter(via=self.value()) if self.value() else queryset


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnly, AuditEntryModelAdmin):
    list_display = ["at", "actor_name", "via", "action", "object_type", "object_id", "object_repr"]
    list_filter = [DoorFilter, "action", "object_type"]
    search_fields = ["actor_name", "object_repr", "object_id"]
    date_hierarchy = None
    show_full_result_count = False
    readonly_fields = ["at", "actor", "actor_name", "via", "action", "object_type", "object_id", "object_repr",
                       "what_changed"]  # fmt: skip
    exclude = ["changes"]

    @admin.display(description="what changed")
    def what_changed(self, entry: AuditEntry) -> str:
        return format_html("<pre class='bk-json'>{}</pre>", json.dumps(entry.changes, indent=2, sort_keys=True))


def snapshot(obj: models.Model) -> dict[str, Any]:
    """What an entry keeps of an object: a schedule as the API keeps it (audit.snapshot), any
    other object its fields as JSON, secrets left out."""
    if isinstance(obj, PeriodicTask):
        return audit.snapshot(obj)
    stored = type(obj)._default_manager.filter(pk=obj.pk).first() or obj
    fields = {key: value for key, value in model_to_dict(stored).items() if key not in SECRET_FIELDS}
    return dict(json.loads(json.dumps(fields, cls=JSONEncoder, default=str)))


class Audited(AuditedBase):
    """An admin whose create, change and delete record an AuditEntry (via="admin") in the
    admin's own transaction, with the API's diff of a change. The entry is written where
    Django writes its history (log_addition / log_change), once the inlines (a schedule's
    policy) and save_related's own writes are done; an action's log_change is not a save,
    and records its own entry."""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        setattr(request, BEFORE, snapshot(obj) if change else None)  # read from the database: the row as it was
        super().save_model(request, obj, form, change)

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        self._record_save(request, obj)
        return super().log_addition(request, obj, message)

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        self._record_save(request, obj)
        return super().log_change(request, obj, message)

    def _record_save(self, request: HttpRequest, obj: Any) -> None:
        if not hasattr(request, BEFORE):
            return  # not the form's save: an action, which records what it did
        before = getattr(request, BEFORE)
        delattr(request, BEFORE)
        after = snapshot(obj)
        changes = after if before is None else audit.diff(before, after)
        if before is not None and not changes:
            return  # saved as it was: nothing changed to record
        audit.record(request.user, "create" if before is None else "update", obj, changes=changes, via="admin")

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        audit.record(request.user, "delete", obj, changes=snapshot(obj), via="admin")
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for obj in queryset:
            audit.record(request.user, "delete", obj, changes=snapshot(obj), via="admin")
        super().delete_queryset(request, queryset)
