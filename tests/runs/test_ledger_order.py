"""The ledger's order of writes, in this process against the real Redis and database: what
a late, repeated or foreign write does to a run, what the recorder writes and when its
fast-side state may go. (Outages and crashes with real processes: test_ledger.py.)"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
import time_machine
from celery import current_app
from celery import states as celery_states
from celery.app.task import Context
from celery.result import AsyncResult
from django.contrib.auth.models import User
from django.utils import timezone
from django_celery_results.models import TaskResult

import tests.tasks  # noqa: F401  (registers tests.record)
from scheduler_app import services
from scheduler_app.connection import redis_client
from scheduler_app.runs import history, ledger, states
from scheduler_app.runs.recorder import Recorder, fold, parse, write

pytestmark = pytest.mark.django_db(transaction=True)
TASK = "tests.record"


@pytest.fixture(autouse=True)
def fresh_ledger() -> Iterator[None]:
    client = redis_client()
    client.delete(ledger.STREAM, ledger.DEAD, "bk:recorder:lease", "bk:recorder:status")
    yield
    client.delete(ledger.STREAM, ledger.DEAD, "bk:recorder:lease", "bk:recorder:status")


def request(task_id: str, **fields: Any) -> Context:
    meta = {"trigger": "beat", "schedule": "nightly", "attempt": 1, "attempts": []} | fields.pop("meta", {})
    defaults = {"task": TASK, "args": [], "kwargs": {"key": "k", "label": "x"}, "hostname": "w1@host",
                "delivery_info": {"routing_key": "celery"}}  # fmt: skip
    return Context(defaults | fields, id=task_id, meta=meta)


def store(task_id: str, state: str, result: Any = None, req: Context | None = None) -> None:
    current_app.backend.store_result(task_id, result, state, request=req or request(task_id))


def record_all() -> int:
    recorder = Recorder(batch=500)
    assert recorder.lead()
    written = 0
    while True:
        reading_pending = recorder.pending_first  # the first read is of what an earlier recorder left
        taken = recorder.step()
        written += taken
        if taken == 0 and not reading_pending:
            break
    recorder.release()
    return written


def row(task_id: str) -> TaskResult:
    return TaskResult.objects.get(task_id=task_id)


def test_a_short_run_is_one_write_whose_row_has_its_start_and_end() -> None:
    task_id = str(uuid.uuid4())
    started = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
    req = request(task_id)
    with time_machine.travel(started, tick=False):
        store(task_id, celery_states.STARTED, {"pid": 1}, req)  # held back: the run may end at once
    with time_machine.travel(started + dt.timedelta(seconds=0.05), tick=False):
        store(task_id, celery_states.SUCCESS, {"done": 1}, req)
    assert redis_client().xlen(ledger.STREAM) == 1  # STARTED was folded into the end
    assert record_all() == 1
    written = row(task_id)
    assert written.status == "SUCCESS"
    assert (written.date_started, written.date_done) == (started, started + dt.timedelta(seconds=0.05))
    assert written.date_created == started  # as the stock backend: the row dates from the start
    assert (written.task_name, written.worker) == (TASK, "w1@host")
    assert history.run_context(written)["schedule"] == "nightly"
    assert json.loads(written.result or "null") == {"done": 1}


def test_a_late_started_never_replaces_the_end_and_a_retry_from_elsewhere_cannot_undo_it(
    settings: Any,
) -> None:
    settings.LEDGER_STARTED_DELAY = 0  # STARTED sent at once, not held back
    task_id = str(uuid.uuid4())
    store(task_id, celery_states.SUCCESS, {"done": 1})
    store(task_id, celery_states.STARTED, {"pid": 1})
    # The worker's main process after a lost connection: Retry for a run it still held.
    current_app.backend.mark_as_retry(task_id, RuntimeError("cancelled by Celery"), request=Context(id=task_id))
    assert AsyncResult(task_id).state == "SUCCESS"
    record_all()
    assert row(task_id).status == "SUCCESS"
    assert history.run_context(row(task_id))["trigger"] == "beat"


def redeliver_and_start(task_id: str) -> bool:
    """What a worker does with a redelivered message of the run up to its body: the run
    context, then Celery's STARTED. Answers whether it took the run as finished before."""
    task = current_app.tasks[TASK]
    redelivered = request(task_id, delivery_info={"routing_key": "celery", "redelivered": True}, meta={})
    redelivered.headers = {"beatkeeper": {"trigger": "beat", "schedule": "nightly"}}
    task.push_request(**redelivered.__dict__)
    try:
        history.attach_run_context(task_id=task_id, task=task)
        store(task_id, celery_states.STARTED, {"pid": 2}, task.request)  # what Celery writes before the body
        return bool(getattr(task.request, "finished_before", False))
    finally:
        task.pop_request()


