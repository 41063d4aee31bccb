"""The JSON API: schedules, runs and tasks. Views stay thin: validation is the shared
form's, writes are `scheduler_app.services`', and every write leaves an audit entry."""

from __future__ import annotations

import re
from typing import Any

from celery import current_app
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django_celery_beat.models import PeriodicTask
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from redis.exceptions import RedisError
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, PermissionDenied, ValidationError
from rest_framework.pagination import CursorPagination, PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from scheduler_app import audit, catalog, forms, schedules, selectors, services, versions
from scheduler_app.api import params
from scheduler_app.api import serializers as api
from scheduler_app.api.permissions import RUN_PERMS, SCHEDULE_PERMS, StaffWithModelPermission
from scheduler_app.api.versions import VersionDetailSerializer, VersionSerializer
from scheduler_app.beat import slots
from scheduler_app.models import Run, ScheduleHealth, ScheduleVersion
from scheduler_app.monitoring import alerts
from scheduler_app.runs import ledger
from scheduler_app.runs.history import TRIGGERS
from scheduler_app.runs.policy import task_policy

MAX_NEXT_RUNS = 100
RUN_ID = re.compile(r"[0-9a-fA-F-]{8,64}")  # a Celery task id (a uuid)
PREVIEW = inline_serializer(
    "Preview",
    {"zone": serializers.CharField(), "chosen_by_hash": serializers.CharField(),
     "runs": serializers.ListField(child=serializers.DictField())},
)  # fmt: skip
PREVIEW_PERMS = {
    "preview": "django_celery_beat.view_periodictask",
    "preview_new": "django_celery_beat.view_periodictask",
}


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


class BrokerUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "broker_unavailable"


def refused(exc: services.ServiceError) -> APIException:
    """A service's refusal as the API's answer: the broker down is a 503, the rest a 409."""
    if isinstance(exc, services.BrokerUnavailable):
        return BrokerUnavailable(str(exc))
    if isinstance(exc, services.ArgumentsRefused):
        return ValidationError({"kwargs": [str(exc)]})
    return Conflict(str(exc))


def version_or_404(task: PeriodicTask, number: str) -> ScheduleVersion:
    found = versions.get(task, int(number)) if len(number) <= 9 else None  # beyond: no schedule has that many
    if found is None:
        raise NotFound(f"The schedule has no version {number[:20]}; GET its versions/ for the ones it has.")
    return found


