"""Business calendars in the console: the calendar with its excluded dates inline, checked by
the API's form (`forms.CalendarForm`, `forms.calendar_problem`); its page shows the dates
and public holidays it excludes in the next 60 days and the schedules that use it. Every
save and delete leaves an audit entry (via="admin"), the calendar with its dates, as the
API records it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin
from django.db.models import Count, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from scheduler_app import audit
from scheduler_app import forms as shared
from scheduler_app.forms import zone_choices
from scheduler_app.models import BusinessCalendar, CalendarExclusion, SchedulePolicy

if TYPE_CHECKING:  # Django's classes take no type arguments at run time (no django_stubs_ext.monkeypatch)
    ExclusionFormSetBase = BaseInlineFormSet[CalendarExclusion, BusinessCalendar, forms.ModelForm[CalendarExclusion]]
    ExclusionInlineBase = admin.TabularInline[CalendarExclusion, BusinessCalendar]
    CalendarModelAdmin = admin.ModelAdmin[BusinessCalendar]
else:
    ExclusionFormSetBase = BaseInlineFormSet
    ExclusionInlineBase = admin.TabularInline
    CalendarModelAdmin = admin.ModelAdmin

UPCOMING_DAYS = 60
BEFORE = "_bk_calendar_before"  # on the request: the calendar as it was, read before the save


class ExclusionFormSet(ExclusionFormSetBase):
    def clean(self) -> None:
        """The calendar with the dates as they stand must allow some time (`forms.calendar_problem`)."""
        super().clean()
        if any(form.errors for form in self.forms):
            return
        kept = [form.instance for form in self.forms
                if form.cleaned_data and not form.cleaned_data.get("DELETE")]  # fmt: skip
        problem = shared.calendar_problem(self.instance, kept)
        if problem:
            raise forms.ValidationError(problem)


class ExclusionInline(ExclusionInlineBase):
    """The calendar's dates: edited by whoever may change the calendar."""

    model = CalendarExclusion
    form = shared.ExclusionForm
    formset = ExclusionFormSet
    extra = 1
    fields = ["first_day", "last_day", "label"]

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return calendar_perm(request, "view") or calendar_perm(request, "change")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return calendar_perm(request, "change" if obj is not None else "add")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return calendar_perm(request, "change" if obj is not None else "add")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return calendar_perm(request, "change")


def calendar_perm(request: HttpRequest, action: str) -> bool:
    return bool(request.user.has_perm(f"scheduler_app.{action}_businesscalendar"))


