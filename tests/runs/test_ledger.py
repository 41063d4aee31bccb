"""The run ledger under failure: PostgreSQL stopped under load, the recorder SIGKILLed
mid-batch, Redis restarted while runs finish. Real processes (worker, recorder), real
servers (a PostgreSQL cluster and a redis-server of the test's own where the test stops
them, tests/runs/servers.py), real signals; waits are polls with deadlines."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypedDict, cast

import psycopg
import pytest
import redis
from celery import current_app
from celery.app.task import Context
from celery.exceptions import Retry
from celery.result import AsyncResult
from django.test import override_settings
from django_celery_results.models import TaskResult
from kombu import Connection

from scheduler_app.connection import redis_client
from scheduler_app.runs import ledger
from scheduler_app.runs.history import run_context
from scheduler_app.runs.recorder import GROUP, Recorder
from tests.processes import Process, bare_worker, recorder, wait_for
from tests.runs.servers import PostgresCluster, postgres_cluster, redis_server

pytestmark = pytest.mark.django_db(transaction=True)
TASKS = ("--include", "tests.tasks")
TABLE = TaskResult._meta.db_table


def send(task: str, key: str, *, trigger: str = "beat", policy: dict[str, Any] | None = None,
         connection: Connection | None = None, **kwargs: Any) -> str:  # fmt: skip
    """A run as beat sends one: its schedule (the test's key) and trigger in the header."""
    header: dict[str, Any] = {"schedule": key, "trigger": trigger}
    if policy:
        header["policy"] = policy
    result = current_app.send_task(
        task, kwargs={"key": key, **kwargs}, headers={"beatkeeper": header}, connection=connection
    )
    return str(result.id)


def labels(client: redis.Redis, name: str) -> list[str]:
    return [label.decode() for label in cast(list[bytes], client.lrange(name, 0, -1))]


def pending(client: redis.Redis) -> int:
    try:
        return int(client.xpending(ledger.STREAM, GROUP)["pending"])
    except redis.ResponseError:  # no group yet
        return 0


def alive(*procs: Process) -> None:
    """Fail at once, with its log, if a process the test relies on has exited."""
    for proc in procs:
        if proc.proc.poll() is not None:
            raise AssertionError(f"{proc.name} exited ({proc.proc.returncode}):\n{proc.output[-4000:]}")


class OwnRedis(TypedDict):
    """The environment of processes on the test's own Redis (a TypedDict: `**` of it fills no `concurrency`)."""

    REDIS_URL: str
    CELERY_VISIBILITY_TIMEOUT: str  # a message held by a worker cut off comes back after 5 s, not 300
    LEDGER_LEASE_SECONDS: str


def started(client: redis.Redis, name: str, count: int) -> Callable[[], bool]:
    return lambda: client.llen(name) >= count


def broker_idle(client: redis.Redis) -> bool:
    """No message queued, none delivered and unacknowledged (kombu's `unacked` hash)."""
    queues = [name for name in client.scan_iter(match="celery*") if client.type(name) == b"list"]
    return not client.hlen("unacked") and not any(client.llen(name) for name in queues)


def steady(condition: Callable[[], bool], seconds: float) -> Callable[[], bool]:
    """A probe for wait_for: true once `condition` has held for `seconds` on end (nothing
    is left to happen, rather than a moment between two steps)."""
    since: list[float] = []

    def probe() -> bool:
        if not condition():
            since.clear()
            return False
        since[:1] = since[:1] or [time.monotonic()]
        return time.monotonic() - since[0] >= seconds

    return probe


def assert_context(meta: dict[str, Any], key: str, trigger: str = "beat") -> None:
    assert (meta.get("trigger"), meta.get("schedule")) == (trigger, key), meta


# --- 1. PostgreSQL stopped under load -----------------------------------------------------


class Sender:
    """Sends a `tests.record` run at most every `every` seconds, each time it is called
    (from the probes of wait_for, so sending goes on while the test waits)."""

    def __init__(self, key: str, every: float = 0.2) -> None:
        self.key, self.every = key, every
        self.sent: dict[str, str] = {}  # task id -> label
        self.sent_at: dict[str, float] = {}  # label -> monotonic time
        self.last = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        label = f"L{len(self.sent)}"
        self.sent[send("tests.record", self.key, label=label)] = label
        self.sent_at[label] = now

    def between(self, start: float, end: float) -> list[str]:
        return [label for label, at in self.sent_at.items() if start <= at < end]


def cluster_rows(pg: PostgresCluster, ids: Iterable[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """task id -> (status, meta) of the cluster's TaskResult rows; {} while it is away."""
    try:
        with pg.connect() as conn:
            found = conn.execute(
                f"SELECT task_id, status, meta FROM {TABLE} WHERE task_id = ANY(%s)",  # noqa: S608  (the model's table)
                [list(ids)],
            ).fetchall()
    except psycopg.OperationalError:
        return {}
    return {task_id: (status, json.loads(meta or "{}")) for task_id, status, meta in found}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("outage", [30, 120], ids=["30s", "120s"])
def test_runs_go_on_while_postgresql_is_stopped_and_all_are_recorded_once_it_is_back(
    tmp_path: Path, key: str, outage: int
) -> None:
    """A run sent every 0.2 s; PostgreSQL stopped (fast) for the outage, then started again.
    The runs go on meanwhile (their states wait in Redis), the one that needs the database
    retries by its policy, and once it is back every run has its row, once, with its context."""
    client = redis_client()
    order = f"{key}:order"
    sender = Sender(key)
    retried = {"max_retries": 200, "retry_backoff": 1, "retry_backoff_max": 4, "retry_jitter": False}
    with (
        postgres_cluster() as pg,
        recorder(tmp_path, DATABASE_URL=pg.url) as recording,
        bare_worker(tmp_path, *TASKS, DATABASE_URL=pg.url) as proc,
    ):

        def some_recorded() -> bool:
            alive(recording, proc)
            sender()
            return len(cluster_rows(pg, sender.sent)) >= 10

        wait_for(some_recorded, 120, "the first runs to be recorded", interval=0.05)

        pg.stop("fast")
        down_at = time.monotonic()
        executed_before = client.llen(order)
        needy = send("tests.needs_db", key, policy=retried)

        def outage_over() -> bool:
            alive(recording, proc)
            sender()
            return time.monotonic() - down_at >= outage

        wait_for(outage_over, outage + 60, f"{outage}s of outage", interval=0.05)
        up_at = time.monotonic()
        executed = labels(client, order)
        backlog = client.xlen(ledger.STREAM)
        needy_state = ledger.latest(needy)
        assert not pg.answers(), "PostgreSQL came back by itself"
        pg.start()

        # The runs went on: every run sent during the outage, but the last few seconds', ran during it.
        during = sender.between(down_at, up_at)
        assert len(during) >= outage * 2, f"only {len(during)} runs were sent during the outage"
        assert len(executed) - executed_before >= len(during) - 25
        assert set(sender.between(down_at, up_at - 5)) <= set(executed)
        assert backlog > 0  # their states waited in Redis for the recorder
        # The run that needs the database retried by its policy, while the database was away.
        assert needy_state is not None and needy_state.status != "SUCCESS", needy_state
        assert needy_state.context()["attempt"] >= 2, needy_state
        assert int(client.get(f"{key}:runs") or 0) >= 2

        ids = [*sender.sent, needy]

        def all_recorded() -> bool:
            alive(recording, proc)
            found = cluster_rows(pg, ids)
            return len(found) == len(ids) and client.xlen(ledger.STREAM) == 0 and broker_idle(client)

        wait_for(steady(all_recorded, 2), 240, f"the {len(ids)} runs to be recorded", interval=0.5)
        rows = cluster_rows(pg, ids)
        statuses = Counter(status for status, _ in rows.values())
        assert statuses == {"SUCCESS": len(ids)}, statuses  # none left STARTED, PROGRESS or RETRY

    assert Counter(labels(client, order)) == Counter(sender.sent.values())  # each run once, none twice
    for task_id in sender.sent:
        status, meta = rows[task_id]
        assert status == "SUCCESS"
        assert_context(meta, key)
        assert meta["attempt"] == 1, meta
    status, meta = rows[needy]
    assert status == "SUCCESS"
    assert_context(meta, key)
    assert meta["attempt"] > 1
    assert meta["attempt"] == int(client.get(f"{key}:runs") or 0)
    assert [a["state"] for a in meta["attempts"]] == ["RETRY"] * (meta["attempt"] - 1)
    assert all("OperationalError" in (a["error"] or "") for a in meta["attempts"]), meta["attempts"]


# --- 2. The recorder SIGKILLed mid-batch ----------------------------------------------------


@pytest.mark.timeout(900)
def test_a_recorder_sigkilled_mid_batch_leaves_the_batch_to_the_next_one(tmp_path: Path, key: str) -> None:
    """2,000 runs' states waiting in the stream; a recorder (batches of 50) SIGKILLed amid a
    batch; the next one takes the lease when it expires, writes the batch left pending and
    the rest: each run once, the stream and the group's pending list empty."""
    client = redis_client()
    order = f"{key}:order"
    total = 2000
    with bare_worker(tmp_path, *TASKS):
        ids = [send("tests.record", key, label=str(n)) for n in range(total)]
        wait_for(lambda: client.llen(order) >= total, 600, f"{total} runs to be executed", interval=0.5)
        lengths = [client.xlen(ledger.STREAM)]

        def stopped_growing() -> bool:
            lengths.append(client.xlen(ledger.STREAM))
            return lengths[-1] == lengths[-2]

        wait_for(stopped_growing, 60, "the stream to stop growing", interval=1)
    backlog = lengths[-1]
    # A state change of each run at least, none written yet (a run that ends within
    # LEDGER_STARTED_DELAY writes once: its SUCCESS carries its start).
    assert backlog >= total
    assert TaskResult.objects.filter(task_id__in=ids).count() == 0
    fast = {"LEDGER_BATCH": "50", "LEDGER_LEASE_SECONDS": "2"}

    with recorder(tmp_path, **fast) as first:

        def mid_batch() -> bool:
            """A few batches committed, acknowledged and deleted, and one read, not yet acknowledged."""
            left = client.xlen(ledger.STREAM)
            assert left > 0, "the recorder wrote the whole backlog before it could be killed"
            return left <= backlog - 200 and pending(client) > 0

        wait_for(mid_batch, 120, "the recorder to be amid a batch, a few batches in", interval=0.002)
        first.stop(signal.SIGKILL)
    written_by_first = TaskResult.objects.filter(task_id__in=ids).count()
    held = pending(client)  # the batch it was writing, read and not acknowledged (unless it was just done)
    print(f"killed after writing {written_by_first} runs, holding {held} entries")
    assert 0 < written_by_first < total
    assert held <= 50

    with recorder(tmp_path, **fast) as second:

        def drained() -> bool:
            return client.xlen(ledger.STREAM) == 0 and pending(client) == 0

        wait_for(drained, 180, "the second recorder to drain the stream", interval=0.5)
        assert "holds the lease" in second.output
    rows = list(TaskResult.objects.filter(task_id__in=ids))
    assert len(rows) == total
    assert Counter(r.status for r in rows) == {"SUCCESS": total}
    assert all(run_context(r)["attempt"] == 1 for r in rows)
    assert all(r.date_started is not None and r.date_done is not None for r in rows)
    assert client.xlen(ledger.STREAM) == 0 and pending(client) == 0
    assert client.llen(order) == total  # recording ran nothing again


# --- 3. Redis restarted between a run's success and its acknowledgement ---------------------


@pytest.mark.timeout(900)
def test_runs_end_success_with_their_context_across_redis_restarts(tmp_path: Path, key: str) -> None:
    """~200 short runs, Redis restarted twice while they run: first just after a run's
    SUCCESS was stored and before its message was acknowledged (`tests.slow_to_acknowledge`
    holds the acknowledgement back for a second), then at a moment of the load's choosing."""
    total = 200
    with redis_server(tmp_path / "redis") as server, override_settings(REDIS_URL=server.url):
        client = server.client()
        env: OwnRedis = {"REDIS_URL": server.url, "CELERY_VISIBILITY_TIMEOUT": "5", "LEDGER_LEASE_SECONDS": "3"}
        with recorder(tmp_path, **env) as recording, bare_worker(tmp_path, *TASKS, **env) as proc:
            sent: dict[str, str] = {}  # task id -> label
            with current_app.connection_for_write(server.url) as connection:
                for n in range(total):
                    if n == total // 5:
                        finished = send("tests.slow_to_acknowledge", key, label=f"r{n}", connection=connection)
                        sent[finished] = f"r{n}"
                        continue
                    seconds = 0.05 + (n % 4) * 0.05
                    task_id = send("tests.record_slowly", key, label=f"r{n}", seconds=seconds, connection=connection)
                    sent[task_id] = f"r{n}"

            def succeeded() -> bool:
                alive(recording, proc)
                found = ledger.latest(finished, client)
                return found is not None and found.status == "SUCCESS"

            wait_for(succeeded, 240, f"run {finished} to store its SUCCESS", interval=0.02)
            assert client.hlen("unacked") > 0  # its message is not acknowledged yet
            server.restart()
            wait_for(started(client, f"{key}:began", total * 11 // 20), 240, "55% of the runs to start")
            server.restart()

            def settled() -> bool:
                """Every run has its row, and nothing is left to deliver or to record."""
                alive(recording, proc)
                recorded = TaskResult.objects.filter(task_id__in=sent).count() == total
                return recorded and client.xlen(ledger.STREAM) == 0 and broker_idle(client)

            wait_for(steady(settled, 3), 300, f"the {total} runs to be delivered, executed and recorded", interval=0.5)
            began, ended = Counter(labels(client, f"{key}:began")), Counter(labels(client, f"{key}:order"))
            assert proc.output.count("consumer: Connection to broker lost") >= 2  # both restarts were felt

    rows = {r.task_id: r for r in TaskResult.objects.filter(task_id__in=sent)}
    wrong = {sent[task_id]: (r.status, r.result) for task_id, r in rows.items() if r.status != "SUCCESS"}
    assert not wrong, f"{len(wrong)} runs did not end SUCCESS (none may end RETRY, REVOKED or STARTED): {wrong}"
    for task_id, label in sent.items():
        context = run_context(rows[task_id])
        assert_context(context, key)
        assert began[label] >= 1 and ended[label] >= 1, (label, began[label], ended[label])
        # A run cancelled by the connection loss before it finished may run again (its
        # first attempt may have left no state: killed before its held-back STARTED was
        # sent); one whose SUCCESS was stored must not: no earlier attempt ended SUCCESS.
        assert all(a["state"] != "SUCCESS" for a in context["attempts"]), (label, context)
    # The run that had finished when Redis went away: redelivered, acknowledged, not run again.
    assert (began[sent[finished]], run_context(rows[finished])["attempt"]) == (1, 1)
    # How many ran twice depends on where the restarts fall: with the product bugs of the
    # report fixed, 4 of 200 in each of our runs (the two runs each restart interrupted), and
    # never the one that had finished.
    twice = sorted(label for label, count in began.items() if count > 1)
    print(f"{len(twice)} of {total} runs started more than once: {twice}")


def store_success(task_id: str, label: str) -> None:
    """A run's STARTED and SUCCESS as a worker process writes them (to settings.REDIS_URL)."""
    meta = {"trigger": "beat", "schedule": "s", "attempt": 1}
    request = Context(id=task_id, task="tests.record", headers={"beatkeeper": {}}, meta=meta, kwargs={"label": label})
    current_app.backend.store_result(task_id, {"pid": 1, "hostname": "test"}, "STARTED", request=request)
    current_app.backend.store_result(task_id, {"label": label}, "SUCCESS", request=request)


@pytest.mark.timeout(600)
def test_the_recorder_rides_out_a_redis_outage(tmp_path: Path) -> None:
    """Redis away for 20 s: the recorder waits (it logs it) and records again once it is back."""
    before, after = str(uuid.uuid4()), str(uuid.uuid4())
    with redis_server(tmp_path / "redis") as server, override_settings(REDIS_URL=server.url):
        with recorder(tmp_path, REDIS_URL=server.url, LEDGER_LEASE_SECONDS="2") as recording:
            store_success(before, "before")
            wait_for(lambda: TaskResult.objects.filter(task_id=before).exists(), 60, "the first run's row")
            server.stop()
            recording.wait_for_output("Redis is unreachable", 60)

            def up() -> bool:
                alive(recording)
                return True

            wait_for(steady(up, 20), 60, "20 s of Redis outage with the recorder up")
            server.start()
            store_success(after, "after")

            def recorded() -> bool:
                alive(recording)
                return TaskResult.objects.filter(task_id=after, status="SUCCESS").exists()

            wait_for(recorded, 120, "the run after the outage to be recorded")


@override_settings(LEDGER_STARTED_DELAY=0)  # the STARTED is written at once, not held back
def test_a_retry_written_after_a_lost_connection_does_not_undo_a_success() -> None:
    """What the worker's main process does after a connection loss: it marks the runs it
    held as RETRY ("cancelled by Celery"), with no context of its own, though one of
    them may have finished. The first final state of the attempt stays."""
    task_id = str(uuid.uuid4())
    header = {"trigger": "beat", "schedule": "s"}
    meta = {"trigger": "beat", "schedule": "s", "attempt": 1}
    running = Context(id=task_id, task="tests.record", headers={"beatkeeper": header}, meta=meta, kwargs={"label": "x"})
    backend = current_app.backend
    backend.store_result(task_id, {"pid": 1, "hostname": "test"}, "STARTED", request=running)
    backend.store_result(task_id, {"label": "x"}, "SUCCESS", request=running)
    main_process = Context(id=task_id, task="tests.record", headers={"beatkeeper": header})
    backend.mark_as_retry(task_id, Retry("cancelled by Celery"), request=main_process)
    assert AsyncResult(task_id).state == "SUCCESS"

    recording = Recorder(block_ms=50)
    wait_for(recording.lead, 60, "the recorder's lease")
    try:

        def written() -> TaskResult | None:
            assert recording.lead(), "lost the lease"
            recording.step()
            return TaskResult.objects.filter(task_id=task_id).first()

        row = wait_for(written, 60, f"run {task_id} to be recorded", interval=0.05)
    finally:
        recording.release()
    assert row.status == "SUCCESS"
    assert row.result is not None and json.loads(row.result) == {"label": "x"}
    context = run_context(row)
    assert (context["trigger"], context["schedule"], context["attempt"]) == ("beat", "s", 1)
    assert AsyncResult(task_id).state == "SUCCESS"