class SchedulePages(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class RunPages(CursorPagination):
    """Newest first, by cursor: no count of the run table, stable under new runs."""

    ordering = ("-date_created", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class ScheduleViewSet(viewsets.ModelViewSet[PeriodicTask]):
    """Schedules: list (filters: enabled, task, queue, health, search), create, read,
    update, delete; pause, resume, run now; the next runs."""

    permission_classes = [StaffWithModelPermission]
    action_perms = {**SCHEDULE_PERMS, **PREVIEW_PERMS}  # a preview writes nothing: who may read may preview
    pagination_class = SchedulePages
    serializer_class = api.ScheduleSerializer

    def get_queryset(self) -> QuerySet[PeriodicTask]:
        tasks: QuerySet[PeriodicTask] = (
            PeriodicTask.objects.select_related(
                "interval", "crontab", "solar", "clocked", "policy__owner", "policy__paused_by", "health"
            )
            .prefetch_related("policy__calendars__exclusions")  # the rules of each next run, not queries per row
            .order_by("name", "pk")
        )
        query = self.request.query_params
        if (enabled := params.choice(self.request, "enabled", ("true", "false"))) is not None:
            tasks = tasks.filter(enabled=enabled == "true")
        if health := params.choice(self.request, "health", ScheduleHealth.STATES):
            tasks = tasks.filter(health__state=health)
        for name, field in (("task", "task"), ("queue", "queue")):
            if query.get(name):
                tasks = tasks.filter(**{field: query[name]})
        if query.get("search"):
            tasks = tasks.filter(name__icontains=query["search"])
        return tasks

    def get_serializer_class(self) -> type[serializers.BaseSerializer[PeriodicTask]]:
        return (
            api.ScheduleWriteSerializer
            if self.action in ("create", "update", "partial_update")
            else self.serializer_class
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("enabled", OpenApiTypes.BOOL),
            OpenApiParameter("task", str),
            OpenApiParameter("queue", str),
            OpenApiParameter("health", str, enum=list(ScheduleHealth.STATES)),
            OpenApiParameter("search", str, description="Part of the name."),
        ],
        responses=api.ScheduleSerializer(many=True),
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=api.ScheduleWriteSerializer, responses={201: api.ScheduleSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().create(request, *args, **kwargs)

    @extend_schema(request=api.ScheduleWriteSerializer, responses=api.ScheduleSerializer)
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().update(request, *args, **kwargs)

    @extend_schema(request=api.ScheduleWriteSerializer, responses=api.ScheduleSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().partial_update(request, *args, **kwargs)

    @transaction.atomic  # the write and its audit entry, together
    def perform_create(self, serializer: serializers.BaseSerializer[PeriodicTask]) -> None:
        task = serializer.save()
        audit.record(self.request.user, "create", task, changes=audit.snapshot(task))

    @transaction.atomic
    def perform_update(self, serializer: serializers.BaseSerializer[PeriodicTask]) -> None:
        before = audit.snapshot(serializer.instance)
        task = serializer.save()
        audit.record(self.request.user, "update", task, changes=audit.diff(before, audit.snapshot(task)))

    def perform_destroy(self, task: PeriodicTask) -> None:
        with transaction.atomic():
            audit.record(self.request.user, "delete", task, changes=audit.snapshot(task))
            task.delete()

    @extend_schema(request=api.PauseSerializer, responses=api.ScheduleSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        """Pause the schedule, with an optional note saying why."""
        task = self.get_object()
        body = api.PauseSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        note = body.validated_data.get("note", "")
        services.pause(task, by=request.user, note=note)
        audit.record(request.user, "pause", task, changes={"note": note})
        return Response(api.ScheduleSerializer(self.get_object()).data)

    @extend_schema(request=None, responses=api.ScheduleSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        """Resume the schedule from its next slot."""
        task = self.get_object()
        services.resume(task, by=request.user)
        audit.record(request.user, "resume", task)
        return Response(api.ScheduleSerializer(self.get_object()).data)

    @extend_schema(responses=VersionSerializer(many=True))
    @action(detail=True, methods=["get"])
    def versions(self, request: Request, pk: str | None = None) -> Response:
        """The schedule's versions, newest first: who, when, through which door, what changed."""
        task = self.get_object()
        return Response(VersionSerializer(versions.of(task), many=True).data)

    @extend_schema(responses=VersionDetailSerializer, operation_id="schedules_version_retrieve")
    @action(detail=True, methods=["get"], url_path=r"versions/(?P<number>\d+)", url_name="version")
    def version(self, request: Request, pk: str | None = None, number: str = "") -> Response:
        """One version whole (`snapshot`), and how today's schedule differs from it (`differs_now`)."""
        task = self.get_object()
        found = version_or_404(task, number)
        data = VersionDetailSerializer(found).data
        data["differs_now"] = [{"field": d.field, "then": d.then, "now": d.now} for d in versions.compare(found, task)]
        return Response(data)

    @extend_schema(request=None, responses=api.ScheduleSerializer, operation_id="schedules_version_restore")
    @action(detail=True, methods=["post"], url_path=r"versions/(?P<number>\d+)/restore", url_name="version-restore")
    def restore(self, request: Request, pk: str | None = None, number: str = "") -> Response:
        """Put that version's schedule and policy back (itself a new version). 409, saying why, if
        it cannot be: a calendar, pool or owner gone, its name taken, its task no longer registered."""
        task = self.get_object()
        found = version_or_404(task, number)
        try:
            versions.restore(task, found, by=request.user, via="api")
        except versions.RestoreRefused as exc:
            raise Conflict(str(exc)) from None
        return Response(api.ScheduleSerializer(self.get_object()).data)

    @extend_schema(request=api.RunNowSerializer, responses={202: api.RunCreatedSerializer})
    @action(detail=True, methods=["post"])
    def run(self, request: Request, pk: str | None = None) -> Response:
        """Run the schedule now with all its options; `args` / `kwargs` replace its own for this run."""
        task = self.get_object()
        body = api.RunNowSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        given = sorted(field for field in ("args", "kwargs") if field in body.validated_data)
        if given and not request.user.has_perm("django_celery_beat.change_periodictask"):
            raise PermissionDenied(  # an Operator runs the schedule as it is; other arguments are an Editor's
                f"Running with other {' and '.join(given)} needs the permission to change the schedule "
                "(Change periodic task); without it, run it with its own (an empty body)."
            )
        try:
            run_id = services.run_now(task, by=request.user, trigger="api", **body.validated_data)
        except services.ServiceError as exc:
            raise refused(exc) from None
        audit.record(request.user, "run", task, changes={"run": run_id, **body.validated_data})
        return Response({"run": run_id, "warnings": services.run_warnings()}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[OpenApiParameter("count", int, description=f"1 to {MAX_NEXT_RUNS}; default 5.")],
        responses=inline_serializer(
            "NextRuns",
            {"zone": serializers.CharField(), "runs": serializers.ListField(child=serializers.DictField())},
        ),
    )
    @action(detail=True, methods=["get"], url_path="next-runs")
    def next_runs(self, request: Request, pk: str | None = None) -> Response:
        """The next runs in the schedule's zone and in UTC, daylight saving changes marked."""
        count = params.whole_number(request, "count", 5, 1, MAX_NEXT_RUNS)
        task = self.get_object()
        try:
            table = schedules.table_of(task)
            verdicts = schedules.explain(task, count, table=table)
        except (slots.InvalidSchedule, ValueError, OverflowError) as exc:
            raise Conflict(f"the schedule cannot be computed: {exc}; fix it first.") from None
        rows = api.run_rows(forms.preview_rows(verdicts, table.zone))
        return Response({"zone": table.zone, "reason": "" if rows else schedules.why_not(task),
                         "chosen_by_hash": forms.hashed_words(task.crontab, task.name), "runs": rows})  # fmt: skip

    @extend_schema(request=api.ScheduleWriteSerializer, responses=PREVIEW, operation_id="schedules_preview_new")
    @action(detail=False, methods=["post"], url_path="preview")
    def preview_new(self, request: Request) -> Response:
        """What beat would send for this schedule (a create's body), nothing saved: the next
        slots with their send moments, jitter, skipped and moved slots, and the H values."""
        return self.answer_preview(api.ScheduleWriteSerializer(data=request.data), None)

    @extend_schema(request=api.ScheduleWriteSerializer, responses=PREVIEW, operation_id="schedules_preview_changed")
    @action(detail=True, methods=["post"], url_path="preview")
    def preview(self, request: Request, pk: str | None = None) -> Response:
        """What beat would send for the schedule with these changes (a PATCH's body, its policy
        too), nothing saved."""
        task = self.get_object()
        return self.answer_preview(api.ScheduleWriteSerializer(task, data=request.data, partial=True), task)

    def answer_preview(self, body: api.ScheduleWriteSerializer, task: PeriodicTask | None) -> Response:
        body.is_valid(raise_exception=True)
        try:
            shown = body.validated_data["form"].preview(editing=task, given=body.validated_data["rules"])
        except (slots.InvalidSchedule, ValueError, OverflowError) as exc:
            raise ValidationError({"non_field_errors": [str(exc)]}) from None
        return Response({"zone": shown["zone"], "chosen_by_hash": shown["hashed"], "runs": api.run_rows(shown["runs"])})

    @extend_schema(
        parameters=[OpenApiParameter("limit", int, description="1 to 200; default 20.")],
        responses=inline_serializer("Incident", {"kind": serializers.CharField()}, many=True),
    )
    @action(detail=True, methods=["get"])
    def incidents(self, request: Request, pk: str | None = None) -> Response:
        """The schedule's incident log, newest first: late, failing, recovered, and what was sent."""
        limit = params.whole_number(request, "limit", 20, 1, 200)
        found = alerts.recent_incidents(self.get_object(), limit)
        return Response([{**alerts.payload(incident), "deliveries": incident.deliveries} for incident in found])


class RunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Run]):
    """Runs, newest first: filters state, schedule, task, trigger, since; retry, revoke."""

    permission_classes = [StaffWithModelPermission]
    action_perms = RUN_PERMS
    pagination_class = RunPages
    serializer_class = api.RunSerializer

    def get_queryset(self) -> QuerySet[Run]:
        runs = Run.objects.all()
        query = self.request.query_params
        if state := params.choice(self.request, "state", selectors.RUN_STATES):
            runs = runs.filter(status=state)
        if query.get("schedule"):
            runs = runs.filter(periodic_task_name=schedule_name(query["schedule"]))
        if query.get("task"):
            runs = runs.filter(task_name=query["task"])
        if trigger := params.choice(self.request, "trigger", TRIGGERS):
            runs = selectors.with_trigger(runs, trigger)
        if since := params.choice(self.request, "since", list(selectors.SINCE)):
            runs = runs.filter(date_created__gte=timezone.now() - selectors.SINCE[since])
        return runs

    def get_object(self) -> Run:
        """A run by its row id or its run id (the uuid `run/` and `retry/` answer); a run
        the recorder has not written yet is answered from Redis, with `id` null."""
        key = str(self.kwargs.get(self.lookup_url_kwarg or self.lookup_field, ""))
        runs = self.filter_queryset(self.get_queryset())
        run = runs.filter(pk=int(key)).first() if key.isascii() and key.isdecimal() else None
        if run is None and RUN_ID.fullmatch(key):
            run = runs.filter(task_id=key).first()
            if run is None:
                try:
                    found = ledger.latest(key)
                except RedisError:  # Redis away: only written runs can be found
                    found = None
                run = found.as_row(Run) if found is not None else None
        if run is None:
            raise NotFound(f"no run {key!r}: give a run's id (a number) or its run id (a uuid).")
        self.check_object_permissions(self.request, run)
        return ledger.fresh(run)

    @extend_schema(
        parameters=[
            OpenApiParameter("state", str, enum=selectors.RUN_STATES),
            OpenApiParameter("schedule", str, description="A schedule's id or name."),
            OpenApiParameter("task", str),
            OpenApiParameter("trigger", str, enum=list(TRIGGERS)),
            OpenApiParameter("since", str, enum=list(selectors.SINCE)),
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=None, responses={202: api.RunCreatedSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        """Run it again with the same arguments: a new run, linked by `retry_of`."""
        run = self.get_object()
        try:
            new_id = services.retry_run(run, by=request.user)
        except services.ServiceError as exc:
            raise refused(exc) from None
        audit.record(request.user, "retry", run, object_type="run", changes={"run": new_id})
        return Response({"run": new_id, "warnings": services.run_warnings()}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses=api.RunSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        """Stop a queued or running run."""
        run = self.get_object()
        try:
            services.revoke_run(run, by=request.user)
        except services.ServiceError as exc:
            raise refused(exc) from None
        audit.record(request.user, "revoke", run, object_type="run")
        return Response(api.RunSerializer(self.get_object()).data)


def schedule_name(given: str) -> str:
    """The `schedule` filter's name: a schedule's id (a number) or its name. A name no schedule
    has is still taken while runs carry it (a schedule deleted since); anything else is a 400."""
    if given.isascii() and given.isdecimal():
        name = PeriodicTask.objects.filter(pk=int(given)).values_list("name", flat=True).first()
        if name is not None:
            return str(name)
    if PeriodicTask.objects.filter(name=given).exists() or Run.objects.filter(periodic_task_name=given).exists():
        return given
    raise ValidationError({"schedule": [f"no schedule {given!r}: give a schedule's id (a number) or its name "
                                        "(GET /api/schedules/)."]})  # fmt: skip


class TaskList(APIView):
    """The registered tasks: name, docstring, policy defaults and default schedule."""

    permission_classes = [StaffWithModelPermission]
    action_perms = {"list": "django_celery_beat.view_periodictask"}

    @extend_schema(responses=inline_serializer("Task", {"name": serializers.CharField()}, many=True))
    def get(self, request: Request) -> Response:
        defaults = {d.task: d for d in catalog.definitions()}
        return Response(
            [task_data(name, current_app.tasks[name], defaults.get(name)) for name in services.registered_tasks()]
        )


def task_data(name: str, task: Any, definition: catalog.TaskDefinition | None) -> dict[str, Any]:
    schedule = None
    if definition is not None:
        schedule = {"kind": type(definition.schedule).__name__.lower(), **vars(definition.schedule)}
    return {
        "name": name,
        "doc": (getattr(task, "__doc__", None) or "").strip(),
        "policy": task_policy(name).as_dict(),
        "default_schedule": schedule,
        "default_kwargs": dict(definition.kwargs) if definition else {},
        "queue": definition.queue if definition else None,
    }


@csrf_exempt  # it changes nothing; a write to a wrong path gets the JSON 404, not the CSRF page
def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    return JsonResponse(
        {"detail": f"no API endpoint at {request.path}; see /api/ (the index) and /api/docs/."}, status=404
    )
