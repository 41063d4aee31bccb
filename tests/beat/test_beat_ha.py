"""Several beats, failover, edits and restarts with real `celery beat` processes, real Redis
and real signals (in-process scheduler tests: tests/beat/test_beat.py).

What beat sent is read straight from the broker: no worker runs, so every message beat
published stays on the queue lists (`celery*`), and its `beatkeeper` header says which
schedule and slot it is for and when it was queued. A slot sent twice shows as two
messages with the same `scheduled_for`; a lost slot as a gap in the anchored sequence.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from scheduler_app.beat import leader
from tests.processes import Process, beat, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SECOND = dt.timedelta(seconds=1)
LEASE = 3  # BEAT_LEASE_SECONDS of the failover tests
CHECK = 1  # BEAT_CHECK_SECONDS (the default)
# The bounds below come from these settings, with slack for a loaded machine (2 cores, other
# test runs beside): a beat process can be seconds late there, through no fault of its own.
# A follower takes over within LEASE + CHECK of the leader's death (the lease runs out, the
# next check sees it); the bound adds one lease more, and stays under the default lease
# (10 s), which a follower that ignored BEAT_LEASE_SECONDS would wait.
TAKEOVER = 2 * LEASE + CHECK
# A running beat acts on an edit at its next check ("about a second"): one check, and two of slack.
PICKUP = 3.0 * CHECK
WAIT = 30  # seconds a test waits for what should come (a deadline, not a bound it asserts)
FAST_LEASE = {"BEAT_LEASE_SECONDS": str(LEASE)}


# --- what beat sent ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    schedule: str
    scheduled_for: dt.datetime
    queued_at: dt.datetime


def broker() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5)


def published() -> list[Sent]:
    """Every message beat put on the queues (all priority lists of every queue)."""
    client = broker()
    found = []
    for key in client.scan_iter(match="celery*"):
        if client.type(key) != b"list":
            continue
        for raw in client.lrange(key, 0, -1):
            context = json.loads(raw)["headers"].get("beatkeeper") or {}
            if context.get("trigger") == "beat":
                found.append(
                    Sent(
                        context["schedule"],
                        dt.datetime.fromisoformat(context["scheduled_for"]),
                        dt.datetime.fromisoformat(context["queued_at"]),
                    )
                )
    return found


def sent(name: str) -> list[Sent]:
    return sorted((s for s in published() if s.schedule == name), key=lambda s: (s.scheduled_for, s.queued_at))


def slots(name: str) -> list[dt.datetime]:
    """The slots sent for a schedule, in order, a slot sent twice listed twice."""
    return [s.scheduled_for for s in sent(name)]


def slots_after(name: str, moment: dt.datetime, count: int) -> list[dt.datetime] | None:
    """The slots sent for `name`, once at least `count` of them are later than `moment`."""
    found = slots(name)
    return found if sum(slot > moment for slot in found) >= count else None


def who_sent(beats: list[Process], name: str) -> str:
    """From the beats' logs: which beat sent which slot, for failure messages."""
    pattern = re.compile(rf"Sending due task {re.escape(name)} \(.*?\) for (\S+)")
    lines = sorted((slot, b.name) for b in beats for slot in pattern.findall(b.output))
    return "\n".join(f"  {slot} by {by}" for slot, by in lines) or "  (nothing in the logs)"


def assert_each_slot_sent_once(name: str, found: list[dt.datetime], every: dt.timedelta, beats: list[Process]) -> None:
    twice = sorted(slot.isoformat() for slot, n in Counter(found).items() if n > 1)
    assert not twice, f"{name}: slots sent more than once: {twice}\nsends in the logs:\n{who_sent(beats, name)}"
    gaps = [
        f"{a.isoformat()} -> {b.isoformat()} ({(b - a) / every - 1:g} missing)"
        for a, b in pairwise(found)
        if b - a != every
    ]
    assert not gaps, f"{name}: slots lost: {gaps}\nsends in the logs:\n{who_sent(beats, name)}"


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def empty_broker() -> Iterator[None]:
    """Each test starts with empty queues and no lease, marks or heartbeat of an earlier one."""

    def empty() -> None:
        client = broker()
        for pattern in ("celery*", "beatkeeper:*"):
            for key in client.scan_iter(match=pattern):
                client.delete(key)

    empty()
    yield
    empty()


def interval(seconds: int, *, shared: bool = True) -> IntervalSchedule:
    if shared:
        return IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)[0]
    return IntervalSchedule.objects.create(every=seconds, period=IntervalSchedule.SECONDS)


def schedule(name: str, every: IntervalSchedule, last_run_at: dt.datetime | None = None) -> PeriodicTask:
    return PeriodicTask.objects.create(
        name=name, task="maintenance.purge_expired_sessions", interval=every, last_run_at=last_run_at
    )


def leading(beats: list[Process]) -> Process:
    """The beat that holds the lease now (its log names the node the lease key names)."""

    def holder() -> Process | None:
        value = cast("bytes | None", broker().get(leader.LEASE_KEY))  # broker() does not decode
        if value is None:
            return None
        node = value.decode().split(":", 1)[1]
        return next((b for b in beats if f"beat {node} is now the leader" in b.output), None)

    return wait_for(holder, WAIT, "a leading beat")


