"""/api/pools/: concurrency pools by name, with what each holds now. Checked by the admin's
form (`forms.PoolForm`), so both doors accept and refuse the same pools; a pool's name never
changes, and a pool that schedules use is not deleted (409, naming them). Every write leaves
an audit entry."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers, viewsets

from scheduler_app import audit, forms, pools
from scheduler_app.api.permissions import StaffWithModelPermission
from scheduler_app.api.serializers import refuse_unknown
from scheduler_app.api.views import Conflict
from scheduler_app.models import Pool

POOL_PERMS = {
    "list": "scheduler_app.view_pool",
    "retrieve": "scheduler_app.view_pool",
    "create": "scheduler_app.add_pool",
    "update": "scheduler_app.change_pool",
    "partial_update": "scheduler_app.change_pool",
    "destroy": "scheduler_app.delete_pool",
}
READ_ONLY = ("updated_at", "schedules", "tasks", "now")


class RunInPool(serializers.Serializer[Any]):
    task_id = serializers.CharField()
    task_name = serializers.CharField(help_text="As recorded; empty while the run is not recorded yet.")
    schedule = serializers.CharField()


class HolderSerializer(RunInPool):
    lease_ends = serializers.DateTimeField(help_text="Renewed every third of the lease while the run is alive.")


class WaiterSerializer(RunInPool):
    position = serializers.IntegerField(help_text="1: the next to get a slot.")
    since = serializers.DateTimeField()


class NowSerializer(serializers.Serializer[Any]):
    in_use = serializers.IntegerField()
    holders = HolderSerializer(many=True)
    waiting = WaiterSerializer(many=True)
    error = serializers.CharField(help_text="Set when Redis could not be read (the lists are then empty).")


class PoolSerializer(serializers.Serializer[Pool]):
    """A pool; `name` is set once, when it is made."""

    name = serializers.CharField(max_length=100, help_text="Letters, digits, '_', '.' and '-'; never changes.")
    size = serializers.IntegerField(min_value=1, max_value=10_000, help_text="Runs of the pool at once.")
    lease = serializers.IntegerField(
        required=False, min_value=3, max_value=86_400,
        help_text="Seconds a slot outlives a run that stopped renewing it (its worker died); default 60.",
    )  # fmt: skip
    rate = serializers.CharField(
        required=False, allow_blank=True, max_length=40,
        help_text="Fleet-wide starts of the pool's runs: 60/m, 5/s, 100/h, 1000/d, 10/30s; empty: none.",
    )  # fmt: skip
    description = serializers.CharField(required=False, allow_blank=True, max_length=500)
    updated_at = serializers.DateTimeField(read_only=True)
    schedules = serializers.SerializerMethodField()
    tasks = serializers.SerializerMethodField()
    now = serializers.SerializerMethodField()

    def to_internal_value(self, data: Any) -> Any:
        refuse_unknown(self, data, echoed=READ_ONLY)
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        current = pools.fields_of(self.instance) if self.instance is not None else {}
        made = pools.fields_of(Pool())  # a new one: the model's defaults
        data = {**made, **current, **attrs}  # read before the form: it writes the new values onto the instance
        form = forms.PoolForm({key: "" if value is None else value for key, value in data.items()},
                              instance=self.instance)  # fmt: skip
        if not form.is_valid():
            raise serializers.ValidationError({k: [str(m) for m in v] for k, v in form.errors.items()})
        return {"form": form, "before": current}

    @transaction.atomic
    def create(self, validated: dict[str, Any]) -> Pool:
        return validated["form"].save()  # type: ignore[no-any-return]

    @transaction.atomic
    def update(self, instance: Pool, validated: dict[str, Any]) -> Pool:
        return validated["form"].save()  # type: ignore[no-any-return]

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_schedules(self, row: Pool) -> list[str]:
        """The names of the schedules whose policy puts them in this pool."""
        return pools.schedules_of(row)

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_tasks(self, row: Pool) -> list[str]:
        """The registered tasks that join it by default (platform_task(pool=...))."""
        return pools.tasks_of(row.name)

    @extend_schema_field(NowSerializer)
    def get_now(self, row: Pool) -> dict[str, Any]:
        """What it holds now: the runs with a slot and the runs waiting, first first."""
        status = pools.status(row)

        def run(found: pools.Recorded) -> dict[str, Any]:
            return {"task_id": found.task_id, "task_name": found.task_name, "schedule": found.schedule}

        return {
            "in_use": status.in_use,
            "holders": [{**run(h.run), "lease_ends": h.lease_ends.isoformat()} for h in status.holders],
            "waiting": [{**run(w.run), "position": w.position, "since": w.since.isoformat()} for w in status.waiting],
            "error": status.error,
        }


class PoolViewSet(viewsets.ModelViewSet[Pool]):
    """Concurrency pools: list, create, read (with its slots now), update, delete."""

    permission_classes = [StaffWithModelPermission]
    action_perms = POOL_PERMS
    serializer_class = PoolSerializer
    lookup_field = "name"
    lookup_value_regex = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"

    def get_queryset(self) -> QuerySet[Pool]:
        return Pool.objects.order_by("name")

    @transaction.atomic  # the write and its audit entry, together
    def perform_create(self, serializer: serializers.BaseSerializer[Pool]) -> None:
        row = serializer.save()
        audit.record(self.request.user, "create", row, changes=pools.fields_of(row))

    @transaction.atomic
    def perform_update(self, serializer: serializers.BaseSerializer[Pool]) -> None:
        before = serializer.validated_data["before"]
        row = serializer.save()
        audit.record(self.request.user, "update", row, changes=audit.diff(before, pools.fields_of(row)))

    def perform_destroy(self, row: Pool) -> None:
        problem = pools.in_use(row)
        if problem:
            raise Conflict(problem)
        with transaction.atomic():
            audit.record(self.request.user, "delete", row, changes=pools.fields_of(row))
            row.delete()
