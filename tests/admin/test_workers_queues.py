"""The Workers and Queues pages against a real worker, the real broker and Celery's remote
control: what they list, each control and who may use it, purge and what it does to runs."""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import time_machine
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django_celery_results.models import TaskResult

from scheduler_app import backlog, broker, fleet, services
from scheduler_app.admin import queues, workers
from scheduler_app.connection import redis_client
from scheduler_app.models import AuditEntry
from tests import tasks  # noqa: F401  (tests.sleeper and tests.record are registered here too)
from tests.processes import Process, wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)
TASKS = ("--include", "tests.tasks")


@pytest.fixture(autouse=True)
def _forget_workers() -> Iterator[None]:
    """No test sees the workers an earlier test's page saw (they would be listed as not answering)."""
    redis_client().delete(fleet.SEEN)
    yield
    redis_client().delete(fleet.SEEN)


@pytest.fixture
def operator() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("op", "op@example.com", "x"))
    return client


@pytest.fixture
def queue() -> Iterator[str]:
    """A queue of the test's own, emptied afterwards."""
    name = f"bk-test-{uuid.uuid4().hex[:8]}"
    yield name
    with broker.bounded_connection() as conn:
        channel = backlog.channel_of(conn)
        channel.client.delete(*[key for _, key in backlog.keys_of(channel, name)])


def hostname(proc: Process) -> str:
    """The worker's name as Celery answers with it (`--hostname`, its %h filled in)."""
    argv = [str(arg) for arg in cast(list[str], proc.proc.args)]  # Popen was given a list
    return argv[argv.index("--hostname") + 1].replace("%h", socket.gethostname())


def page(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def page_showing(client: Client, url: str, text: str, timeout: float) -> str:
    def shows() -> str | None:
        html = page(client, url)
        return html if text in html else None

    return wait_for(shows, timeout, f"{text!r} on {url}")


def words(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))


def row_of(html: str, worker: str) -> str:
    found = re.search(rf'<tr class="bk-worker[^"]*" data-worker="{re.escape(worker)}">(.*?)</tr>', html, re.S)
    assert found, f"{worker} is not listed"
    return found.group(1)


def control(client: Client, name: str, command: str, **data: str) -> str:
    response = client.post(workers.control_url(name, command), data, follow=True)
    assert response.status_code == 200
    return " ".join(str(m) for m in response.context["messages"])


def send(task: str, queue: str, priority: int = 5, **kwargs: object) -> str:
    options: dict[str, object] = {"queue": queue, "priority": priority, **kwargs}
    return services.send(task, [], {"key": "k", "label": "x"} if task == "tests.record" else {},
                         options=options, header={"trigger": "manual", "by": "op"})  # fmt: skip


def test_it_lists_a_worker_with_its_queues_pool_runs_and_controls_it(
    operator: Client, queue: str, key: str, tmp_path: Path
) -> None:
    workers = reverse("beatkeeper-workers")
    with worker(tmp_path, "-Q", f"celery,{queue}", *TASKS, concurrency=2) as proc:
        name = hostname(proc)
        run = services.send("tests.sleeper", [key], {"seconds": 20, "steps": 20}, options={"queue": queue},
                            header={"trigger": "manual", "by": "op"})  # fmt: skip
        later = services.send("tests.record", [key, "later"], {}, options={"queue": queue, "countdown": 600},
                              header={"trigger": "manual", "by": "op"})  # fmt: skip
        html = page_showing(operator, workers, f"{run}</a>", 30)
        row = row_of(html, name)
        assert "celery</span>" in row and f"{queue}</span>" in row
        assert re.search(r"prefork,<br><span class=\"bk-pool-size\">2</span> processes", row)
        pk = TaskResult.objects.get(task_id=run).pk
        assert f'href="{reverse("admin:scheduler_app_run_change", args=[pk])}">{run}</a>' in html
        assert re.search(r'class="bk-running-for">\d+ s<', html)
        assert "1 worker answering; 1 run running, 0 reserved." in words(html)

        queues = page(operator, reverse("beatkeeper-queues"))  # the countdown: held by the worker
        assert re.search(rf'<tr class="bk-eta-run"><td>{later}</td><td>tests.record</td><td>{queue}</td>', queues)

        assert control(operator, name, "pool_grow") == f"{name}: pool will grow."
        wait_for(lambda: '"bk-pool-size">3<' in row_of(page(operator, workers), name), 30, "a third process")
        assert control(operator, name, "pool_shrink") == f"{name}: pool will shrink."
        wait_for(lambda: '"bk-pool-size">2<' in row_of(page(operator, workers), name), 30, "two processes again")

        assert control(operator, name, "cancel_consumer", queue=queue) == f"{name}: no longer consuming from {queue}."
        wait_for(lambda: f"{queue}</span>" not in row_of(page(operator, workers), name), 30, "the queue cancelled")
        other = f"{queue}-2"
        assert control(operator, name, "add_consumer", queue=other) == f"{name}: add consumer {other}."
        wait_for(lambda: f"{other}</span>" in row_of(page(operator, workers), name), 30, "the queue added")

    entries = AuditEntry.objects.filter(object_type="worker", via="admin").order_by("pk")
    assert [(e.action, e.actor_name, e.changes.get("ok")) for e in entries] == [
        (command, "op", True) for command in ("pool_grow", "pool_shrink", "cancel_consumer", "add_consumer")
    ]
    assert entries[2].changes["queue"] == queue


