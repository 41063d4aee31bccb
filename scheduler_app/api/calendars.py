"""/api/calendars/: business calendars, their excluded dates in the same body. Checked by the
admin's form (`forms.CalendarForm`, `forms.ExclusionForm`, `forms.calendar_problem`), so
both doors accept and refuse the same calendars; every write leaves an audit entry."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers, viewsets

from scheduler_app import audit, forms
from scheduler_app.api.permissions import StaffWithModelPermission
from scheduler_app.api.serializers import refuse_unknown
from scheduler_app.models import BusinessCalendar, CalendarExclusion, SchedulePolicy

CALENDAR_PERMS = {
    "list": "scheduler_app.view_businesscalendar",
    "retrieve": "scheduler_app.view_businesscalendar",
    "create": "scheduler_app.add_businesscalendar",
    "update": "scheduler_app.change_businesscalendar",
    "partial_update": "scheduler_app.change_businesscalendar",
    "destroy": "scheduler_app.delete_businesscalendar",
}
UPCOMING_DAYS = 60
MAX_EXCLUSIONS = 1000
FIELDS = forms.CalendarForm.Meta.fields


class ExclusionSerializer(serializers.Serializer[CalendarExclusion]):
    first_day = serializers.DateField()
    last_day = serializers.DateField(required=False, allow_null=True, help_text="Inclusive; null: the first day only.")
    label = serializers.CharField(required=False, allow_blank=True, max_length=100)  # type: ignore[assignment]  # DRF's metaclass takes it off the class

    def to_internal_value(self, data: Any) -> Any:
        refuse_unknown(self, data)
        return super().to_internal_value(data)


class CalendarSerializer(serializers.Serializer[BusinessCalendar]):
    """A calendar; `exclusions`, when sent, replaces its excluded dates (all of them)."""

    id = serializers.IntegerField(read_only=True)
    name = serializers.CharField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True, max_length=500)
    timezone = serializers.CharField(required=False, max_length=63, help_text="An IANA zone; default UTC.")
    weekdays = serializers.CharField(
        required=False, allow_blank=True, max_length=27, help_text="Allowed days: mon,tue,...; empty: every day."
    )
    day_starts = serializers.TimeField(required=False, allow_null=True, help_text="Allowed from (HH:MM); null: 00:00.")
    day_ends = serializers.TimeField(required=False, allow_null=True, help_text="Allowed until; null: midnight.")
    holiday_country = serializers.CharField(required=False, allow_blank=True, max_length=3)
    holiday_subdivision = serializers.CharField(required=False, allow_blank=True, max_length=10)
    exclusions = ExclusionSerializer(many=True, required=False)
    updated_at = serializers.DateTimeField(read_only=True)
    schedules = serializers.SerializerMethodField()
    upcoming = serializers.SerializerMethodField()

    def to_internal_value(self, data: Any) -> Any:
        refuse_unknown(self, data, echoed=("id", "updated_at", "schedules", "upcoming"))
        return super().to_internal_value(data)

    def validate_exclusions(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(value) > MAX_EXCLUSIONS:
            raise serializers.ValidationError(f"At most {MAX_EXCLUSIONS} excluded dates or ranges, not {len(value)}.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        form = forms.CalendarForm(calendar_data(attrs, self.instance), instance=self.instance)
        if not form.is_valid():
            raise serializers.ValidationError({k: [str(m) for m in v] for k, v in form.errors.items()})
        exclusions = attrs.get("exclusions")
        if exclusions is None:
            rows = list(self.instance.exclusions.all()) if self.instance is not None else []
        else:
            rows = exclusion_rows(exclusions)
        problem = forms.calendar_problem(form.instance, rows)
        if problem:
            raise serializers.ValidationError({"non_field_errors": [problem]})
        attrs["form"], attrs["rows"] = form, rows if exclusions is not None else None
        return attrs

    @transaction.atomic
    def create(self, validated: dict[str, Any]) -> BusinessCalendar:
        return save_calendar(validated)

    @transaction.atomic
    def update(self, instance: BusinessCalendar, validated: dict[str, Any]) -> BusinessCalendar:
        return save_calendar(validated)

    def to_representation(self, row: BusinessCalendar) -> dict[str, Any]:
        data = forms.calendar_fields(row)
        return {"id": row.pk, **data, "updated_at": serializers.DateTimeField().to_representation(row.updated_at),
                "schedules": self.get_schedules(row), "upcoming": self.get_upcoming(row)}  # fmt: skip

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_schedules(self, row: BusinessCalendar) -> list[str]:
        """The names of the schedules that keep out of this calendar's excluded times."""
        return sorted(SchedulePolicy.objects.filter(calendars=row).values_list("periodic_task__name", flat=True))

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_upcoming(self, row: BusinessCalendar) -> list[dict[str, str]]:
        """The excluded dates and public holidays of the next 60 days (weekdays and hours aside)."""
        today = timezone.localdate()
        return [{"day": day.isoformat(), "why": why} for day, why in forms.upcoming_exclusions(row, today)]


