"""Backfills in the API: POST /api/schedules/{id}/backfill/ (a dry run lists the slots; a
start answers the backfill), GET /api/backfills/, GET /api/backfills/{id}/ (its progress and
slots), POST /api/backfills/{id}/cancel/. Thin over scheduler_app/backfills.py; each write
leaves its audit entry, in the same transaction."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django_celery_beat.models import PeriodicTask
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from scheduler_app import audit, backfills
from scheduler_app.api import params
from scheduler_app.api.permissions import StaffWithModelPermission
from scheduler_app.api.serializers import refuse_unknown
from scheduler_app.api.views import Conflict
from scheduler_app.models import Backfill

RUN_BACKFILL = "scheduler_app.run_backfill"
VIEW_BACKFILL = "scheduler_app.view_backfill"
BACKFILL_PERMS = {"list": VIEW_BACKFILL, "retrieve": VIEW_BACKFILL, "cancel": RUN_BACKFILL}


class BackfillRequestSerializer(serializers.Serializer[dict[str, Any]]):
    """The body of POST /api/schedules/{id}/backfill/ (`from` and `to` are Python keywords,
    hence the fields declared in get_fields)."""

    dry_run = serializers.BooleanField(default=False, help_text="List the slots; write nothing.")
    newest_first = serializers.BooleanField(default=False)
    max_concurrent = serializers.IntegerField(default=1, min_value=1, max_value=backfills.MAX_CONCURRENT)
    rerun = serializers.BooleanField(default=False, help_text="Also run slots that already ran.")

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        moment = "ISO 8601; without an offset, the server's time zone"
        return {
            "from": serializers.DateTimeField(help_text=f"The first moment (inclusive; {moment})."),
            "to": serializers.DateTimeField(help_text=f"The last moment (inclusive, not in the future; {moment})."),
            **super().get_fields(),
        }

    def to_internal_value(self, data: Any) -> Any:
        refuse_unknown(self, data)
        return super().to_internal_value(data)


class PlannedSlotSerializer(serializers.Serializer[backfills.PlannedSlot]):
    position = serializers.IntegerField()
    slot = serializers.DateTimeField(help_text="The nominal slot.")
    scheduled_for = serializers.DateTimeField(source="at", help_text="The moment beat sends it for.")
    skipped = serializers.BooleanField()
    skipped_because = serializers.CharField()


class DryRunSerializer(serializers.Serializer[dict[str, Any]]):
    schedule = serializers.CharField()
    count = serializers.IntegerField()
    to_run = serializers.IntegerField()
    skipped = serializers.IntegerField()
    slots = PlannedSlotSerializer(many=True)


class ProgressSerializer(serializers.Serializer[backfills.Progress]):
    total = serializers.IntegerField()
    done = serializers.IntegerField(help_text="Sent, and its run has ended (any final state).")
    running = serializers.IntegerField(help_text="Sent, its run not ended yet.")
    waiting = serializers.IntegerField()
    skipped = serializers.IntegerField(help_text="Already ran when the backfill started.")
    cancelled = serializers.IntegerField()


class BackfillSerializer(serializers.ModelSerializer[Backfill]):
    """A backfill as read: its range as `from` and `to`, the names its request takes."""

    schedule = serializers.IntegerField(source="periodic_task_id")
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Backfill
        fields = ["id", "schedule", "schedule_name", "newest_first", "max_concurrent", "rerun",
                  "state", "requested_by_name", "via", "created_at", "finished_at", "cancelled_by_name",
                  "progress"]  # fmt: skip

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        items = list(super().get_fields().items())
        span = {"from": serializers.DateTimeField(source="start", read_only=True),
                "to": serializers.DateTimeField(source="end", read_only=True)}  # fmt: skip
        return {**dict(items[:3]), **span, **dict(items[3:])}

    @extend_schema(responses=ProgressSerializer)
    def get_progress(self, backfill: Backfill) -> dict[str, int]:
        return backfills.progress(backfill).as_dict()


class BackfillSlotSerializer(serializers.Serializer[Any]):
    position = serializers.IntegerField()
    slot = serializers.DateTimeField()
    state = serializers.CharField()
    run = serializers.CharField(source="task_id", help_text="The run's id (GET /api/runs/{id}/), once sent.")
    sent_at = serializers.DateTimeField()
    finished = serializers.BooleanField()


class BackfillDetailSerializer(BackfillSerializer):
    slots = BackfillSlotSerializer(many=True, read_only=True)

    class Meta(BackfillSerializer.Meta):
        fields = [*BackfillSerializer.Meta.fields, "slots"]


class CanBackfill(StaffWithModelPermission):
    """Staff holding both the permission to run a backfill and to see schedules."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return super().has_permission(request, view) and request.user.has_perm("django_celery_beat.view_periodictask")


