"""Backfills in the console: the form a schedule's "Backfill…" action leads to (from, to,
options), its confirmation page listing the slots (those that already ran marked), the list
of backfills and a page per backfill (progress done / total, its slots and their runs, a
Cancel button behind a confirmation). Starting and cancelling need "Can start and cancel a
backfill" (and to see schedules); seeing them, "Can view backfill". Thin over
scheduler_app/backfills.py; each write leaves its audit entry (via "admin")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app import audit, backfills
from scheduler_app.models import Backfill

if TYPE_CHECKING:  # Django's classes take no type arguments at run time (no django_stubs_ext.monkeypatch)
    BackfillModelAdmin = admin.ModelAdmin[Backfill]
else:
    BackfillModelAdmin = admin.ModelAdmin

RUN_BACKFILL = "scheduler_app.run_backfill"
VIEW_SCHEDULES = "django_celery_beat.view_periodictask"
STATE_CLASSES = {Backfill.RUNNING: "run", Backfill.FINISHED: "ok", Backfill.CANCELLED: "muted"}
MOMENT = forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}, format="%Y-%m-%dT%H:%M:%S")


class BackfillForm(forms.Form):
    start = forms.DateTimeField(label="From", widget=MOMENT, help_text="Inclusive; in the server's time zone.")
    end = forms.DateTimeField(label="To", widget=MOMENT, help_text="Inclusive; not in the future.")
    newest_first = forms.BooleanField(required=False, label="Newest first")
    max_concurrent = forms.IntegerField(label="At most at once", initial=1, min_value=1,
                                        max_value=backfills.MAX_CONCURRENT)  # fmt: skip
    rerun = forms.BooleanField(required=False, label="Also run slots that already ran")

    def choices(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {key: data[key] for key in ("newest_first", "max_concurrent", "rerun")}


def can_backfill(request: HttpRequest) -> bool:
    return bool(request.user.has_perm(RUN_BACKFILL) and request.user.has_perm(VIEW_SCHEDULES))


def state_badge(state: str) -> str:
    return format_html('<span class="bk-badge bk-{}">{}</span>', STATE_CLASSES.get(state, "muted"), state)


class BackfillAdmin(BackfillModelAdmin):
    class Media:
        css = {"all": ["beatkeeper/console.css"]}

    list_display = ["pk", "schedule_name", "slots_range", "shown_state", "done_of_total", "asked"]
    list_display_links = ["pk", "schedule_name"]
    list_filter = ["state"]
    search_fields = ["schedule_name"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # started from a schedule (its "Backfill…" action), not here

    def has_change_permission(self, request: HttpRequest, obj: Backfill | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Backfill | None = None) -> bool:
        """Never on its own (no delete page, no bulk delete); but a backfill is its schedule's own
        record, so whoever may delete schedules may delete one with it (the schedule, or the
        crontab / interval / solar / clocked row under it: Django asks this of each cascaded row)."""
        return obj is not None and bool(request.user.has_perm("django_celery_beat.delete_periodictask"))

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None) -> Any:
        raise PermissionDenied  # with its schedule only (has_delete_permission)

    @admin.display(description="state", ordering="state")
    def shown_state(self, backfill: Backfill) -> str:
        return state_badge(backfill.state)

    @admin.display(description="slots from / to", ordering="start")
    def slots_range(self, backfill: Backfill) -> str:
        start, end = timezone.localtime(backfill.start), timezone.localtime(backfill.end)
        return format_html("{}<br>{}", f"{start:%Y-%m-%d %H:%M}", f"{end:%Y-%m-%d %H:%M}")

    @admin.display(description="asked by", ordering="created_at")
    def asked(self, backfill: Backfill) -> str:
        at = timezone.localtime(backfill.created_at)
        return format_html(
            "{} ({})<br>{}", backfill.requested_by_name or "system", backfill.via, f"{at:%Y-%m-%d %H:%M}"
        )

    @admin.display(description="done / total")
    def done_of_total(self, backfill: Backfill) -> str:
        counts = backfills.progress(backfill)
        return f"{counts.done} / {counts.total - counts.skipped - counts.cancelled}"

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view
        return [
            path("start/<int:schedule_pk>/", view(self.start_view), name="scheduler_app_backfill_start"),
            path("<int:pk>/cancel/", view(self.cancel_view), name="scheduler_app_backfill_cancel"),
            *super().get_urls(),
        ]

    def render(self, request: HttpRequest, template: str, title: str, **context: Any) -> TemplateResponse:
        context = {**self.admin_site.each_context(request), "title": title, "opts": self.model._meta, **context}
        return TemplateResponse(request, f"admin/scheduler_app/backfill/{template}", context)

    # --- the backfill's page ------------------------------------------------------------
    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:  # fmt: skip
        if not self.has_view_permission(request):
            raise PermissionDenied
        backfill = get_object_or_404(Backfill, pk=object_id) if object_id.isdecimal() else None
        if backfill is None:
            return HttpResponseRedirect(reverse("admin:scheduler_app_backfill_changelist"))
        counts = backfills.progress(backfill)
        rows = list(backfill.slots.order_by("position"))
        run_pks = dict(TaskResult.objects.filter(task_id__in=[r.task_id for r in rows if r.task_id])
                       .values_list("task_id", "pk"))  # fmt: skip
        slots = [{"slot": row, "run_pk": run_pks.get(row.task_id)} for row in rows]
        return self.render(request, "detail.html", f"Backfill {backfill.pk} of {backfill.schedule_name}",
                           backfill=backfill, counts=counts, slots=slots, state=state_badge(backfill.state),
                           to_run=counts.total - counts.skipped - counts.cancelled,
                           can_cancel=backfill.state == Backfill.RUNNING and can_backfill(request))  # fmt: skip

    def cancel_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """GET: the confirmation page. POST: cancel."""
        if not can_backfill(request):
            raise PermissionDenied
        backfill = get_object_or_404(Backfill, pk=pk)
        page = reverse("admin:scheduler_app_backfill_change", args=[backfill.pk])
        if request.method != "POST":
            counts = backfills.progress(backfill)
            return self.render(request, "cancel_confirm.html", f"Cancel backfill {backfill.pk}", backfill=backfill,
                               counts=counts, back_url=page)  # fmt: skip
        try:
            with transaction.atomic():
                cancelled = backfills.cancel(backfill, by=request.user)
                audit.record(request.user, "cancel", backfill, object_type="backfill", via="admin",
                             changes={"cancelled_slots": cancelled})  # fmt: skip
        except backfills.BackfillError as exc:
            messages.error(request, str(exc))
            return HttpResponseRedirect(page)
        messages.success(request, f"Cancelled backfill {backfill.pk}: {cancelled} waiting slot(s) will not run; "
                                  "runs already sent go on.")  # fmt: skip
        return HttpResponseRedirect(page)

    # --- starting one: the form, the confirmation, the start ------------------------------
    def start_view(self, request: HttpRequest, schedule_pk: int) -> HttpResponse:
        """GET: the form. POST: the confirmation page listing the slots; POST with
        `confirm=yes`: the backfill starts, and its page follows."""
        if not can_backfill(request):
            raise PermissionDenied
        task = get_object_or_404(PeriodicTask, pk=schedule_pk)
        form = BackfillForm(request.POST if request.method == "POST" else None)
        title = f"Backfill {task.name}"
        if not form.is_valid():
            return self.render(request, "start.html", title, task=task, form=form)
        start, end = form.cleaned_data["start"], form.cleaned_data["end"]
        try:
            if request.POST.get("confirm") != "yes":
                plan = backfills.plan(task, start, end, **form.choices())
                return self.render(request, "confirm.html", title, task=task, form=form, plan=plan)
            with transaction.atomic():
                backfill = backfills.start(task, start, end, by=request.user, via="admin", **form.choices())
                audit.record(request.user, "backfill", task, via="admin", changes=backfills.audited(backfill))
        except backfills.BackfillError as exc:
            form.add_error(None, str(exc))
            return self.render(request, "start.html", title, task=task, form=form)
        messages.success(request, f"Started backfill {backfill.pk} of {task.name}; beat's leader sends its slots.")
        return HttpResponseRedirect(reverse("admin:scheduler_app_backfill_change", args=[backfill.pk]))


admin.site.register(Backfill, BackfillAdmin)


@admin.action(description="Backfill… (one schedule: its slots between two moments)", permissions=["backfill"])
def backfill_action(modeladmin: Any, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> HttpResponse | None:
    """The schedules list's action: leads to the backfill form of the one schedule selected
    (offered to whoever may backfill: `ScheduleAdmin.has_backfill_permission`)."""
    if not can_backfill(request):
        modeladmin.message_user(request, "You may not start a backfill (Can start and cancel a backfill).",
                                messages.ERROR)  # fmt: skip
        return None
    if queryset.count() != 1:
        modeladmin.message_user(request, "Select exactly one schedule to backfill.", messages.WARNING)
        return None
    task = queryset.get()
    return HttpResponseRedirect(reverse("admin:scheduler_app_backfill_start", args=[task.pk]))