def calendar_data(attrs: dict[str, Any], instance: BusinessCalendar | None) -> dict[str, Any]:
    """The form's fields: the calendar as it stands (a partial update), then the request's."""
    data: dict[str, Any] = {field: getattr(instance, field) for field in FIELDS} if instance is not None else {}
    data |= {field: attrs[field] for field in FIELDS if field in attrs}
    return {key: ("" if value is None else value) for key, value in data.items()}


def exclusion_rows(sent: list[dict[str, Any]]) -> list[CalendarExclusion]:
    rows: list[CalendarExclusion] = []
    errors: list[dict[str, list[str]]] = []
    failed = False
    for item in sent:
        form = forms.ExclusionForm({key: value for key, value in item.items() if value is not None})
        ok = form.is_valid()
        errors.append({} if ok else {k: [str(m) for m in v] for k, v in form.errors.items()})
        failed = failed or not ok
        rows.append(form.instance)
    if failed:
        raise serializers.ValidationError({"exclusions": errors})
    return rows


def save_calendar(validated: dict[str, Any]) -> BusinessCalendar:
    row: BusinessCalendar = validated["form"].save()
    if validated["rows"] is not None:
        row.exclusions.all().delete()  # each deleted and saved one by one: beat's change log sees them
        for exclusion in validated["rows"]:
            exclusion.calendar = row
            exclusion.save()
        row.save(update_fields=["updated_at"])  # its cached calendar is read again
    return row


class CalendarViewSet(viewsets.ModelViewSet[BusinessCalendar]):
    """Business calendars: list, create, read, update (exclusions replaced when sent), delete."""

    permission_classes = [StaffWithModelPermission]
    action_perms = CALENDAR_PERMS
    serializer_class = CalendarSerializer

    def get_queryset(self) -> QuerySet[BusinessCalendar]:
        return BusinessCalendar.objects.prefetch_related("exclusions").order_by("name")

    @transaction.atomic  # the write and its audit entry, together
    def perform_create(self, serializer: serializers.BaseSerializer[BusinessCalendar]) -> None:
        row = serializer.save()
        audit.record(self.request.user, "create", row, changes=forms.calendar_fields(row))

    @transaction.atomic
    def perform_update(self, serializer: serializers.BaseSerializer[BusinessCalendar]) -> None:
        assert serializer.instance is not None  # noqa: S101  (an update has its row)
        before = forms.calendar_fields(serializer.instance)
        row = serializer.save()
        audit.record(self.request.user, "update", row, changes=audit.diff(before, forms.calendar_fields(row)))

    def perform_destroy(self, row: BusinessCalendar) -> None:
        with transaction.atomic():
            audit.record(self.request.user, "delete", row, changes=forms.calendar_fields(row))
            row.delete()
