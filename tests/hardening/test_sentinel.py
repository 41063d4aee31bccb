"""Redis that fails over (Sentinel) and Redis that restarts empty, with real servers of the
test's own (tests/hardening/sentinel_servers.py) and real beat, worker and recorder processes.

What was sent is read twice: from the beats' logs ("Sending due task <name> (...) for
<slot>", one line per message published) and from the runs the worker ran and the
recorder wrote (TaskResult, the slot in the run's meta). A slot sent twice shows as two log
lines or two runs with the same schedule and slot; a slot missed as a gap in the anchored
interval sequence; a run lost as a logged send that never ends as a SUCCESS row.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from collections.abc import Iterable
from contextlib import ExitStack
from itertools import pairwise
from pathlib import Path
from typing import TypedDict, cast

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult
from redis.sentinel import SentinelConnectionPool

from project import env
from scheduler_app.beat import leader
from scheduler_app.connection import redis_client
from scheduler_app.models import SchedulePolicy
from scheduler_app.monitoring import readiness
from scheduler_app.runs import locks
from tests.hardening.sentinel_servers import SERVICE, bare_redis, replicated_redis
from tests.processes import Process, beat, process_env, wait_for, worker

SECOND = dt.timedelta(seconds=1)
TASK = "maintenance.purge_expired_sessions"  # a platform task that takes milliseconds
SEND = re.compile(r"Sending due task (\S+) \(.*?\) for (\S+)")
LEASE = 3  # BEAT_LEASE_SECONDS: shorter than the failover, so the lease itself changes hands too


class ProcessEnv(TypedDict):
    """The processes' environment (a TypedDict: `**` of it fills no `concurrency`)."""

    REDIS_URL: str
    BEAT_LEASE_SECONDS: str
    CELERY_VISIBILITY_TIMEOUT: str  # a message held by a worker cut off comes back after 5 s, not 300


def process_environ(url: str) -> ProcessEnv:
    return {"REDIS_URL": url, "BEAT_LEASE_SECONDS": str(LEASE), "CELERY_VISIBILITY_TIMEOUT": "5"}


Slot = tuple[str, dt.datetime]


# --- REDIS_URL=sentinel://... at start-up ------------------------------------------------------