@admin.register(BusinessCalendar)
class CalendarAdmin(CalendarModelAdmin):
    class Media:
        css = {"all": ["beatkeeper/console.css"]}

    form = shared.CalendarForm
    inlines = [ExclusionInline]
    list_display = ["name", "timezone", "allowed_days", "allowed_hours", "holidays", "schedule_count"]
    search_fields = ["name", "description"]
    readonly_fields = ["upcoming", "used_by"]
    change_form_template = "admin/scheduler_app/businesscalendar/change_form.html"
    fieldsets = [
        (None, {"fields": ["name", "description", "timezone"]}),
        ("Allowed times", {"fields": ["weekdays", ("day_starts", "day_ends")]}),
        ("Public holidays", {"fields": [("holiday_country", "holiday_subdivision")]}),
        ("What it excludes next, and who uses it", {"fields": ["upcoming", "used_by"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[BusinessCalendar]:
        return super().get_queryset(request).annotate(schedules=Count("policies"))

    def get_fieldsets(self, request: HttpRequest, obj: BusinessCalendar | None = None) -> list[Any]:
        return self.fieldsets if obj else self.fieldsets[:-1]

    def changeform_view(self, request: HttpRequest, object_id: str | None = None, form_url: str = "",
                        extra_context: dict[str, Any] | None = None) -> HttpResponse:  # fmt: skip
        extra = {"zones": [zone for zone, _ in zone_choices()], **(extra_context or {})}
        return super().changeform_view(request, object_id, form_url, extra)

    # --- columns and the page's reads ----------------------------------------------------
    @admin.display(description="allowed days")
    def allowed_days(self, row: BusinessCalendar) -> str:
        return row.weekdays or "every day"

    @admin.display(description="allowed hours")
    def allowed_hours(self, row: BusinessCalendar) -> str:
        if not row.day_starts and not row.day_ends:
            return "all day"
        starts = f"{row.day_starts:%H:%M}" if row.day_starts else "00:00"
        return f"{starts}–{row.day_ends:%H:%M}" if row.day_ends else f"from {starts}"

    @admin.display(description="public holidays")
    def holidays(self, row: BusinessCalendar) -> str:
        if not row.holiday_country:
            return "–"
        return f"{row.holiday_country}-{row.holiday_subdivision}" if row.holiday_subdivision else row.holiday_country

    @admin.display(description="schedules", ordering="schedules")
    def schedule_count(self, row: BusinessCalendar) -> int:
        return int(getattr(row, "schedules", 0))

    @admin.display(description=f"excluded in the next {UPCOMING_DAYS} days")
    def upcoming(self, row: BusinessCalendar) -> str:
        found = shared.upcoming_exclusions(row, timezone.localdate(), UPCOMING_DAYS)
        hours = self.allowed_hours(row) if row.day_starts or row.day_ends else ""
        also = [part for part in (f"days other than {row.weekdays}" if row.weekdays else "", hours) if part]
        every = format_html("<p>Every week: {}.</p>", ", and outside ".join(also)) if also else ""
        if not found:
            return format_html("{}<p>No excluded date or public holiday in the next {} days.</p>", every,
                               UPCOMING_DAYS)  # fmt: skip
        rows = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                                ((day.isoformat(), f"{day:%A}", why) for day, why in found))  # fmt: skip
        return format_html(
            "{}<table class='bk-runs' id='bk-calendar-upcoming'><tr><th>day</th><th></th><th>why</th></tr>{}</table>",
            every,
            rows,
        )

    @admin.display(description="used by")
    def used_by(self, row: BusinessCalendar) -> str:
        policies = SchedulePolicy.objects.filter(calendars=row).select_related("periodic_task")
        found = sorted(((p.periodic_task.pk, p.periodic_task.name, p.calendar_rule or "skip") for p in policies),
                       key=lambda item: item[1])  # fmt: skip
        if not found:
            return "no schedule yet: attach it under a schedule's policy"
        return format_html_join(
            mark_safe("<br>"),  # noqa: S308  (a constant)
            '<a href="{}">{}</a> <small>({} excluded slots)</small>',
            ((reverse("admin:django_celery_beat_periodictask_change", args=[pk]), name, rule)
             for pk, name, rule in found),
        )  # fmt: skip

    # --- the audit trail -----------------------------------------------------------------
    def save_model(self, request: HttpRequest, obj: BusinessCalendar, form: Any, change: bool) -> None:
        setattr(request, BEFORE, shared.calendar_fields(obj) if change else None)  # the row as stored
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if any(formset.has_changed() for formset in formsets):
            form.instance.save(update_fields=["updated_at"])  # its dates changed: beat reads the calendar again

    def log_addition(self, request: HttpRequest, obj: BusinessCalendar, message: Any) -> Any:
        self.record_save(request, obj)
        return super().log_addition(request, obj, message)

    def log_change(self, request: HttpRequest, obj: BusinessCalendar, message: Any) -> Any:
        self.record_save(request, obj)
        return super().log_change(request, obj, message)

    def record_save(self, request: HttpRequest, obj: BusinessCalendar) -> None:
        if not hasattr(request, BEFORE):
            return
        before = getattr(request, BEFORE)
        delattr(request, BEFORE)
        after = shared.calendar_fields(obj)
        changes = after if before is None else audit.diff(before, after)
        if before is None or changes:
            audit.record(request.user, "create" if before is None else "update", obj, changes=changes, via="admin")

    def delete_model(self, request: HttpRequest, obj: BusinessCalendar) -> None:
        audit.record(request.user, "delete", obj, changes=shared.calendar_fields(obj), via="admin")
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[BusinessCalendar]) -> None:
        for obj in queryset:
            audit.record(request.user, "delete", obj, changes=shared.calendar_fields(obj), via="admin")
        super().delete_queryset(request, queryset)