def test_a_redelivered_run_that_had_finished_is_acknowledged_and_stays_finished(settings: Any) -> None:
    settings.LEDGER_STARTED_DELAY = 0
    task_id = str(uuid.uuid4())
    store(task_id, celery_states.SUCCESS, {"done": 1})
    record_all()
    assert redeliver_and_start(task_id) is True
    assert AsyncResult(task_id).state == "SUCCESS"
    record_all()
    assert row(task_id).status == "SUCCESS"
    assert history.run_context(row(task_id))["attempt"] == 1


def attempt_of_retry(task_id: str, retries: int) -> dict[str, Any]:
    """The run context a worker gives a retried message of the run."""
    task = current_app.tasks[TASK]
    task.push_request(**request(task_id, retries=retries, meta={}).__dict__)
    try:
        history.attach_run_context(task_id=task_id, task=task)
        return dict(getattr(task.request, "meta", {}))
    finally:
        task.pop_request()


def test_a_retry_reads_its_earlier_attempts_from_the_row_once_redis_let_them_go() -> None:
    task_id = str(uuid.uuid4())
    store(task_id, celery_states.RETRY, RuntimeError("database down"))
    record_all()
    redis_client().delete(ledger.RUN_KEY + task_id)
    meta = attempt_of_retry(task_id, retries=1)
    assert meta["attempt"] == 2
    assert [(a["attempt"], a["state"]) for a in meta["attempts"]] == [(1, "RETRY")]
    store(task_id, celery_states.SUCCESS, {"done": 2}, request(task_id, meta=meta))
    record_all()
    assert (row(task_id).status, history.run_context(row(task_id))["attempt"]) == ("SUCCESS", 2)


def test_a_retry_with_no_record_left_is_still_numbered_after_its_retries() -> None:
    task_id = str(uuid.uuid4())  # neither Redis nor the database has it (say, the database is away)
    assert attempt_of_retry(task_id, retries=2)["attempt"] == 3


def test_revoking_a_run_between_attempts_replaces_its_retry() -> None:
    task_id = str(uuid.uuid4())
    store(task_id, celery_states.RETRY, RuntimeError("database down"))
    record_all()
    admin = User.objects.create_superuser("boss", "boss@example.com", "x")
    services.revoke_run(row(task_id), by=admin)
    revoked: AsyncResult[Any] = AsyncResult(task_id)
    assert str(revoked.state) == "REVOKED"
    assert "revoked" in str(revoked.result)  # Celery's TaskRevokedError, with the reason
    record_all()
    assert row(task_id).status == "REVOKED"
    assert history.run_context(row(task_id))["revoked_by"] == "boss"


def test_the_recorder_shortens_only_what_it_wrote() -> None:
    client = redis_client()
    written, newer = str(uuid.uuid4()), str(uuid.uuid4())
    store(written, celery_states.SUCCESS, {"done": 1})
    recorder = Recorder(batch=500)
    assert recorder.lead()
    store(newer, states.PROGRESS, {"percent": 10})
    recorder.pending_first = False  # nothing is pending: read what is new
    entries = recorder.read()  # both runs' first states are in this batch
    store(newer, celery_states.SUCCESS, {"done": 1})  # ... and this one comes after the read
    events = [parse(entry_id, fields) for entry_id, fields in entries]
    write(fold(events))
    recorder.acknowledge(entries, events)
    recorder.release()
    assert 0 < client.ttl(ledger.RUN_KEY + written) <= ledger.recorded_lifetime()
    assert client.ttl(ledger.RUN_KEY + newer) > ledger.recorded_lifetime()  # its SUCCESS is not written yet
    record_all()
    assert row(newer).status == "SUCCESS"


