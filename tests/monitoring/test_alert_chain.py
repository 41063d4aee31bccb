"""The alert chain of README (*Alerts*) end to end, once, with real processes only: the
seeded `System health check` schedule, beat sending it, a worker running it and failing,
the seeded `Check schedules` run (sent by the same beat, run by the same worker) writing a
*failing* incident, and `maintenance.send_alert` runs delivering it to a real local SMTP
server and a real local webhook receiver. Only those two outside endpoints are ours.

The health check fails deterministically: the worker's HEALTH_DISK_PATH names a directory
that does not exist, so its disk sample raises. (A threshold crossed, HEALTH_DISK_WARN_PERCENT,
makes the check report `warning`, but its run is a SUCCESS: no incident is written for it.)
"""

from __future__ import annotations

import email
import json
import threading
from collections.abc import Iterator
from email import policy as email_policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypedDict

import pytest
from aiosmtpd.controller import Controller
from django.core.management import call_command
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app.models import Incident
from scheduler_app.monitoring import alerts
from tests.ports import free_port, release
from tests.processes import beat, wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)
HEALTH, CHECK = "maintenance.system_health_check", "maintenance.check_schedules"


class WorkerEnv(TypedDict):
    """The worker's environment (a TypedDict: `**` of it fills no `concurrency`)."""

    HEALTH_DISK_PATH: str
    ALERT_EMAILS: str
    EMAIL_HOST: str
    EMAIL_PORT: str
    ALERT_WEBHOOK_URL: str


class Inbox:
    """An aiosmtpd handler that keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(email.message_from_bytes(envelope.content, policy=email_policy.default))
        return "250 Message accepted"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()
    release(port)


class Receiver(ThreadingHTTPServer):
    bodies: list[dict[str, Any]]


class ReceiverHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        content = self.rfile.read(int(self.headers["Content-Length"]))
        server = self.server
        assert isinstance(server, Receiver)  # noqa: S101  (served by the `webhook` fixture)
        server.bodies.append({"headers": dict(self.headers), "json": json.loads(content)})
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: the test asserts on what was received."""


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    server = Receiver(("127.0.0.1", 0), ReceiverHandler)
    server.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def only_health_and_checks_every_two_seconds() -> None:
    """The seeded schedules as they are, but for their interval: the health check and the
    checks every 2 s instead of 5 min and 1 min (saved one by one, as the admin saves them);
    the other seeded schedules disabled, so nothing else runs."""
    call_command("seed_default_tasks", verbosity=0)
    fast, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
    for task in PeriodicTask.objects.all():
        if task.task in (HEALTH, CHECK):
            task.interval = fast
        else:
            task.enabled = False
        task.save()


def test_a_failing_health_check_is_alerted_by_mail_and_webhook_through_beat_and_a_worker(
    tmp_path: Path, smtp: tuple[Inbox, int], webhook: Receiver
) -> None:
    inbox, port = smtp
    only_health_and_checks_every_two_seconds()
    health = PeriodicTask.objects.get(task=HEALTH)
    url = f"http://127.0.0.1:{webhook.server_address[1]}/hooks/beatkeeper"
    env: WorkerEnv = {"HEALTH_DISK_PATH": str(tmp_path / "no-such-disk"), "ALERT_EMAILS": "ops@example.com",
           "EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(port), "ALERT_WEBHOOK_URL": url}  # fmt: skip
    with worker(tmp_path, **env), beat(tmp_path):
        failed = wait_for(lambda: TaskResult.objects.filter(task_name=HEALTH, status="FAILURE").first(), 90,
                          "a failed run of the seeded health check")  # fmt: skip
        incident = wait_for(lambda: Incident.objects.filter(periodic_task=health).first(), 45, "the incident")
        wait_for(lambda: inbox.messages and webhook.bodies, 45, "the alert by mail and by webhook")
        wait_for(lambda: all(Incident.objects.get(pk=incident.pk).deliveries[c]["status"] == "sent"
                             for c in alerts.CHANNELS), 60, "the deliveries recorded")  # fmt: skip
    assert failed.periodic_task_name == health.name  # sent by beat for the seeded schedule
    assert "FileNotFoundError" in (failed.traceback or "")
    assert incident.kind == Incident.FAILING
    assert incident.detail["last_error"].startswith("FileNotFoundError: ")
    assert "No such file or directory" in incident.detail["last_error"]
    line = alerts.subject(incident)
    assert line.startswith(f"{health.name} is failing: ") and "FileNotFoundError" in line
    (message,) = inbox.messages
    assert message["Subject"] == f"[Beatkeeper] {line}"
    assert message["To"] == "ops@example.com"
    assert line in message.get_content()
    (call,) = webhook.bodies
    sent = call["json"]
    assert (sent["incident"], sent["kind"], sent["subject"]) == (incident.pk, "failing", line)
    assert sent["schedule"] == {"id": health.pk, "name": health.name}
    assert call["headers"]["X-Beatkeeper-Delivery"] == str(incident.pk)
    assert Incident.objects.count() == 1  # staying failing wrote nothing more
    runs = TaskResult.objects.filter(task_name=alerts.SEND_TASK)
    assert sorted(runs.values_list("status", flat=True)) == ["SUCCESS", "SUCCESS"]  # one run per channel
