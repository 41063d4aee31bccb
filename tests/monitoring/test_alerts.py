"""Built-in alerts (scheduler_app.monitoring.alerts): incidents on each change of a schedule's health,
auto-pause, and delivery to a real local SMTP server and a real local HTTP server."""

from __future__ import annotations

import datetime as dt
import email
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from email import policy as email_policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
import time_machine
from aiosmtpd.controller import Controller
from celery import current_app
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from project import env
from scheduler_app import services
from scheduler_app.models import Incident, ScheduleChange, ScheduleHealth, SchedulePolicy
from scheduler_app.monitoring import alerts
from scheduler_app.monitoring import health as monitoring
from scheduler_app.runs.history import run_context
from tests.ports import free_port
from tests.processes import beat, wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)
START = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)
SECRET = "s3cret-for-tests"


# --- Real local servers ----------------------------------------------------------------


class Inbox:
    """An aiosmtpd handler that keeps each message, or refuses recipients with `refuse`."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.refuse = ""  # e.g. "550 no such user"
        self.port = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:  # noqa: N802
        if self.refuse:
            return self.refuse
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(email.message_from_bytes(envelope.content, policy=email_policy.default))
        return "250 Message accepted"

    def subjects(self) -> list[str]:
        return [str(message["Subject"]) for message in self.messages]


@pytest.fixture
def smtp() -> Iterator[Inbox]:
    inbox = Inbox()
    inbox.port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    yield inbox
    controller.stop()


class Hook:
    """What the local webhook endpoint received; `answers` are the statuses it gives first."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.calls: list[dict[str, Any]] = []
        self.answers: list[int] = []

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(call["body"]) for call in self.calls]


class HookServer(ThreadingHTTPServer):
    hook: Hook


class HookHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        hook = cast(HookServer, self.server).hook  # the `hook` fixture serves this handler from a HookServer
        content = self.rfile.read(int(self.headers["Content-Length"]))
        status = hook.answers.pop(0) if hook.answers else 200
        hook.calls.append({"path": self.path, "headers": dict(self.headers), "body": content, "status": status})
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"thanks" if status < 400 else b"broken")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: the test asserts on what was received."""


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = HookServer(("127.0.0.1", 0), HookHandler)
    server.hook = Hook(f"http://127.0.0.1:{server.server_address[1]}/hooks/beatkeeper")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.hook
    server.shutdown()
    server.server_close()


def signed(call: dict[str, Any]) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), call["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(call["headers"].get(alerts.SIGNATURE_HEADER, ""), expected)


# --- Helpers ---------------------------------------------------------------------------


def every_ten_minutes(name: str = "ten", **policy: Any) -> PeriodicTask:
    interval, _ = IntervalSchedule.objects.get_or_create(every=10, period=IntervalSchedule.MINUTES)
    task = PeriodicTask.objects.create(name=name, task="maintenance.log_statistics", interval=interval)
    if policy:
        SchedulePolicy.objects.create(periodic_task=task, **policy)
    return task


def ran(name: str, at: dt.datetime, status: str = "SUCCESS", error: str = "") -> None:
    result = json.dumps({"exc_type": "ValueError", "exc_message": [error], "exc_module": "builtins"}) if error else ""
    row = TaskResult.objects.create(task_id=str(uuid.uuid4()), periodic_task_name=name, status=status, result=result)
    TaskResult.objects.filter(pk=row.pk).update(date_created=at, date_started=at, date_done=at)  # not auto_now


def kinds(task: PeriodicTask) -> list[str]:
    return [incident.kind for incident in Incident.objects.filter(periodic_task=task).order_by("at", "pk")]


# --- Transitions and incidents ---------------------------------------------------------


def test_it_writes_one_incident_when_late_none_while_it_stays_late_and_one_when_it_recovers() -> None:
    with time_machine.travel(START, tick=False) as clock:
        task = every_ten_minutes()
        for minute in (12, 14):  # slot 12:10, grace 5 min: on time still
            clock.move_to(START + minute * MINUTE)
            monitoring.check_schedules()
        assert kinds(task) == []
        for minute in (16, 17, 18, 25, 40):  # late, and staying late across later slots too
            clock.move_to(START + minute * MINUTE)
            monitoring.check_schedules()
        assert kinds(task) == ["late"]
        late = Incident.objects.get(periodic_task=task)
        assert late.at == START + 16 * MINUTE and late.schedule_name == "ten"
        assert late.detail["expected_at"] == (START + 10 * MINUTE).isoformat()
        assert (late.detail["grace_seconds"], late.detail["before"], late.detail["last_started_at"]) == (
            300,
            "ok",
            None,
        )
        assert late.deliveries == {}  # no channel configured: nothing queued
        assert alerts.subject(late) == "ten is late: expected run at 2026-06-01 12:10:00 UTC has not started"

        ran(task.name, START + 41 * MINUTE)
        for minute in (42, 43):
            clock.move_to(START + minute * MINUTE)
            monitoring.check_schedules()
        assert kinds(task) == ["late", "recovered"]
        recovered = alerts.recent_incidents(task)[0]
        assert (recovered.detail["before"], recovered.detail["since"]) == ("late", (START + 16 * MINUTE).isoformat())
        assert alerts.subject(recovered) == "ten recovered"
        assert "It was late since 2026-06-01 12:16:00 UTC; its runs start on time again." in alerts.body(recovered)


def test_it_uses_the_schedules_own_grace() -> None:
    with time_machine.travel(START, tick=False) as clock:
        task = every_ten_minutes(late_after=30)
        clock.move_to(START + 10 * MINUTE + dt.timedelta(seconds=29))
        assert monitoring.check_schedules()["late"] == 0
        clock.move_to(START + 10 * MINUTE + dt.timedelta(seconds=31))
        assert monitoring.check_schedules()["late"] == 1
        assert Incident.objects.get(periodic_task=task).detail["grace_seconds"] == 30


def test_it_alerts_after_the_schedules_number_of_failures_and_on_late_after_failing() -> None:
    with time_machine.travel(START, tick=False) as clock:
        task = every_ten_minutes(alert_after_failures=3)
        for minute in (1, 2):
            ran(task.name, START + minute * MINUTE, "FAILURE", error=f"bad input {minute}")
        clock.move_to(START + 3 * MINUTE)
        monitoring.check_schedules()
        assert (ScheduleHealth.objects.get(pk=task.pk).state, kinds(task)) == ("ok", [])  # 2 of 3: not yet

        ran(task.name, START + 4 * MINUTE, "FAILURE", error="bad input 4")
        for minute in (5, 6):
            clock.move_to(START + minute * MINUTE)
            monitoring.check_schedules()
        assert kinds(task) == ["failing"]
        failing = Incident.objects.get(periodic_task=task)
        assert (failing.detail["failures"], failing.detail["last_error"]) == (3, "ValueError: bad input 4")
        assert failing.auto_paused is False
        assert alerts.subject(failing) == "ten is failing: 3 failed runs in a row, last error: ValueError: bad input 4"

        clock.move_to(START + 26 * MINUTE)  # 12:10 and 12:20 never started either: failing, then late
        monitoring.check_schedules()
        ran(task.name, START + 27 * MINUTE)
        clock.move_to(START + 28 * MINUTE)
        monitoring.check_schedules()
        assert kinds(task) == ["failing", "late", "recovered"]


def test_it_auto_pauses_after_the_schedules_number_of_failures_once() -> None:
    with time_machine.travel(START, tick=False) as clock:
        task = every_ten_minutes(pause_after_failures=3)
        ran(task.name, START + MINUTE, "FAILURE", error="down")
        clock.move_to(START + 2 * MINUTE)
        monitoring.check_schedules()
        assert kinds(task) == ["failing"]  # alert_after_failures defaults to 1

        for minute in (3, 4):
            ran(task.name, START + minute * MINUTE, "FAILURE", error="still down")
        clock.move_to(START + 5 * MINUTE)
        monitoring.check_schedules()
        task.refresh_from_db()
        policy = SchedulePolicy.objects.get(pk=task.pk)
        assert task.enabled is False
        assert (policy.pause_note, policy.paused_by, policy.paused_at) == ("auto-paused after 3 failures", None,
                                                                            START + 5 * MINUTE)  # fmt: skip
        assert ScheduleChange.objects.filter(kind=ScheduleChange.TASK, object_id=task.pk).exists()  # beat sees it
        paused = alerts.recent_incidents(task, limit=1)[0]
        assert (paused.kind, paused.auto_paused) == ("failing", True)
        assert paused.detail["pause_note"] == "auto-paused after 3 failures"
        assert "The schedule was paused (auto-paused after 3 failures)" in alerts.body(paused)
        assert not ScheduleHealth.objects.filter(pk=task.pk).exists()

        clock.move_to(START + 6 * MINUTE)
        services.resume(task, by=None)  # the operator fixed it: old failures do not pause it again
        clock.move_to(START + 7 * MINUTE)
        monitoring.check_schedules()
        task = PeriodicTask.objects.get(pk=task.pk)  # re-read (mypy keeps narrowing `enabled` across refresh_from_db())
        assert task.enabled is True
        assert kinds(task) == ["failing", "failing"]
        assert ScheduleHealth.objects.get(pk=task.pk).state == "ok"


def test_recent_incidents_are_the_schedules_newest_first_and_bounded() -> None:
    task, other = every_ten_minutes("a"), every_ten_minutes("b")
    for minute in range(5):
        Incident.objects.create(periodic_task=task, schedule_name="a", kind="late", at=START + minute * MINUTE)
    Incident.objects.create(periodic_task=other, schedule_name="b", kind="late", at=START)
    listed = alerts.recent_incidents(task, limit=3)
    assert [incident.at for incident in listed] == [START + m * MINUTE for m in (4, 3, 2)]


# --- Delivery, in this process, to real local servers ---------------------------------


def incident(deliveries: dict[str, Any] | None = None) -> Incident:
    task = every_ten_minutes("nightly export")
    detail = {"failures": 2, "last_error": "ValueError: bad row", "last_run_id": "abc", "before": "ok"}
    return Incident.objects.create(periodic_task=task, schedule_name=task.name, kind="failing", at=START,
                                   detail=detail, deliveries=deliveries or {})  # fmt: skip


def test_it_mails_through_smtp_and_posts_a_signed_webhook(smtp: Inbox, hook: Hook) -> None:
    row = incident()
    with override_settings(EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend", EMAIL_HOST="127.0.0.1",
                           EMAIL_PORT=smtp.port, ALERT_EMAILS=["ops@example.com", "oncall@example.com"],
                           ALERT_WEBHOOK_URL=hook.url, ALERT_WEBHOOK_SECRET=SECRET,
                           ALERT_BASE_URL="https://bk.example.com"):  # fmt: skip
        for channel in alerts.CHANNELS:
            assert alerts.deliver(row.pk, channel, attempt=1, last_attempt=False)["status"] == "sent"
            assert alerts.deliver(row.pk, channel, attempt=1, last_attempt=False)["reason"] == "already sent"
    (message,) = smtp.messages
    assert message["Subject"] == "[Beatkeeper] nightly export is failing: 2 failed runs in a row, last error: " \
        "ValueError: bad row"  # fmt: skip
    assert message["To"] == "ops@example.com, oncall@example.com"
    link = f"https://bk.example.com/admin/django_celery_beat/periodictask/{row.periodic_task_id}/change/"
    assert f"Schedule: {link}" in message.get_content()
    (call,) = hook.calls
    assert signed(call) and call["headers"]["X-Beatkeeper-Event"] == "failing"
    sent = json.loads(call["body"])
    assert sent["schedule"] == {"id": row.periodic_task_id, "name": "nightly export"}
    assert (sent["kind"], sent["at"], sent["url"], sent["detail"]["failures"]) == (
        "failing",
        START.isoformat(),
        link,
        2,
    )
    row.refresh_from_db()
    assert {channel: outcome["status"] for channel, outcome in row.deliveries.items()} == dict.fromkeys(
        alerts.CHANNELS, "sent"
    )


def test_it_tells_a_passing_failure_to_retry_from_a_refusal(smtp: Inbox, hook: Hook) -> None:
    row = incident()
    mail = {"EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend", "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": smtp.port, "ALERT_EMAILS": ["ops@example.com"], "ALERT_WEBHOOK_URL": hook.url}  # fmt: skip
    with override_settings(**mail):
        hook.answers = [503, 404]
        with pytest.raises(alerts.TemporaryDeliveryError, match="503"):
            alerts.deliver(row.pk, "webhook", attempt=1, last_attempt=False)
        assert Incident.objects.get(pk=row.pk).deliveries["webhook"]["status"] == "retrying"
        with pytest.raises(alerts.DeliveryError, match="404"):  # not in RETRY_FOR: refused for good
            alerts.deliver(row.pk, "webhook", attempt=2, last_attempt=False)
        assert Incident.objects.get(pk=row.pk).deliveries["webhook"] == {
            "status": "failed", "error": "webhook answered 404: broken", "attempts": 2}  # fmt: skip

        smtp.refuse = "451 try again later"
        with pytest.raises(alerts.TemporaryDeliveryError):
            alerts.deliver(row.pk, "email", attempt=6, last_attempt=True)
        assert Incident.objects.get(pk=row.pk).deliveries["email"]["status"] == "failed"  # the last attempt
        smtp.refuse = "550 no such user"
        with pytest.raises(alerts.DeliveryError):
            alerts.deliver(row.pk, "email", attempt=1, last_attempt=False)
    with override_settings(**{**mail, "EMAIL_PORT": free_port()}):  # nobody listens: connection refused
        with pytest.raises(alerts.TemporaryDeliveryError, match="Connection"):
            alerts.deliver(row.pk, "email", attempt=1, last_attempt=False)
    assert issubclass(alerts.TemporaryDeliveryError, alerts.RETRY_FOR)
    assert not issubclass(alerts.DeliveryError, alerts.RETRY_FOR)


def test_it_reads_the_alert_settings_and_names_a_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERT_EMAILS", " ops@example.com, oncall@example.com ")
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "https://hooks.example.com/x")
    assert env.emails("ALERT_EMAILS") == ["ops@example.com", "oncall@example.com"]
    assert env.http_url("ALERT_WEBHOOK_URL") == "https://hooks.example.com/x"
    monkeypatch.setenv("ALERT_EMAILS", "ops@example.com,not-an-address")
    with pytest.raises(ImproperlyConfigured, match="ALERT_EMAILS has 'not-an-address'"):
        env.emails("ALERT_EMAILS")
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "ftp://hooks.example.com")
    with pytest.raises(ImproperlyConfigured, match="ALERT_WEBHOOK_URL='ftp://hooks.example.com' is not an http"):
        env.http_url("ALERT_WEBHOOK_URL")


# --- With real processes ---------------------------------------------------------------


def test_a_webhook_answering_500_is_retried_with_the_platforms_backoff(tmp_path: Path, hook: Hook) -> None:
    row = incident({"webhook": {"status": "queued"}})
    hook.answers = [500]
    with worker(tmp_path, concurrency=1, ALERT_WEBHOOK_URL=hook.url, ALERT_WEBHOOK_SECRET=SECRET):
        run_id = current_app.send_task(alerts.SEND_TASK, args=[row.pk, "webhook"]).id

        def delivered() -> dict[str, Any] | None:
            outcome = Incident.objects.get(pk=row.pk).deliveries["webhook"]
            return outcome if outcome["status"] == "sent" else None

        outcome = wait_for(delivered, 60, "the webhook delivered on a retry")
        run = wait_for(lambda: TaskResult.objects.filter(task_id=run_id, status="SUCCESS").first(), 30, "the run")
    assert outcome["attempts"] == 2
    assert [call["status"] for call in hook.calls] == [500, 200]
    assert all(signed(call) for call in hook.calls)
    assert {call["headers"]["X-Beatkeeper-Delivery"] for call in hook.calls} == {str(row.pk)}  # the same delivery
    context = run_context(run)
    assert context["attempt"] == 2 and context["attempts"][0]["state"] == "RETRY"
    assert "webhook answered 500" in context["attempts"][0]["error"]


def test_a_schedule_made_late_by_stopping_its_worker_alerts_once_and_then_recovers(
    tmp_path: Path, smtp: Inbox, hook: Hook, settings: Any
) -> None:
    """The schedule's worker serves the `jobs` queue; another worker, on the default queue,
    sends the alerts. The checks run here (as `maintenance.check_schedules` would)."""
    channels = {"ALERT_EMAILS": "ops@example.com", "EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(smtp.port),
                "ALERT_WEBHOOK_URL": hook.url, "ALERT_WEBHOOK_SECRET": SECRET}  # fmt: skip
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = ["ops@example.com"], hook.url  # this process queues them
    every_two, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
    task = PeriodicTask.objects.create(name="heartbeat job", task="tests.record", interval=every_two, queue="jobs",
                                       args=json.dumps([f"alerts-{uuid.uuid4().hex[:8]}", "tick"]))  # fmt: skip
    SchedulePolicy.objects.create(periodic_task=task, late_after=10)

    def check() -> dict[str, int]:
        return monitoring.check_schedules()

    def started_runs() -> int:
        return TaskResult.objects.filter(periodic_task_name=task.name, date_started__isnull=False).count()

    jobs = ("-Q", "jobs", "--include", "tests.tasks")
    with worker(tmp_path, concurrency=1, **channels), beat(tmp_path):
        with worker(tmp_path, *jobs, concurrency=1):
            wait_for(started_runs, 60, "a run of the schedule")
            assert check()["ok"] == 1
        assert Incident.objects.count() == 0

        wait_for(lambda: check()["late"] == 1, 60, "the schedule late with its worker stopped")
        wait_for(lambda: len(smtp.messages) and len(hook.calls), 60, "the late alert by mail and webhook")
        for _ in range(3):
            assert check()["late"] == 1  # staying late: no second alert
        (late,) = Incident.objects.all()
        assert late.kind == "late"
        assert smtp.subjects() == [f"[Beatkeeper] {alerts.subject(late)}"]
        assert "heartbeat job is late: expected run at " in smtp.subjects()[0]
        assert [(p["kind"], p["schedule"]["name"]) for p in hook.payloads()] == [("late", "heartbeat job")]

        with worker(tmp_path, *jobs, concurrency=1):
            wait_for(lambda: check()["ok"] == 1, 60, "the schedule on time again")
            wait_for(lambda: len(smtp.messages) == 2 and len(hook.calls) == 2, 60, "the recovery alert")
        wait_for(lambda: all(i.deliveries[c]["status"] == "sent" for i in Incident.objects.all()
                             for c in alerts.CHANNELS), 30, "the deliveries recorded")  # fmt: skip
    assert [incident.kind for incident in Incident.objects.order_by("at")] == ["late", "recovered"]
    assert smtp.subjects()[1] == "[Beatkeeper] heartbeat job recovered"
    assert [p["kind"] for p in hook.payloads()] == ["late", "recovered"]
    assert all(signed(call) for call in hook.calls)
    assert [str(message["To"]) for message in smtp.messages] == ["ops@example.com"] * 2