def leader_line(b: Process) -> int:
    return b.output.count("is now the leader")


def start_beats(stack: ExitStack, tmp_path: Path, count: int, **env: str) -> list[Process]:
    return [stack.enter_context(beat(tmp_path, name=f"beat-{n}", **env)) for n in range(1, count + 1)]


def now() -> dt.datetime:
    return timezone.now()


# --- several beats ----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3])
def test_it_sends_each_slot_once_with_several_beats_running(tmp_path: Path, count: int) -> None:
    with ExitStack() as stack:
        beats = start_beats(stack, tmp_path, count)
        task = schedule("every second", interval(1))  # created with every beat running: all read it
        found = wait_for(lambda: slots_after("every second", task.date_changed, 8), WAIT, "8 slots")

        def everyone_beats() -> dict[str, Any] | None:
            facts = leader.heartbeat()
            return facts if len(facts["beats"]) == count else None

        facts = wait_for(everyone_beats, WAIT, f"a heartbeat from each of the {count} beats")
        the_leader = leading(beats)
        # checked before the beats stop: a follower may lead while the others shut down
        assert found[0] == task.date_changed + SECOND, "the first slot was not sent"
        assert_each_slot_sent_once("every second", found, SECOND, beats)
        roles = sorted(b["role"] for b in facts["beats"])
        assert roles == ["follower"] * (count - 1) + ["leader"], facts
        assert [b["node"] for b in facts["beats"] if b["role"] == "leader"] == [facts["leader"]]
        assert [b.name for b in beats if "Sending due task" in b.output] == [the_leader.name]
        assert sum(leader_line(b) for b in beats) == 1, "the lease changed hands"


# --- failover -----------------------------------------------------------------------------------


def two_beats_sending(stack: ExitStack, tmp_path: Path) -> tuple[list[Process], Process, Process]:
    """Two beats with a short lease, a schedule every second sent 3 times: (beats, leader, follower)."""
    schedule("every second", interval(1))
    beats = start_beats(stack, tmp_path, 2, **FAST_LEASE)
    wait_for(lambda: len(slots("every second")) >= 3, WAIT, "3 slots")
    first = leading(beats)
    (other,) = [b for b in beats if b is not first]
    return beats, first, other


def test_it_fails_over_when_the_leader_is_killed_without_losing_or_doubling_a_slot(tmp_path: Path) -> None:
    with ExitStack() as stack:
        beats, dead, heir = two_beats_sending(stack, tmp_path)
        last_before = slots("every second")[-1]
        dead.stop(signal.SIGKILL)
        killed_at = now()  # once it is gone: whatever was queued later, the heir queued
        wait_for(lambda: leader_line(heir), WAIT, "the follower to take over")
        found = wait_for(lambda: slots_after("every second", killed_at + (LEASE + 2) * SECOND, 3), WAIT, "3 more slots")
        # when the heir took over, by its own clock: its first send (the slots that fell due meanwhile)
        took_over = (
            min(s.queued_at for s in sent("every second") if s.queued_at > killed_at) - killed_at
        ).total_seconds()
        assert took_over <= TAKEOVER, f"took over {took_over:.1f}s after the kill"
        late = [s for s in sent("every second") if last_before < s.scheduled_for <= killed_at + LEASE * SECOND]
        assert late, "no slot that fell due while the lease ran out was sent"
        assert all(s.queued_at - s.scheduled_for < TAKEOVER * SECOND for s in late), late
        assert_each_slot_sent_once("every second", found, SECOND, beats)


def test_it_fails_over_when_the_leader_hangs_and_the_old_leader_sends_nothing_when_it_wakes(tmp_path: Path) -> None:
    with ExitStack() as stack:
        beats, hung, heir = two_beats_sending(stack, tmp_path)
        hung.proc.send_signal(signal.SIGSTOP)
        try:
            stopped_at = now()
            wait_for(lambda: leader_line(heir), WAIT, "the follower to take over")
            wait_for(
                lambda: slots_after("every second", stopped_at + (LEASE + 2) * SECOND, 2), WAIT, "slots by the heir"
            )
            sent_by_hung = hung.output.count("Sending due task")
        finally:
            hung.proc.send_signal(signal.SIGCONT)
        resumed_at = now()
        hung.wait_for_output("lost the lease", timeout=WAIT)
        found = wait_for(lambda: slots_after("every second", resumed_at, 4), WAIT, "4 slots after the resume")
        assert hung.proc.poll() is None, "the resumed beat died"
        assert hung.output.count("Sending due task") == sent_by_hung, "the resumed beat sent again"
        assert leading(beats) is heir
        assert_each_slot_sent_once("every second", found, SECOND, beats)


# --- edits reach a running beat ----------------------------------------------------------------