def test_a_warm_shutdown_stops_the_worker_which_is_then_listed_as_not_answering(
    operator: Client, tmp_path: Path
) -> None:
    with worker(tmp_path, *TASKS) as proc:
        name = hostname(proc)
        assert "1 worker answering;" in words(page(operator, reverse("beatkeeper-workers")))
        url = workers.control_url(name, "shutdown")
        confirm = page(operator, url)
        assert f"Shut down <strong>{name}</strong>?" in confirm and 'name="csrfmiddlewaretoken"' in confirm
        assert control(operator, name, "shutdown").startswith(f"{name} was asked to shut down")
        assert proc.proc.wait(timeout=60) == 0  # it exits by itself, cleanly
        assert "Got shutdown from remote" in proc.output
    html = page(operator, reverse("beatkeeper-workers"))
    assert "not answering" in row_of(html, name) and "0 workers answering, 1 not answering;" in words(html)
    assert AuditEntry.objects.get(action="shutdown").object_id == name[:64]


def test_each_control_is_refused_without_the_permission_or_without_csrf(queue: str) -> None:
    viewer = User.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_run"))
    client = Client()
    client.force_login(viewer)
    html = page(client, reverse("beatkeeper-workers"))
    assert "Grow" not in html and "Shut down…" not in html
    for command in fleet.CONTROLS:
        url = workers.control_url("w@host", command)
        assert client.post(url, {"queue": "celery"}).status_code == 403, command
        assert client.get(url).status_code == 403, command
    purge = queues.purge_url(queue)
    assert client.get(purge).status_code == 403 and client.post(purge).status_code == 403

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(User.objects.create_superuser("boss", "boss@example.com", "x"))
    for command in fleet.CONTROLS:
        url = workers.control_url("w@host", command)
        assert strict.post(url, {"queue": "celery"}).status_code == 403, command
    assert strict.post(purge).status_code == 403
    assert strict.get(workers.control_url("w@host", "pool_grow")).status_code == 405
    assert not AuditEntry.objects.exists()


def test_the_queues_page_shows_depth_per_priority_and_the_oldest_and_purge_revokes_their_runs(
    operator: Client, queue: str
) -> None:
    with time_machine.travel(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)):
        oldest = send("tests.record", queue, priority=9)
    runs = [oldest, send("tests.record", queue, priority=0), *(send("tests.record", queue, priority=3) for _ in "ab")]
    url = f"{reverse('beatkeeper-queues')}?queue={queue}"
    html = page(operator, url)
    found = re.search(rf'<tr class="bk-queue-row" data-queue="{queue}">(.*?)</tr>', html, re.S)
    assert found, html
    row = found.group(1)
    assert '<td class="bk-queue-depth">4</td>' in row
    levels = re.findall(r'data-priority="(\d)">\d: (\d+)<', row)
    assert levels == [("0", "1"), ("3", "2"), ("9", "1")]
    assert re.search(r'class="bk-queue-oldest">10 min \d+ s ago', row), row
    assert "no worker" in row and 'href="/admin/dead-letters/"' in html

    region = operator.get(url, headers={"HX-Request": "true"}).content.decode()  # htmx's refresh: the region only
    assert region.lstrip().startswith('<div id="bk-queues"') and "<html" not in region and "4</td>" in region

    purge = queues.purge_url(queue)
    assert '<span id="bk-purge-depth">4</span>' in page(operator, purge)
    response = operator.post(purge, follow=True)
    assert [str(m) for m in response.context["messages"]] == [
        f"Purged {queue}: 4 messages dropped, 4 queued runs marked REVOKED."
    ]
    rows = TaskResult.objects.filter(task_id__in=runs)
    assert {row.status for row in rows} == {"REVOKED"}
    assert {json.loads(row.result or "{}")["reason"] for row in rows} == {"purged by op"}
    assert {json.loads(row.meta or "{}")["revoked_by"] for row in rows} == {"op"}
    assert backlog.read([queue])[0].depth == 0
    entry = AuditEntry.objects.get(action="purge")
    assert (entry.object_id, entry.changes, entry.via) == (queue, {"messages": 4, "runs_revoked": 4}, "admin")


