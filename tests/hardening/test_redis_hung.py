"""A hung Redis (alive, accepting connections, answering nothing: a redis-server of the
test's own, SIGSTOPped) costs every web request that touches it a bounded wait and a 503
or a page that says what it could not read; a failed send leaves no PENDING row; once
the server runs again (SIGCONT), the same requests work.

The app is pointed at the server by REDIS_URL (the platform's clients, the ledger's,
keyed by URL) and by Celery's broker_url (the publisher's connections, and the app's pools,
looked up again for the test's server and given back afterwards).
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from celery import current_app
from celery import states as celery_states
from django.contrib.auth.models import User
from django.test import Client, override_settings
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app import services
from tests.processes import wait_for
from tests.runs.servers import RedisServer, redis_server

pytestmark = pytest.mark.django_db(transaction=True)  # /readyz checks the database from a thread of its own
TASK = "maintenance.purge_expired_sessions"
DEADLINE = 5.0  # seconds a request may take against a hung Redis (each Redis call waits 1.5 s at most)
TOKEN = "hung-redis-metrics-token"  # noqa: S105
Answer = Any  # what the test client answers (django-stubs name it with a private class)


def forget_publisher() -> None:
    """Make the app look up its broker pools again (kombu keeps them per broker URL)."""
    app: Any = current_app  # celery-types know neither the pool's real type nor the private attributes
    app._pool = None
    app.amqp._producer_pool = None


@contextmanager
def pointed_at(url: str) -> Iterator[None]:
    conf: Any = current_app.conf  # celery-types make broker_url read-only; it is a setting
    before = conf.broker_url
    conf.broker_url = url
    forget_publisher()  # any use of the app's pool now reaches the test's server too
    try:
        with override_settings(REDIS_URL=url, CELERY_BROKER_URL=url, METRICS_TOKEN=TOKEN):
            yield
    finally:
        pool: Any = current_app.pool
        pool.force_close_all()  # the test server's pool, never used again
        conf.broker_url = before
        forget_publisher()  # back to the suite's pools, as they were


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as running, pointed_at(running.url):
        yield running


@contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def timed(request: Callable[[], Answer]) -> tuple[Answer, float]:
    started = time.monotonic()
    answer = request()
    return answer, time.monotonic() - started


SCHEDULES = "/admin/django_celery_beat/periodictask/"


def schedule() -> PeriodicTask:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    return PeriodicTask.objects.create(name=f"hung-{uuid.uuid4().hex[:6]}", task=TASK, interval=every)


def run_row(status: str) -> TaskResult:
    return TaskResult.objects.create(task_id=str(uuid.uuid4()), task_name=TASK, status=status, task_args="[]",
                                     task_kwargs="{}", meta=json.dumps({"trigger": "manual"}))  # fmt: skip


def detail(answer: Answer) -> str:
    return str(json.loads(answer.content)["detail"])


def no_pending_row_but(*kept: TaskResult) -> bool:
    return not TaskResult.objects.filter(status=celery_states.PENDING).exclude(pk__in=[r.pk for r in kept]).exists()


def test_run_now_answers_503_in_time_and_leaves_no_pending_row(server: RedisServer, admin_client: Client) -> None:
    task = schedule()
    with frozen(server):
        answer, took = timed(lambda: admin_client.post(f"/api/schedules/{task.pk}/run/", {},
                                                       content_type="application/json"))  # fmt: skip
        admin, admin_took = timed(lambda: admin_client.post(f"/admin/django_celery_beat/periodictask/{task.pk}/do/run/",
                                                            follow=True))  # fmt: skip

    assert answer.status_code == 503 and took < DEADLINE, (answer.status_code, took)
    assert "the broker did not answer" in detail(answer) and "the run was not queued" in detail(answer)
    assert admin.status_code == 200 and admin_took < DEADLINE, (admin.status_code, admin_took)
    assert "the broker did not answer" in admin.content.decode().lower()  # the admin's message, capitalised
    assert no_pending_row_but()
    # The message may still reach Redis once it resumes: the runs are kept REVOKED, so a worker drops them.
    kept = TaskResult.objects.all()
    assert [r.status for r in kept] == [celery_states.REVOKED] * 2
    assert all("not queued" in json.loads(r.result or "{}")["reason"] for r in kept)


def test_retry_and_revoke_answer_503_in_time(server: RedisServer, admin_client: Client) -> None:
    finished, queued = run_row(celery_states.SUCCESS), run_row(celery_states.PENDING)
    with frozen(server):
        retried, retry_took = timed(lambda: admin_client.post(f"/api/runs/{finished.pk}/retry/"))
        revoked, revoke_took = timed(lambda: admin_client.post(f"/api/runs/{queued.pk}/revoke/"))

    assert retried.status_code == 503 and retry_took < DEADLINE, (retried.status_code, retry_took)
    assert "the run was not queued" in detail(retried)
    assert revoked.status_code == 503 and revoke_took < DEADLINE, (revoked.status_code, revoke_took)
    assert "nothing was revoked" in detail(revoked)
    assert no_pending_row_but(queued)
    queued.refresh_from_db()
    assert queued.status == celery_states.PENDING  # not revoked: nothing reached a worker


def test_bulk_actions_wait_once_not_once_per_selected_row(server: RedisServer, admin_client: Client) -> None:
    """Run now of 6 schedules, revoke of 6 runs: one bounded wait, then "the rest were not ..."."""
    schedules = [schedule() for _ in range(6)]
    pending = [run_row(celery_states.PENDING) for _ in range(6)]
    run_now_form = {"action": "run_now", "_selected_action": [task.pk for task in schedules]}
    revoke_form = {"action": "revoke", "confirm": "yes", "_selected_action": [row.pk for row in pending]}
    with frozen(server):
        run_now, run_took = timed(lambda: admin_client.post(SCHEDULES, run_now_form, follow=True))
        revoke, revoke_took = timed(lambda: admin_client.post("/admin/scheduler_app/run/", revoke_form, follow=True))
    assert run_took < 5 and revoke_took < 5  # six waits of 1.5 s each were 9 s and more
    assert "The rest were not sent." in run_now.content.decode()
    assert "The rest were not done." in revoke.content.decode()
    assert TaskResult.objects.filter(status=celery_states.PENDING).count() == len(pending)  # none queued, none lost


def test_the_dashboard_says_what_it_could_not_read(server: RedisServer, admin_client: Client) -> None:
    failed = run_row(celery_states.FAILURE)
    with frozen(server):
        page, took = timed(lambda: admin_client.get("/admin/dashboard/"))
        panel, panel_took = timed(lambda: admin_client.get("/admin/dashboard/panel/"))

    assert page.status_code == 200 and took < DEADLINE, (page.status_code, took)
    assert panel.status_code == 200 and panel_took < DEADLINE, (panel.status_code, panel_took)
    text = panel.content.decode()
    assert "Redis did not answer within 1.5 s" in text
    assert "workers, queues, beat and the run ledger could not be read" in text
    assert "not read: the broker did not answer" in text  # each queue's depth
    assert failed.task_id[:8] in text  # the database's figures are there (recent failures)


def test_run_pages_lists_probes_and_metrics_answer_in_time(server: RedisServer, admin_client: Client) -> None:
    run = run_row(celery_states.SUCCESS)
    requests: dict[str, tuple[Callable[[], Answer], int]] = {
        "runs list": (lambda: admin_client.get("/admin/scheduler_app/run/"), 200),
        "run page": (lambda: admin_client.get(f"/admin/scheduler_app/run/{run.pk}/change/"), 200),
        "API run": (lambda: admin_client.get(f"/api/runs/{run.pk}/"), 200),
        "API runs": (lambda: admin_client.get("/api/runs/"), 200),
        "readyz": (lambda: admin_client.get("/readyz"), 503),
        "metrics": (lambda: admin_client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}"), 200),
    }
    with frozen(server):
        answers = {name: (*timed(request), status) for name, (request, status) in requests.items()}

    for name, (answer, took, status) in answers.items():
        assert answer.status_code == status and took < DEADLINE, (name, answer.status_code, took)
    assert run.task_id in answers["run page"][0].content.decode()
    assert "broker" in json.loads(answers["readyz"][0].content)["failing"]
    metrics = answers["metrics"][0].content.decode()
    assert "beatkeeper_broker_up 0.0" in metrics
    assert 'beatkeeper_collector_success{part="ledger"} 0.0' in metrics


def test_it_works_again_once_redis_answers(server: RedisServer, admin_client: Client) -> None:
    task = schedule()
    with frozen(server):
        assert (
            admin_client.post(f"/api/schedules/{task.pk}/run/", {}, content_type="application/json").status_code == 503
        )

    answer = admin_client.post(f"/api/schedules/{task.pk}/run/", {}, content_type="application/json")
    assert answer.status_code == 202, answer.content
    run_id = json.loads(answer.content)["run"]
    assert TaskResult.objects.get(task_id=run_id).status == celery_states.PENDING
    client = server.client()  # the message is on the server the app was pointed at (a priority level's list)
    assert sum(client.llen(name) for name in client.scan_iter(match="celery*")) == 1
    panel = admin_client.get("/admin/dashboard/panel/").content.decode()
    assert "bk-redis-error" not in panel
    wait_for(lambda: admin_client.get("/readyz").status_code == 503, 10, "a /readyz answer")  # no beat, no worker
    assert json.loads(admin_client.get("/readyz").content)["checks"]["broker"]["ok"] is True


def test_a_send_that_fails_in_any_way_leaves_no_pending_row(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis answers, but not as asked (a database beyond the server's 16): a ResponseError,
    not kombu's OperationalError; and an error of no broker at all."""
    operator = User.objects.create_user("ops", is_staff=True)
    task = schedule()
    with pointed_at(server.url.removesuffix("/0") + "/99"):
        with pytest.raises(services.BrokerUnavailable, match="DB index is out of range"):
            services.run_now(task, by=operator)
    assert not TaskResult.objects.exists()  # refused outright: nothing can arrive later, nothing kept

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RecursionError("maximum recursion depth exceeded while encoding")

    monkeypatch.setattr(current_app, "send_task", broken)
    with pytest.raises(services.ServiceError, match="the run could not be queued .*RecursionError"):
        services.run_now(task, by=operator)
    assert not TaskResult.objects.exists()