def test_it_follows_edits_disables_enables_and_deletes_within_about_a_second(tmp_path: Path) -> None:
    schedule("ticker", interval(1))  # a clock: its slots say how much time has passed
    own = interval(1, shared=False)
    pk = schedule("edited", own).pk

    def fresh() -> PeriodicTask:  # as the admin edits: the row as it is now, with beat's last_run_at
        return PeriodicTask.objects.get(pk=pk)

    def ticked(after: dt.datetime, more: int) -> None:
        wait_for(lambda: slots_after("ticker", after, more), more + WAIT, f"{more} ticks after {after}")

    def sent_after(moment: dt.datetime) -> list[Sent]:
        return [s for s in sent("edited") if s.queued_at > moment]

    def assert_runs_every(seconds: int) -> None:
        """Two slots after the edit settled, every `seconds` apart."""
        settled = now() + PICKUP * SECOND
        found = wait_for(lambda: slots_after("edited", settled, 2), 2 * seconds + WAIT, f"2 slots {seconds}s apart")
        after = [(a, b) for a, b in pairwise(found) if b > settled]
        assert all(b - a == seconds * SECOND for a, b in after), (
            f"not every {seconds}s {PICKUP}s after the edit: {found}"
        )

    with beat(tmp_path) as b:
        wait_for(lambda: len(slots("edited")) >= 2, WAIT, "runs every second")

        # the interval's own row: 1 s -> 2 s
        own.every = 2
        own.save()
        assert_runs_every(2)

        # the schedule's interval: another row, every 3 s
        task = fresh()
        task.interval = interval(3)
        task.save()
        assert_runs_every(3)

        # disabled: nothing more
        task = fresh()
        task.enabled = False
        task.save()
        disabled_at = now()
        ticked(disabled_at + PICKUP * SECOND, 4)
        assert sent_after(disabled_at + PICKUP * SECOND) == [], "sent after it was disabled"

        # enabled again: runs again
        task = fresh()
        task.enabled = True
        task.save()
        enabled_at = now()
        first = wait_for(lambda: sent_after(enabled_at), WAIT, "a run after enabling")[0]
        delay = (first.queued_at - enabled_at).total_seconds()  # by beat's clock: the test's own pace is no part of it
        assert delay <= PICKUP, f"sent {delay:.1f}s after it was enabled"

        # deleted: nothing more, and its mark is gone
        fresh().delete()
        deleted_at = now()
        wait_for(lambda: not broker().hexists(leader.MARKS_KEY, pk), WAIT, "its slot mark to be dropped")
        ticked(deleted_at + PICKUP * SECOND, 4)
        assert sent_after(deleted_at + PICKUP * SECOND) == [], "sent after it was deleted"
        assert b.proc.poll() is None
    assert_each_slot_sent_once("ticker", slots("ticker"), SECOND, [b])


# --- a long interval across restarts -------------------------------------------------------------


def test_it_sends_an_hourly_slot_once_across_a_graceful_restart(tmp_path: Path) -> None:
    last_run_at = now() - dt.timedelta(minutes=59, seconds=58)
    task = schedule("hourly", interval(3600), last_run_at=last_run_at)
    schedule("ticker", interval(1))
    with beat(tmp_path, name="first") as first:
        (hourly,) = wait_for(lambda: slots("hourly"), WAIT, "the hourly slot")
    assert hourly == last_run_at + dt.timedelta(hours=1)
    task.refresh_from_db()
    assert task.last_run_at == hourly  # written when beat stopped
    with beat(tmp_path, name="second") as second:
        restarted_at = now()
        wait_for(lambda: slots_after("ticker", restarted_at, 3), WAIT, "3 ticks after the restart")
    assert slots("hourly") == [hourly], who_sent([first, second], "hourly")
    assert "Sending due task hourly" not in second.output


def test_it_sends_an_hourly_slot_once_when_beat_is_killed_before_writing_it(tmp_path: Path) -> None:
    last_run_at = now() - dt.timedelta(minutes=59, seconds=58)
    task = schedule("hourly", interval(3600), last_run_at=last_run_at)
    schedule("ticker", interval(1))
    # Housekeeping (and so the write of last_run_at) every 8 s: the kill surely comes first.
    slow = {"BEAT_CHECK_SECONDS": "8", "BEAT_LEASE_SECONDS": "10"}
    with beat(tmp_path, name="first", **slow) as first:
        (hourly,) = wait_for(lambda: slots("hourly"), WAIT, "the hourly slot")
        first.stop(signal.SIGKILL)
    assert hourly == last_run_at + dt.timedelta(hours=1)
    task.refresh_from_db()
    assert task.last_run_at == last_run_at, "beat wrote last_run_at before it was killed: the test proves nothing"
    with beat(tmp_path, name="second") as second:
        second.wait_for_output("is now the leader", timeout=WAIT)  # once the dead beat's lease ran out
        led_at = now()
        wait_for(lambda: slots_after("ticker", led_at, 3), WAIT, "3 ticks after the restart")
    assert slots("hourly") == [hourly], who_sent([first, second], "hourly")
    assert "Sending due task hourly" not in second.output
