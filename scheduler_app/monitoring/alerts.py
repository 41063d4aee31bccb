"""Built-in alerts: a dead man's switch for every schedule.

`monitoring.check_schedules` hands each change of a schedule's health (it became late,
it became failing, it recovered, or it was auto-paused) to `record`, which writes one
`Incident` per change and, once the pass's transaction commits, queues one
`maintenance.send_alert` run per configured channel. So a schedule that stays late sends
nothing more, and an alert is never sent for a state that was rolled back.

Channels come from the environment: e-mail to `ALERT_EMAILS` through Django's mail
backend, and a JSON POST to `ALERT_WEBHOOK_URL` (signed with HMAC-SHA256 when
`ALERT_WEBHOOK_SECRET` is set). A delivery that fails for a passing reason (connection
refused or reset, a timeout, HTTP 5xx or 429, an SMTP 4xx) is retried by the platform's
backoff (`retry_for`); one the other end refuses for good (HTTP 4xx, SMTP 5xx) is not.
Each attempt's outcome is written to `Incident.deliveries[channel]`, and a channel
already `sent` is not sent again when its message is delivered twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import smtplib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from celery import current_app
from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app import services
from scheduler_app.models import Incident, ScheduleHealth
from scheduler_app.runs import states
from scheduler_app.runs.runtime import TRANSIENT_ERRORS

logger = logging.getLogger(__name__)

SEND_TASK = "maintenance.send_alert"
EMAIL, WEBHOOK = "email", "webhook"
CHANNELS = (EMAIL, WEBHOOK)
WEBHOOK_TIMEOUT = 10  # seconds to connect and to read the answer
SIGNATURE_HEADER = "X-Beatkeeper-Signature"
ERROR_LIMIT = 500  # characters of a run's error quoted in a message
RECENT_INCIDENTS = 20


class DeliveryError(Exception):
    """The other end refused the alert for good (HTTP 4xx, SMTP 5xx): not retried."""


class TemporaryDeliveryError(Exception):
    """The alert did not get through for a passing reason: the platform retries it."""


# What `maintenance.send_alert` retries with backoff (and the platform's own transient errors).
RETRY_FOR: tuple[type[Exception], ...] = (TemporaryDeliveryError, *TRANSIENT_ERRORS)


@dataclass(frozen=True)
class Transition:
    """A schedule whose health changed in this pass, or whose failures reached its pause."""

    task: PeriodicTask
    before: str  # the state the last pass stored (ok for a schedule seen for the first time)
    after: str
    since: dt.datetime | None  # when it entered `before`
    expected_at: dt.datetime | None  # the slot that has not started (late)
    grace: dt.timedelta | None
    failures: int
    last_started: dt.datetime | None
    pause: bool  # failures in a row reached the policy's pause_after_failures

    @property
    def kind(self) -> str:
        if self.after == ScheduleHealth.LATE:
            return Incident.LATE
        if self.after == ScheduleHealth.FAILING or self.before == self.after:  # a pause with no change of state
            return Incident.FAILING
        return Incident.RECOVERED


# --- Writing incidents (called by monitoring inside its transaction) -------------------


def record(transitions: list[Transition], now: dt.datetime) -> list[Incident]:
    """One incident per transition, the auto-pauses they call for, and their alerts queued
    for after the commit. A schedule deleted during the pass is left out."""
    if not transitions:
        return []
    alive = set(PeriodicTask.objects.filter(pk__in=[t.task.pk for t in transitions]).values_list("pk", flat=True))
    transitions = [t for t in transitions if t.task.pk in alive]
    errors = last_errors([t.task for t in transitions if t.failures])
    wanted = channels()
    incidents = []
    for change in transitions:
        note = auto_pause(change)
        detail = incident_detail(change, errors.get(change.task.name), note)
        incidents.append(
            Incident(
                periodic_task=change.task,
                schedule_name=change.task.name,
                kind=change.kind,
                at=now,
                detail=detail,
                auto_paused=bool(note),
                deliveries={channel: {"status": "queued"} for channel in wanted},
            )
        )
    for incident in incidents:  # one by one: transitions are rare, and each needs its id for the queue
        incident.save()
        queue_deliveries(incident, wanted)
    return incidents


def auto_pause(change: Transition) -> str:
    """Pause the schedule through the services (so beat's change log sees it) when its
    failures reached the policy's limit. Returns the pause note, or "" when not paused."""
    if not change.pause:
        return ""
    note = f"auto-paused after {change.failures} failures"
    services.pause(change.task, by=None, note=note)
    logger.warning("schedule %r %s", change.task.name, note)
    return note


def incident_detail(change: Transition, error: dict[str, str] | None, pause_note: str) -> dict[str, Any]:
    """What the messages say, kept with the incident so the log reads the same later."""
    detail: dict[str, Any] = {
        "before": change.before,
        "state": change.after,
        "since": iso(change.since),
        "failures": change.failures,
        "last_started_at": iso(change.last_started),
    }
    if change.after == ScheduleHealth.LATE:
        detail |= {"expected_at": iso(change.expected_at), "grace_seconds": seconds(change.grace)}
    if error and change.failures:
        detail |= {"last_error": error["error"], "last_run_id": error["run_id"]}
    if pause_note:
        detail["pause_note"] = pause_note
    return detail


def last_errors(tasks: list[PeriodicTask]) -> dict[str, dict[str, str]]:
    """Per schedule name, the newest failed run's id and error, in two queries for all."""
    if not tasks:
        return {}
    newest: QuerySet[TaskResult, Any] = TaskResult.objects.filter(
        periodic_task_name=OuterRef("name"), status__in=states.FAILED_STATES
    )
    newest = newest.order_by("-date_created").values("pk")[:1]
    ids = PeriodicTask.objects.filter(pk__in=[t.pk for t in tasks]).annotate(run=Subquery(newest))
    rows = TaskResult.objects.filter(pk__in=[pk for pk in ids.values_list("run", flat=True) if pk])
    return {
        str(row.periodic_task_name): {  # matched by name, so never NULL
            "run_id": row.task_id,
            "error": error_text(row.result, row.traceback),
        }
        for row in rows.only("periodic_task_name", "task_id", "result", "traceback")
    }


def error_text(result: str | None, traceback: str | None) -> str:
    """A run's error in one line: "ValueError: bad input", as stored by the result backend."""
    try:
        value = json.loads(result or "null")
    except ValueError:
        value = result
    if isinstance(value, dict) and value.get("exc_type"):
        message = value.get("exc_message")
        message = " ".join(str(part) for part in message) if isinstance(message, list) else str(message or "")
        text = f"{value['exc_type']}: {message}".rstrip(": ")
    elif traceback:
        text = traceback.strip().splitlines()[-1]
    else:
        text = str(value or "no error recorded")
    return text[:ERROR_LIMIT]


def queue_deliveries(incident: Incident, wanted: list[str]) -> None:
    """One send_alert run per channel, published once the incident is committed. A broker
    that refuses is logged (robust): the pass and its incidents still stand."""
    for channel in wanted:
        transaction.on_commit(
            lambda channel=channel: current_app.send_task(  # type: ignore[misc]  # mypy cannot type a lambda default
                SEND_TASK, args=[incident.pk, channel], retry_policy=services.SEND_RETRY
            ),
            robust=True,
        )


# --- Configuration and messages --------------------------------------------------------


def channels() -> list[str]:
    """The channels the environment configures."""
    wanted = []
    if settings.ALERT_EMAILS:
        wanted.append(EMAIL)
    if settings.ALERT_WEBHOOK_URL:
        wanted.append(WEBHOOK)
    return wanted


def subject(incident: Incident) -> str:
    """One line, for the e-mail subject, chat messages and the incident log."""
    name, detail = incident.schedule_name, incident.detail
    if incident.kind == Incident.LATE:
        return f"{name} is late: expected run at {when(detail.get('expected_at'))} has not started"
    if incident.kind == Incident.FAILING:
        count = detail.get("failures", 0)
        runs = "1 failed run" if count == 1 else f"{count} failed runs in a row"
        line = f"{name} is failing: {runs}"
        if detail.get("last_error"):
            line += f", last error: {detail['last_error']}"
        return line
    return f"{name} recovered"


def body(incident: Incident) -> str:
    """The subject line, then what the operator needs to act: since when, what to check."""
    detail = incident.detail
    lines = [subject(incident) + ".", ""]
    if incident.kind == Incident.LATE:
        lines.append(
            f"Its run due at {when(detail.get('expected_at'))} did not start within "
            f"{detail.get('grace_seconds')} seconds: beat did not send it, or no worker took it."
        )
        lines.append(f"Last run started: {when(detail.get('last_started_at'))}.")
    elif incident.kind == Incident.FAILING:
        lines.append(
            f"Failed runs in a row: {detail.get('failures', 0)}. Last failed run: {detail.get('last_run_id')}."
        )
    else:
        now = (
            "its runs start on time again" if detail.get("before") == ScheduleHealth.LATE else "its last run succeeded"
        )
        lines.append(f"It was {detail.get('before')} since {when(detail.get('since'))}; {now}.")
    if incident.auto_paused:
        lines.append(f"The schedule was paused ({detail.get('pause_note')}); resume it once the cause is fixed.")
    lines += ["", f"Schedule: {admin_link(incident)}", f"At: {when(iso(incident.at))}"]
    return "\n".join(lines)


def payload(incident: Incident) -> dict[str, Any]:
    """The webhook's JSON: stable keys a receiver can route on."""
    return {
        "incident": incident.pk,
        "kind": incident.kind,
        "at": iso(incident.at),
        "schedule": {"id": incident.periodic_task_id, "name": incident.schedule_name},
        "subject": subject(incident),
        "text": body(incident),
        "detail": incident.detail,
        "auto_paused": incident.auto_paused,
        "url": admin_link(incident),
    }


def admin_link(incident: Incident) -> str:
    """The schedule's page in the console, absolute when ALERT_BASE_URL is set."""
    if incident.periodic_task_id is None:
        return "(schedule deleted)"
    try:
        path = reverse("admin:django_celery_beat_periodictask_change", args=[incident.periodic_task_id])
    except NoReverseMatch:
        path = f"/admin/django_celery_beat/periodictask/{incident.periodic_task_id}/change/"
    return settings.ALERT_BASE_URL.rstrip("/") + path


def sign(secret: str, content: bytes) -> str:
    """The signature header's value: "sha256=" and the HMAC-SHA256 of the body, in hex."""
    return "sha256=" + hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()


# --- Delivery (the maintenance.send_alert task) ----------------------------------------


def deliver(incident_id: int, channel: str, *, attempt: int, last_attempt: bool) -> dict[str, Any]:
    """Send one incident through one channel and write the outcome on the incident.
    Raises TemporaryDeliveryError for the platform to retry, DeliveryError when refused."""
    incident = Incident.objects.filter(pk=incident_id).first()
    if incident is None:
        return {"status": "skipped", "reason": "incident deleted"}
    if incident.deliveries.get(channel, {}).get("status") == "sent":  # delivered twice: at least once
        return {"status": "skipped", "reason": "already sent"}
    if channel not in channels():
        return note_delivery(incident_id, channel, {"status": "skipped", "reason": "channel not configured"})
    try:
        SENDERS[channel](incident)
    except TemporaryDeliveryError as exc:
        status = "failed" if last_attempt else "retrying"
        note_delivery(incident_id, channel, {"status": status, "error": str(exc), "attempts": attempt})
        raise
    except DeliveryError as exc:
        note_delivery(incident_id, channel, {"status": "failed", "error": str(exc), "attempts": attempt})
        raise
    except Exception as exc:  # a bug or a time limit: say it failed rather than stay "queued"
        note_delivery(incident_id, channel, {"status": "failed", "error": type(exc).__name__, "attempts": attempt})
        raise
    return note_delivery(incident_id, channel, {"status": "sent", "at": iso(timezone.now()), "attempts": attempt})


def note_delivery(incident_id: int, channel: str, outcome: dict[str, Any]) -> dict[str, Any]:
    """Write one channel's outcome under a row lock: the channels of one incident are
    delivered in parallel and each must not undo the other's write."""
    with transaction.atomic():
        incident = Incident.objects.select_for_update().filter(pk=incident_id).first()
        if incident is not None:
            incident.deliveries = {**incident.deliveries, channel: outcome}
            incident.save(update_fields=["deliveries"])
    return outcome


def send_email(incident: Incident) -> None:
    """Through Django's mail backend (EMAIL_HOST, EMAIL_PORT, ... from the environment)."""
    message = EmailMessage(
        subject=" ".join(f"[Beatkeeper] {subject(incident)}".split())[:250],  # one line: no header injection
        body=body(incident),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=settings.ALERT_EMAILS,
        connection=get_connection(fail_silently=False),
    )
    try:
        message.send()
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        raise (TemporaryDeliveryError if all(400 <= c < 500 for c in codes) else DeliveryError)(
            f"recipients refused: {exc.recipients}"
        ) from None
    except smtplib.SMTPResponseException as exc:
        kind = TemporaryDeliveryError if 400 <= exc.smtp_code < 500 else DeliveryError
        raise kind(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}") from None
    except (smtplib.SMTPException, OSError) as exc:  # disconnected, refused, timed out
        raise TemporaryDeliveryError(f"SMTP {settings.EMAIL_HOST}:{settings.EMAIL_PORT}: {exc!r}") from None


def send_webhook(incident: Incident) -> None:
    """A JSON POST; the body is signed when ALERT_WEBHOOK_SECRET is set."""
    content = json.dumps(payload(incident), sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Beatkeeper-alerts",
        "X-Beatkeeper-Event": incident.kind,
        "X-Beatkeeper-Delivery": str(incident.pk),  # the same on every retry: receivers can drop repeats
    }
    if settings.ALERT_WEBHOOK_SECRET:
        headers[SIGNATURE_HEADER] = sign(settings.ALERT_WEBHOOK_SECRET, content)
    try:
        response = requests.post(
            settings.ALERT_WEBHOOK_URL, data=content, headers=headers, timeout=WEBHOOK_TIMEOUT, allow_redirects=False
        )
    except requests.RequestException as exc:  # connection refused or reset, timeout
        # The exception's text holds the URL, whose path is the secret of many hooks: name the host only.
        host = urlsplit(settings.ALERT_WEBHOOK_URL).hostname
        raise TemporaryDeliveryError(f"webhook at {host}: {type(exc).__name__}") from None
    if 300 <= response.status_code < 400:
        raise DeliveryError(f"webhook answered {response.status_code} (a redirect; give the final URL)")
    if response.status_code >= 500 or response.status_code in (408, 429):
        raise TemporaryDeliveryError(f"webhook answered {response.status_code}")
    if response.status_code >= 400:
        raise DeliveryError(f"webhook answered {response.status_code}: {response.text[:200]}")


SENDERS = {EMAIL: send_email, WEBHOOK: send_webhook}


# --- Reading (the console and the API) -------------------------------------------------


def recent_incidents(task: PeriodicTask | int, limit: int = RECENT_INCIDENTS) -> list[Incident]:
    """A schedule's newest incidents, newest first (one indexed read), for its page."""
    pk = task if isinstance(task, int) else task.pk
    return list(Incident.objects.filter(periodic_task_id=pk).order_by("-at", "-pk")[:limit])


# --- Formatting helpers ----------------------------------------------------------------


def iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat() if moment else None


def seconds(span: dt.timedelta | None) -> int | None:
    return int(span.total_seconds()) if span is not None else None


def when(value: str | None) -> str:
    """An ISO time as operators read it, in UTC; "never" for none."""
    if not value:
        return "never"
    return dt.datetime.fromisoformat(value).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
