"""Concurrency pools in the console: the list with each pool's slots in use and runs waiting,
and a pool's page with its size, lease and rate (checked by the API's form, `forms.PoolForm`),
the schedules and tasks in it, and what it holds now: the runs with a slot and the runs waiting
in order, refreshed every 5 s (a live region). Every save and delete leaves an audit entry; a
pool that schedules use cannot be deleted (the admin lists them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from scheduler_app import forms as shared
from scheduler_app import pools
from scheduler_app.admin.audit import Audited
from scheduler_app.models import Pool

if TYPE_CHECKING:  # Django's classes take no type arguments at run time (no django_stubs_ext.monkeypatch)
    PoolModelAdmin = admin.ModelAdmin[Pool]
else:
    PoolModelAdmin = admin.ModelAdmin


@admin.register(Pool)
class PoolAdmin(Audited, PoolModelAdmin):
    class Media:
        css = {"all": ["beatkeeper/console.css"]}

    form = shared.PoolForm
    list_display = ["name", "now", "lease_seconds", "rate_shown", "schedule_count", "description"]
    search_fields = ["name", "description"]
    readonly_fields = ["used_by"]
    change_form_template = "admin/scheduler_app/pool/change_form.html"
    fieldsets = [
        (None, {"fields": ["name", "size", "lease", "rate", "description"]}),
        ("Who uses it", {"fields": ["used_by"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Pool]:
        rows: QuerySet[Pool] = super().get_queryset(request)
        return rows.annotate(schedules=Count("policies"))

    def get_fieldsets(self, request: HttpRequest, obj: Pool | None = None) -> list[Any]:
        return self.fieldsets if obj else self.fieldsets[:-1]

    def get_readonly_fields(self, request: HttpRequest, obj: Pool | None = None) -> list[str]:
        return ["name", *self.readonly_fields] if obj is not None else list(self.readonly_fields)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        for pool, tasks in pools.missing_pools().items():
            self.message_user(request, f"No pool named {pool!r}, which {', '.join(tasks)} join(s) by default: "
                                       "their runs fail until it is made.", messages.WARNING)  # fmt: skip
        return super().changelist_view(request, extra_context)

    def changeform_view(self, request: HttpRequest, object_id: str | None = None, form_url: str = "",
                        extra_context: dict[str, Any] | None = None) -> HttpResponse:  # fmt: skip
        extra = dict(extra_context or {})
        pool = self.get_object(request, object_id) if object_id else None
        if pool is not None:
            extra["bk_pool_status"] = pools.status(pool)
        return super().changeform_view(request, object_id, form_url, extra)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[Any, Any, Any, list[Any]]:
        """A pool that schedules or tasks join is kept: the page says who (the API answers 409)."""
        deleted, counts, needed, protected = super().get_deleted_objects(objs, request)
        extra = [
            f"task {task} (joins it by default, in its code)" for pool in objs for task in pools.tasks_of(pool.name)
        ]
        return deleted, counts, needed, [*protected, *extra]

    # --- columns -------------------------------------------------------------------------
    @admin.display(description="now")
    def now(self, pool: Pool) -> str:
        """Read live from Redis: the slots held (of the size) and the runs waiting."""
        status = pools.status(pool)
        if status.error:
            return "unknown: Redis unreachable"
        return f"{status.in_use} of {pool.size} in use; {len(status.waiting)} waiting"

    @admin.display(description="lease", ordering="lease")
    def lease_seconds(self, pool: Pool) -> str:
        return f"{pool.lease} s"

    @admin.display(description="rate", ordering="rate")
    def rate_shown(self, pool: Pool) -> str:
        return pool.rate or "–"

    @admin.display(description="schedules", ordering="schedules")
    def schedule_count(self, pool: Pool) -> int:
        return int(getattr(pool, "schedules", 0))

    @admin.display(description="used by")
    def used_by(self, pool: Pool) -> str:
        schedules = pools.schedules_of(pool)
        tasks = pools.tasks_of(pool.name)
        if not schedules and not tasks:
            return "No schedule and no task: a schedule joins it in its policy, a task by platform_task(pool=...)."
        links = format_html_join(
            ", ", '<a href="{}?q={}">{}</a>',
            ((reverse("admin:django_celery_beat_periodictask_changelist"), name, name) for name in schedules),
        )  # fmt: skip
        said = format_html("<p>Schedules: {}</p>", links) if schedules else ""
        by_task = format_html("<p>Tasks (by default): {}</p>", ", ".join(tasks)) if tasks else ""
        return format_html("{}{}", said, by_task)
