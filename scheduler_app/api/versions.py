"""A schedule's versions at the API (`GET /api/schedules/{id}/versions/`, `.../versions/{n}/`,
`POST .../versions/{n}/restore/`, on the schedules' viewset): what each version is."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from scheduler_app.models import ScheduleVersion


class VersionSerializer(serializers.ModelSerializer[ScheduleVersion]):
    """A version: who made it, when, through which door, by which action, and the fields that
    changed since the version before ({"schedule.minute": [old, new], ...})."""

    by = serializers.CharField(source="actor_name", help_text="The user, or system (a command, seeding).")
    changes = serializers.SerializerMethodField()

    class Meta:
        model = ScheduleVersion
        fields = ["number", "at", "by", "via", "action", "restored_from", "changes"]

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_changes(self, version: ScheduleVersion) -> dict[str, object]:
        return dict(version.changes)


class VersionDetailSerializer(VersionSerializer):
    """A version whole: the schedule and its policy as they were (`snapshot`)."""

    snapshot = serializers.SerializerMethodField()
    differs_now = serializers.SerializerMethodField()

    class Meta(VersionSerializer.Meta):
        fields = [*VersionSerializer.Meta.fields, "snapshot", "differs_now"]

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_snapshot(self, version: ScheduleVersion) -> dict[str, object]:
        return dict(version.snapshot)

    @extend_schema_field(serializers.ListField(child=serializers.DictField()))
    def get_differs_now(self, version: ScheduleVersion) -> list[dict[str, object]]:
        """Each field whose value today differs from the version's: {"field", "then", "now"}."""
        return []  # filled in by the view, which has today's schedule
