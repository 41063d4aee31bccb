"""/api/dead-letters/: the messages workers set aside instead of running
(scheduler_app/runs/poison.py); read, retry (a new run) or discard them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from redis.exceptions import RedisError
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from scheduler_app import audit, services
from scheduler_app.api import params
from scheduler_app.api.permissions import DEAD_LETTER_PERMS, StaffWithModelPermission
from scheduler_app.api.serializers import RunCreatedSerializer
from scheduler_app.api.views import BrokerUnavailable, refused
from scheduler_app.runs import dead_letters
from scheduler_app.runs.dead_letters import DeadLetter

MAX_LIMIT = 500


class DeadLetterSerializer(serializers.Serializer[DeadLetter]):
    id = serializers.CharField()
    task = serializers.CharField()
    task_id = serializers.CharField(help_text="The run it was; its FAILURE row says why.")
    reason = serializers.CharField()
    set_aside_at = serializers.SerializerMethodField()
    worker = serializers.CharField()
    deliveries = serializers.IntegerField(help_text="Hand-offs to a worker process, this one included.")
    queue = serializers.CharField()

    def get_set_aside_at(self, letter: DeadLetter) -> str:
        return dt.datetime.fromtimestamp(letter.set_aside_at, dt.UTC).isoformat()


class DeadLetterDetailSerializer(DeadLetterSerializer):
    """The whole message: headers (with the `beatkeeper` run context), properties, where it
    was delivered, and its body as it came (JSON text: [args, kwargs, embed])."""

    headers = serializers.DictField()
    properties = serializers.DictField()
    delivery = serializers.DictField()
    content_type = serializers.CharField()
    content_encoding = serializers.CharField()
    body = serializers.CharField()


class DeadLetterPage(serializers.Serializer[dict[str, Any]]):
    count = serializers.IntegerField()
    results = DeadLetterSerializer(many=True)


def redis_down(exc: RedisError) -> BrokerUnavailable:
    return BrokerUnavailable(f"Redis did not answer ({exc}); the dead letters cannot be read now.")


class DeadLetterViewSet(viewsets.ViewSet):
    """Dead letters, newest first; each one's whole message; retry; discard."""

    permission_classes = [StaffWithModelPermission]
    action_perms = DEAD_LETTER_PERMS
    lookup_value_regex = "[0-9a-f]{32}"

    @extend_schema(
        parameters=[
            OpenApiParameter("offset", OpenApiTypes.INT, description="Skip this many (newest first)."),
            OpenApiParameter(
                "limit", OpenApiTypes.INT, description=f"At most this many (default 50, at most {MAX_LIMIT})."
            ),
        ],
        responses=DeadLetterPage,
    )
    def list(self, request: Request) -> Response:
        offset = params.whole_number(request, "offset", 0, 0, 10**9)
        limit = params.whole_number(request, "limit", 50, 0, MAX_LIMIT)
        client = dead_letters.client()
        try:
            letters, count = dead_letters.page(offset, limit, client), dead_letters.count(client)
        except RedisError as exc:
            raise redis_down(exc) from None
        return Response({"count": count, "results": [DeadLetterSerializer(one).data for one in letters]})

    @extend_schema(responses=DeadLetterDetailSerializer)
    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        return Response(DeadLetterDetailSerializer(self.letter(pk)).data)

    @extend_schema(request=None, responses={202: RunCreatedSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        """Send its task again as a new run (trigger `retry`, `retry_of` the run it was); the
        dead letter goes once the run is queued. Refused (409) if its arguments are beyond the
        limits the doors keep (a message nested too deep stays a dead letter)."""
        letter = self.letter(pk)
        try:
            run_id = services.retry_dead_letter(letter.id, by=request.user)
        except services.ServiceError as exc:
            raise refused(exc) from None
        audit.record(request.user, "retry", None, object_type="dead letter", object_id=letter.id,
                     changes={"run": run_id, "task": letter.task, "retry_of": letter.task_id})  # fmt: skip
        return Response({"run": run_id}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={204: None})
    @action(detail=True, methods=["post"])
    def discard(self, request: Request, pk: str | None = None) -> Response:
        """Drop it for good: its run stays FAILURE, and is never run."""
        letter = self.letter(pk)
        try:
            services.discard_dead_letter(letter.id)
        except services.ServiceError as exc:
            raise refused(exc) from None
        audit.record(request.user, "discard", None, object_type="dead letter", object_id=letter.id,
                     changes={"task": letter.task, "run": letter.task_id, "reason": letter.reason})  # fmt: skip
        return Response(status=status.HTTP_204_NO_CONTENT)

    def letter(self, pk: str | None) -> DeadLetter:
        try:
            found = dead_letters.get(str(pk), dead_letters.client())
        except RedisError as exc:
            raise redis_down(exc) from None
        if found is None:
            raise NotFound(f"no dead letter {pk!r}: it was retried or discarded, or never was; see /api/dead-letters/.")
        return found