def test_a_message_sent_meanwhile_survives_a_purge_and_an_unknown_age_is_said(operator: Client, queue: str) -> None:
    with broker.bounded_connection() as conn:  # a message without the platform's header
        channel = backlog.channel_of(conn)
        channel.client.lpush(channel._q_for_pri(queue, 5), json.dumps({"headers": {"id": "x"}}))
    html = page(operator, f"{reverse('beatkeeper-queues')}?queue={queue}")
    assert "unknown (sent without the platform's header)" in html
    with broker.bounded_connection() as conn:
        channel = backlog.channel_of(conn)
        aside = backlog.set_aside(channel.client, [key for _, key in backlog.keys_of(channel, queue)])
        send("tests.record", queue)  # published after the lists were set aside
        assert len(aside) == 1 and channel.client.llen(aside[0]) == 1
    assert backlog.read([queue])[0].depth == 1


def test_purge_refuses_a_key_that_is_not_a_known_queue_and_leaves_it_untouched(operator: Client, queue: str) -> None:
    send("tests.record", queue)  # a worker holds nothing: put a message in kombu's unacked hash by hand
    client = redis_client()
    client.hset("unacked", "bk-test-tag", json.dumps([{"headers": {}}, "", queue]))
    client.xadd("bk:ledger", {"bk-test": "1"})
    try:
        for name in ("unacked", "bk:ledger", "unacked_index"):
            assert operator.get(queues.purge_url(name)).status_code == 404, name
            assert operator.post(queues.purge_url(name)).status_code == 404, name
        assert client.type("unacked") == b"hash" and client.hget("unacked", "bk-test-tag") is not None
        assert client.ttl("unacked") == -1 and client.type("bk:ledger") == b"stream"
        assert not AuditEntry.objects.filter(action="purge").exists()
        response = operator.post(queues.purge_url(queue), follow=True)  # a real queue still is
        assert [str(m) for m in response.context["messages"]] == [
            f"Purged {queue}: 1 message dropped, 1 queued run marked REVOKED."
        ]
    finally:
        client.hdel("unacked", "bk-test-tag")


def test_a_level_that_is_not_a_list_is_not_renamed_and_a_failed_purge_puts_the_lists_back(
    queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with broker.bounded_connection() as conn:
        channel = backlog.channel_of(conn)
        client = channel.client
        odd = channel._q_for_pri(queue, 7)
        client.set(odd, "not a list")
        try:
            aside = backlog.set_aside(client, [odd])
            assert aside == [] and client.get(odd) == b"not a list" and client.ttl(odd) == -1
        finally:
            client.delete(odd)
    first = send("tests.record", queue, priority=3)
    before = set(redis_client().scan_iter(match="bk:purge:*"))  # an earlier test's may wait out their hour

    def broken(*_: object) -> None:
        send("tests.record", queue, priority=3)  # published after the lists were set aside
        raise ConnectionError("the broker went away")

    monkeypatch.setattr(backlog, "ids_in", broken)
    with pytest.raises(ConnectionError):
        backlog.purge(queue, by="op")
    with broker.bounded_connection() as conn:
        channel = backlog.channel_of(conn)
        key = channel._q_for_pri(queue, 3)
        held = [json.loads(raw)["headers"]["id"] for raw in channel.client.lrange(key, 0, -1)]
        assert len(held) == 2 and held[-1] == first  # the oldest still taken first (from the right)
        assert channel.client.ttl(key) == -1 and set(channel.client.scan_iter(match="bk:purge:*")) == before
    assert TaskResult.objects.get(task_id=first).status == "PENDING"


def test_a_queue_and_a_worker_whose_names_hold_a_slash(operator: Client) -> None:
    queue = f"reports/daily-{uuid.uuid4().hex[:6]}"
    try:
        run = send("tests.record", queue)
        url = f"{reverse('beatkeeper-queues')}?queue={queue}"
        html = page(operator, url)
        assert f'<tr class="bk-queue-row" data-queue="{queue}">' in html
        assert f'href="{queues.purge_url(queue)}"' in html.replace("&amp;", "&")
        region = operator.get(url, headers={"HX-Request": "true"})
        assert region.status_code == 200 and f'data-queue="{queue}"' in region.content.decode()
        assert '<span id="bk-purge-depth">1</span>' in page(operator, queues.purge_url(queue))
        response = operator.post(queues.purge_url(queue), follow=True)
        assert [str(m) for m in response.context["messages"]] == [
            f"Purged {queue}: 1 message dropped, 1 queued run marked REVOKED."
        ]
        assert TaskResult.objects.get(task_id=run).status == "REVOKED" and backlog.read([queue])[0].depth == 0
    finally:
        with broker.bounded_connection() as conn:
            channel = backlog.channel_of(conn)
            channel.client.delete(*[key for _, key in backlog.keys_of(channel, queue)])

    name = "odd/worker #1@host"
    assert "odd/worker #1@host: no longer" not in control(operator, name, "pool_grow")
    assert AuditEntry.objects.get(action="pool_grow").object_id == name
    shutdown = page(operator, workers.control_url(name, "shutdown"))
    assert "Shut down <strong>odd/worker #1@host</strong>?" in shutdown