def refused(exc: backfills.BackfillError) -> Exception:
    if isinstance(exc, backfills.BackfillRefused):
        return ValidationError({"detail": [str(exc)]})
    return Conflict(str(exc))


def dry_run_answer(task: PeriodicTask, plan: backfills.Plan) -> dict[str, Any]:
    shown = [PlannedSlotSerializer(planned).data for planned in plan.slots]
    return {"schedule": task.name, "count": len(plan.slots), "to_run": plan.to_run, "skipped": plan.skipped,
            "slots": shown}  # fmt: skip


class ScheduleBackfill(APIView):
    """POST /api/schedules/{id}/backfill/."""

    permission_classes = [CanBackfill]
    action_perms = {"list": RUN_BACKFILL}  # an APIView's one action

    @extend_schema(request=BackfillRequestSerializer, responses={200: DryRunSerializer, 201: BackfillSerializer})
    def post(self, request: Request, pk: int) -> Response:
        """Run the schedule for every slot from `from` to `to`, as if beat had sent them; a dry
        run answers the slots (those that already ran marked skipped) and writes nothing.
        Refused (400) for an empty or future range, or more slots than BACKFILL_MAX_SLOTS."""
        task = PeriodicTask.objects.filter(pk=pk).first()
        if task is None:
            raise NotFound(f"no schedule {pk}; see /api/schedules/.")
        body = BackfillRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        given = dict(body.validated_data)
        start, end, dry_run = given.pop("from"), given.pop("to"), given.pop("dry_run")
        try:
            if dry_run:
                plan = backfills.plan(task, start, end, **given)
                return Response(dry_run_answer(task, plan))
            with transaction.atomic():
                backfill = backfills.start(task, start, end, by=request.user, via="api", **given)
                audit.record(request.user, "backfill", task, changes=backfills.audited(backfill))
        except backfills.BackfillError as exc:
            raise refused(exc) from None
        return Response(BackfillSerializer(backfill).data, status=status.HTTP_201_CREATED)


class BackfillPages(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class BackfillViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Backfill]):
    """Backfills, newest first (filters: state, schedule id); each one's progress and slots; cancel."""

    permission_classes = [StaffWithModelPermission]
    action_perms = BACKFILL_PERMS
    pagination_class = BackfillPages
    serializer_class = BackfillSerializer

    def get_queryset(self) -> QuerySet[Backfill]:
        found = Backfill.objects.order_by("-created_at", "-pk")
        if state := params.choice(self.request, "state", Backfill.STATES):
            found = found.filter(state=state)
        if self.request.query_params.get("schedule") is not None:
            found = found.filter(periodic_task_id=params.whole_number(self.request, "schedule", 0, 1, 2**63 - 1))
        if self.action == "retrieve":
            found = found.prefetch_related("slots")
        return found

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Backfill]]:
        return BackfillDetailSerializer if self.action == "retrieve" else BackfillSerializer

    @extend_schema(
        parameters=[
            OpenApiParameter("state", str, enum=list(Backfill.STATES)),
            OpenApiParameter("schedule", int, description="A schedule's id."),
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=None, responses=BackfillSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel it: its waiting slots will not run; runs already sent go on. 409 if it is not running."""
        backfill = self.get_object()
        try:
            with transaction.atomic():
                cancelled = backfills.cancel(backfill, by=request.user)
                audit.record(request.user, "cancel", backfill, object_type="backfill",
                             changes={"cancelled_slots": cancelled})  # fmt: skip
        except backfills.BackfillError as exc:
            raise refused(exc) from None
        return Response(BackfillSerializer(backfill).data)