def test_it_reads_the_sentinels_the_service_and_the_credentials_from_a_sentinel_url() -> None:
    found = env.sentinel("sentinel://:s3cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/2?service_name=mymaster"
                         "&sentinel_password=other")  # fmt: skip
    assert found == env.SentinelURL(
        hosts=(("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380)),
        service_name="mymaster",
        db=2,
        password="s3cret",
        sentinel_password="other",
    )


def test_it_gives_celery_the_sentinels_in_kombus_spelling_with_the_service_as_master_name() -> None:
    url = "sentinel://:s3cret@h1:26379,h2:26380/3?service_name=mymaster&sentinel_password=other"
    assert env.broker_url(url) == "sentinel://:s3cret@h1:26379/3;sentinel://:s3cret@h2:26380/3"
    options = env.broker_transport_options(url, socket_timeout=5)
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"] == {"socket_connect_timeout": 3, "socket_timeout": 5, "password": "other"}
    assert env.broker_transport_options("redis://h1:6379/0", socket_timeout=5) == {}


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sentinel://h1:26379/0", "names no service"),
        ("sentinel://h1:26379/0?service_name=", "names no service"),
        ("sentinel:///0?service_name=m", "names no sentinel"),
        ("sentinel://h1:notaport/0?service_name=m", "has port 'notaport' for sentinel h1"),
        ("sentinel://h1:99999/0?service_name=m", "has port '99999' for sentinel h1"),
        ("sentinel://h1,,h2/0?service_name=m", "has '' where a sentinel's host[:port] belongs"),
        ("sentinel://h1/zero?service_name=m", "has database 'zero'"),
        ("sentinel://h1/0?master_name=m", "unknown option(s) master_name"),
    ],
)
def test_it_refuses_a_broken_sentinel_url_naming_redis_url(
    url: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(ImproperlyConfigured) as refused:
        env.redis_url("REDIS_URL", "unix:///unused.sock")
    assert str(refused.value).startswith("REDIS_URL=")
    assert says in str(refused.value)
    assert "sentinel://[:password@]host1:26379,host2:26379/0?service_name=mymaster" in str(refused.value)


def test_it_hides_both_passwords_when_it_names_a_sentinel_url() -> None:
    shown = env.redact("sentinel://:s3cret@h1/0?service_name=m&sentinel_password=other")
    assert "s3cret" not in shown
    assert "other" not in shown


def test_manage_check_refuses_a_sentinel_url_without_a_service(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.processes import ROOT

    environ = process_env(REDIS_URL="sentinel://127.0.0.1:26379/0", DJANGO_SETTINGS_MODULE="project.settings.base",
                          SECRET_KEY="x" * 50, BEATKEEPER_VAR_DIR=str(tmp_path))  # fmt: skip
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode != 0
    assert "REDIS_URL='sentinel://127.0.0.1:26379/0' names no service" in done.stderr


# --- every client follows the primary -------------------------------------------------------


def until_it_answers(action: str, call: object, timeout: float = 20) -> object:
    """Call `call` until it stops raising RedisError (the failover's seconds), with a deadline."""

    def attempt() -> tuple[object] | None:
        try:
            return (call(),)  # type: ignore[operator]  # a tuple: truthy whatever the call answers
        except redis.RedisError:
            return None

    return wait_for(attempt, timeout, f"{action} to work again after the failover", interval=0.05)[0]


@pytest.mark.parametrize("how", ["the primary is killed", "the sentinel fails over while the primary lives"])
def test_every_redis_client_follows_the_primary_the_sentinel_promotes(tmp_path: Path, how: str) -> None:
    """Clients made before the failover (a lease held, a lock, a probe, the run ledger's
    and the recorder's) go on against the new primary; a primary that was demoted but
    still answers refuses writes (READONLY), which redis-py turns into a reconnection."""
    with replicated_redis(tmp_path) as servers, override_settings(REDIS_URL=servers.url):
        client = redis_client()
        lease = leader.Lease(ttl=30, client=client)
        assert lease.hold()
        ledger = leader.SlotLedger(lease)
        assert ledger.claim([(1, timezone.now())]) == [True]
        lock = locks.OverlapLock("hardening-d", owner="run-1", ttl=30)
        assert lock.acquire()
        wait_for(lambda: servers.replica.client().exists(leader.MARKS_KEY, locks.lock_key("hardening-d")) == 2, 10,
                 "the replica to have the marks and the lock")  # fmt: skip
        old_primary = servers.primary.port

        if how == "the primary is killed":
            servers.primary.kill()
            servers.wait_for_promotion()
        else:  # connections already open go on writing to the old primary until the sentinel
            # demotes it, at its next INFO of it (up to 10 s): what they wrote then is lost
            servers.sentinel.client().sentinel_failover(SERVICE)
            servers.wait_for_promotion()
            wait_for(lambda: servers.primary.client().info("replication")["role"] == "slave", 20,
                     "the sentinel to demote the old primary")  # fmt: skip

        assert until_it_answers("the lease", lease.hold) is True  # still ours: the replica had it
        slot = timezone.now()
        assert until_it_answers("a claim", lambda: ledger.claim([(1, slot), (2, slot)])) == [True, True]
        assert until_it_answers("the lock", lock.holder) == "run-1"
        lock.release()
        assert lock.holder() is None
        assert readiness.check_broker().ok
        pool = cast(SentinelConnectionPool, client.connection_pool)
        assert pool.get_master_address()[1] == servers.replica.port != old_primary  # type: ignore[no-untyped-call]
        assert servers.replica.client().hget(leader.MARKS_KEY, 2) == str(leader.to_us(slot)).encode()
        if how != "the primary is killed":  # the old primary lives on as a replica of the new one
            demoted = redis.Redis(port=old_primary)
            with pytest.raises(redis.exceptions.ReadOnlyError):
                demoted.set("x", "1")  # a plain client of it is refused; ours above moved on


# --- under load: beat, worker and recorder through a failover --------------------------------


def schedules(*every: int) -> dict[str, dt.timedelta]:
    names = {}
    for n, seconds in enumerate(every):
        interval = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)[0]
        name = f"failover-{n}-every-{seconds}s"
        task = PeriodicTask.objects.create(name=name, task=TASK, interval=interval)
        # Overlap is not what this test is about: a run slowed by a busy machine past the next
        # second would make that slot SKIPPED (correctly) and read here as a failure.
        SchedulePolicy.objects.create(periodic_task=task, overlap="allow")
        names[name] = seconds * SECOND
    return names


def logged_sends(beats: Iterable[Process]) -> Counter[Slot]:
    """Every message the beats published, by schedule and slot, from their logs."""
    found: Counter[Slot] = Counter()
    for b in beats:
        for name, slot in SEND.findall(b.output):
            found[name, dt.datetime.fromisoformat(slot)] += 1
    return found


def runs() -> dict[Slot, list[TaskResult]]:
    """The runs the recorder wrote, by schedule and the slot in their meta."""
    found: dict[Slot, list[TaskResult]] = {}
    for row in TaskResult.objects.filter(task_name=TASK):
        meta = json.loads(row.meta or "{}")
        if meta.get("trigger") == "beat":
            found.setdefault((meta["schedule"], dt.datetime.fromisoformat(meta["scheduled_for"])), []).append(row)
    return found


def ran_after(names: Iterable[str], moment: dt.datetime) -> bool:
    done = {name for (name, slot), rows in runs().items() if slot > moment and rows[0].status == "SUCCESS"}
    return set(names) <= done


def gaps(sent: Iterable[Slot], names: dict[str, dt.timedelta]) -> list[str]:
    """Slots missing from each schedule's anchored sequence."""
    missing = []
    for name, every in names.items():
        ordered = sorted(slot for n, slot in sent if n == name)
        missing += [f"{name}: {a:%T} -> {b:%T}" for a, b in pairwise(ordered) if b - a != every]
    return missing


def lateness(rows: dict[Slot, list[TaskResult]], start: dt.datetime, end: dt.datetime) -> float:
    """How late the worst slot due in [start, end] was queued, in seconds."""
    late = [(dt.datetime.fromisoformat(json.loads(row.meta or "{}")["queued_at"]) - slot).total_seconds()
            for (_, slot), found in rows.items() if start <= slot <= end for row in found]  # fmt: skip
    return max(late, default=0.0)


@pytest.mark.django_db(transaction=True)
def test_it_sends_each_slot_once_when_the_primary_dies_under_load_and_the_replica_takes_over(tmp_path: Path) -> None:
    """Two beats (leader and standby, 3 s lease), a worker and a recorder on a sentinel URL;
    the primary is SIGKILLed while schedules every 1-2 s run, the sentinel promotes the
    replica, and everything runs on it for 15 s more."""
    names = schedules(1, 1, 2)
    with ExitStack() as stack:
        servers = stack.enter_context(replicated_redis(tmp_path / "redis"))
        stack.enter_context(override_settings(REDIS_URL=servers.url))
        environ = process_environ(servers.url)
        stack.enter_context(worker(tmp_path, **environ))
        beats = [stack.enter_context(beat(tmp_path, f"beat-{n}", **environ)) for n in range(2)]
        started = timezone.now()
        wait_for(lambda: ran_after(names, started + 2 * SECOND), 30, "runs before the failover")

        killed = timezone.now()
        servers.primary.kill()
        servers.wait_for_promotion()
        promoted = timezone.now()
        wait_for(lambda: ran_after(names, promoted + 15 * SECOND), 60, "runs 15 s after the failover")
        for b in beats:
            b.stop()
        sent = logged_sends(beats)
        wait_for(lambda: all(runs().get(s, [None])[0] is not None for s in sent) or None, 20, "every send run")
        recorded = runs()

    twice = sorted(f"{n} {s:%T}" for (n, s), count in sent.items() if count > 1)
    twice += sorted(f"{n} {s:%T} ran as {len(rows)} runs" for (n, s), rows in recorded.items() if len(rows) > 1)
    lost = sorted(f"{n} {s:%T}" for (n, s) in sent if (n, s) not in recorded)
    failed = sorted(f"{n} {s:%T} {rows[0].status}" for (n, s), rows in recorded.items() if rows[0].status != "SUCCESS")
    window = f"killed {killed:%T.%f}, promoted {promoted:%T.%f}"
    figures = (f"{window}; {len(sent)} slots sent, twice: {twice}, missed: {gaps(sent, names)}, lost: {lost}, "
               f"not successful: {failed}, worst lateness around the failover: "
               f"{lateness(recorded, killed - 2 * SECOND, promoted + 2 * SECOND):.1f}s")  # fmt: skip
    print(figures)
    spins = sum(b.output.count("cannot claim") for b in beats)  # a refused claim waits before the next try
    assert spins <= 2 * ((promoted - killed).total_seconds() / 0.5 + 4), f"beat tried {spins} claims; {figures}"
    assert not twice, figures
    assert not gaps(sent, names), figures  # slots due during the failover went out late, within the grace
    assert not lost and not failed, figures
    assert (
        lateness(recorded, killed - 2 * SECOND, promoted + 2 * SECOND) < (promoted - killed).total_seconds() + LEASE + 3
    )


# --- a Redis restarted without persistence ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_after_a_restart_without_persistence_beat_goes_on_and_sends_no_slot_again(tmp_path: Path) -> None:
    """The server comes back empty: no lease, no marks, no fence, no queues, no ledger
    stream. The beat takes the lease again (fencing token 1) and goes on from the slots it
    holds in memory, so nothing already sent is sent again; the worker and the recorder
    reconnect and go on."""
    names = schedules(1, 1)
    with ExitStack() as stack:
        server = stack.enter_context(bare_redis(tmp_path / "redis"))
        stack.enter_context(override_settings(REDIS_URL=server.url))
        environ = process_environ(server.url)
        stack.enter_context(worker(tmp_path, **environ))
        the_beat = stack.enter_context(beat(tmp_path, **environ))
        started = timezone.now()
        wait_for(lambda: ran_after(names, started + 2 * SECOND), 30, "runs before the restart")
        assert server.client().hlen(leader.MARKS_KEY) == len(names)

        server.restart_empty()
        restarted = timezone.now()
        assert server.client().dbsize() == 0
        wait_for(lambda: ran_after(names, restarted + 5 * SECOND), 40, "runs after the restart")
        the_beat.stop()
        sent = logged_sends([the_beat])
        recorded = runs()
        assert server.client().hlen(leader.MARKS_KEY) == len(names)  # the marks are back, from the new claims

    twice = sorted(f"{n} {s:%T}" for (n, s), count in sent.items() if count > 1)
    twice += sorted(f"{n} {s:%T} ran as {len(rows)} runs" for (n, s), rows in recorded.items() if len(rows) > 1)
    unrecorded = sorted(f"{n} {s:%T}" for (n, s) in sent if (n, s) not in recorded)
    figures = (f"restarted {restarted:%T.%f}; {len(sent)} slots sent, twice: {twice}, missed: {gaps(sent, names)}, "
               f"sent but not recorded: {unrecorded}")  # fmt: skip
    print(figures)
    assert not twice, figures
    assert not gaps(sent, names), figures  # slots due while Redis was away went out late
    assert "lost the lease" in the_beat.output  # the empty server had no lease: it took a new one
    assert the_beat.output.count("is now the leader (fencing token 1)") == 2
    assert len(unrecorded) <= 2, figures  # at most what was queued or unrecorded at the restart