def test_an_event_that_cannot_be_read_is_set_aside_and_the_rest_is_written() -> None:
    client = redis_client()
    good = str(uuid.uuid4())
    client.xadd(ledger.STREAM, {"e": json.dumps({"id": "x", "columns": []})})
    client.xadd(ledger.STREAM, {"e": b"not json"})
    store(good, celery_states.SUCCESS, {"done": 1})
    record_all()
    assert row(good).status == "SUCCESS"
    dead = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(ledger.DEAD))
    assert len(dead) == 2
    assert all(b"not a ledger event" in fields[b"error"] for _, fields in dead)
    assert client.xlen(ledger.STREAM) == 0


def test_asyncresult_reads_a_run_before_and_after_it_is_written() -> None:
    task_id = str(uuid.uuid4())
    store(task_id, celery_states.SUCCESS, {"done": 7})
    assert not TaskResult.objects.filter(task_id=task_id).exists()
    assert AsyncResult(task_id).get(timeout=5) == {"done": 7}  # from Redis: no row yet
    record_all()
    redis_client().delete(ledger.RUN_KEY + task_id)
    assert AsyncResult(task_id).get(timeout=5) == {"done": 7}  # from the row
    assert timezone.now() - row(task_id).date_done < dt.timedelta(minutes=1)


def test_a_revocation_after_the_end_does_not_replace_it_but_refines_celerys_bare_revoked() -> None:
    task = current_app.tasks[TASK]
    finished, revoked = str(uuid.uuid4()), str(uuid.uuid4())
    store(finished, celery_states.SUCCESS, {"done": 1})
    for task_id in (finished, revoked):  # what the worker's main process writes on a revoke
        current_app.backend.mark_as_revoked(task_id, "revoked", request=request(task_id))
        history.record_revocation(sender=task, request=request(task_id), terminated=True)
    assert AsyncResult(finished).state == "SUCCESS"
    record_all()
    assert row(finished).status == "SUCCESS"
    assert row(revoked).status == "REVOKED"
    assert json.loads(row(revoked).result or "{}") == {"reason": "revoked", "terminated": True}


def test_a_finished_runs_redelivery_writes_nothing_once_redis_let_the_run_go(settings: Any) -> None:
    settings.LEDGER_STARTED_DELAY = 0
    task_id = str(uuid.uuid4())
    store(task_id, celery_states.SUCCESS, {"done": 1})
    record_all()
    redis_client().delete(ledger.RUN_KEY + task_id)  # its recorded lifetime is over: only the row has it
    redeliver_and_start(task_id)
    assert redis_client().exists(ledger.RUN_KEY + task_id) == 0
    assert redis_client().xlen(ledger.STREAM) == 0
    assert AsyncResult(task_id).state == "SUCCESS"  # from the row


def test_a_state_of_the_same_rank_written_after_the_read_keeps_its_long_lifetime() -> None:
    client = redis_client()
    task_id = str(uuid.uuid4())
    store(task_id, states.PROGRESS, {"percent": 10})
    recorder = Recorder(batch=500)
    assert recorder.lead()
    recorder.pending_first = False
    entries = recorder.read()
    store(task_id, states.PROGRESS, {"percent": 20})  # same rank, after the read: not written yet
    events = [parse(entry_id, fields) for entry_id, fields in entries]
    write(fold(events))
    recorder.acknowledge(entries, events)
    recorder.release()
    assert client.ttl(ledger.RUN_KEY + task_id) > ledger.recorded_lifetime()
    record_all()
    assert json.loads(row(task_id).result or "{}")["percent"] == 20
    assert 0 < client.ttl(ledger.RUN_KEY + task_id) <= ledger.recorded_lifetime()
