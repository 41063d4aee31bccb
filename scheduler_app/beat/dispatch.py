"""Sending due slots under the leader's lease: claim (the fencing check), then publish.

Claims happen in chunks of `CHUNK`, with the lease renewed between chunks: a long
dispatch keeps its leadership, and a leader stopped mid-way has claimed no more than it
sent. A slot claimed but not sent (the broker refused) stays this beat's to send. A stop
signal (SIGTERM, SIGINT) waits for the chunk at hand: raised in the middle of a claim or a
send, Celery's SystemExit would leave claimed slots unsent, marked as sent, so never sent.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

import redis
from django.utils import timezone

from scheduler_app.beat import leader
from scheduler_app.beat.due import DueHeap
from scheduler_app.beat.entries import Entry, Send
from scheduler_app.beat.planning import Planner

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)
CHUNK = 200  # slots claimed, then sent, at a time
CLAIM_RETRY = 0.5  # seconds between claims while Redis does not answer (a failover, a restart)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT wait until the block is done, then reach their handlers (Celery
    beat's: sync, then SystemExit). Only the main thread handles signals: elsewhere
    (an embedded beat's thread) nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, FrameType | None]] = []
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    held = [sig for sig, handler in before.items() if handler is not None]  # None: not set from Python
    for sig in held:
        signal.signal(sig, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        for sig in held:
            signal.signal(sig, before[sig])
        for signum, frame in caught[:1]:
            handler = before[signal.Signals(signum)]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


class Dispatcher:
    def __init__(
        self,
        app: Celery,
        planner: Planner,
        heap: DueHeap,
        ledger: leader.SlotLedger,
        still_leading: Callable[[], bool],
        send_task: Callable[..., Any],
    ) -> None:
        self.app = app
        self.send_task = send_task  # the scheduler's send_task: Celery's hook for a subclass
        self.planner = planner
        self.heap = heap
        self.ledger = ledger
        self.lease = ledger.lease
        self.still_leading = still_leading  # renews the lease when it is time; False once lost
        self.unsent: list[Send] = []  # claimed but not sent (the broker was down): ours to send, leader or not
        self.lag = 0.0  # how late the latest batch's worst slot went out, in seconds
        self.paused_until = 0.0  # monotonic time before which no claim is tried (Redis refused the last)
        self.sent = 0

    def dispatch(self, due: list[Entry], now: dt.datetime) -> None:
        for start in range(0, len(due), CHUNK):
            if start and not self.still_leading():
                rest = due[start:]
            elif not self._dispatch_chunk(due[start : start + CHUNK], now):  # it put its own chunk back
                rest = due[start + CHUNK :]
            else:
                continue
            for entry in rest:  # not decided: as they were, for whoever leads
                self.heap.push(entry)
            return

    def _dispatch_chunk(self, due: list[Entry], now: dt.datetime) -> bool:
        with stop_signals_held():  # what this chunk claims, it sends
            return self._claim_and_send(due, now)

    def _claim_and_send(self, due: list[Entry], now: dt.datetime) -> bool:
        sends = [send for entry in due if (send := self.planner.decide_safely(entry, now)) is not None]
        try:
            granted = self.ledger.claim([(s.entry.pk, s.slot) for s in sends])
        except leader.NotLeader:
            logger.warning("beat %s lost the lease before sending; the new leader sends these", self.lease.node)
            self.lease.release()
            self.planner.requeue(sends)
            return False
        except redis.RedisError as exc:
            logger.warning("beat cannot claim %d due slots (Redis: %s); trying again in %gs", len(sends), exc,
                           CLAIM_RETRY)  # fmt: skip
            self.paused_until = time.monotonic() + CLAIM_RETRY
            self.planner.requeue(sends)
            return False
        claimed = []
        for send, ok in zip(sends, granted, strict=True):
            self.planner.advance(send, now, ran=ok)  # not granted: another beat sent this slot already
            claimed += [send] if ok else []
        self.publish(claimed)
        return True

    def pause(self) -> float:
        """Seconds until the next claim may be tried: not at once after Redis refused one."""
        return max(0.0, self.paused_until - time.monotonic())

    def resend_unsent(self) -> None:
        if self.unsent:
            unsent, self.unsent = self.unsent, []
            self.publish(unsent)

    def publish(self, sends: list[Send]) -> None:
        """Send what was claimed. Stopped by SIGTERM mid-way (Celery raises SystemExit), it
        first sends the rest of what it claimed: those slots are no other beat's to send."""
        if not sends:
            return
        worst, stopping = 0.0, None
        with self.app.producer_or_acquire() as producer:
            for send in sends:
                try:
                    if self._send_one(send, producer):
                        worst = max(worst, (timezone.now() - send.moment).total_seconds())
                except (SystemExit, KeyboardInterrupt) as exc:  # the interrupted one may have gone: not again
                    stopping = exc
        self.lag = worst
        self.sent += len(sends)
        if stopping is not None:
            raise stopping

    def _send_one(self, send: Send, producer: Any) -> bool:
        entry = send.entry
        try:
            args, kwargs = entry.args, entry.kwargs
        except ValueError as exc:  # not the broker's fault: trying again would not help
            logger.error(
                "schedule %s has arguments that are not JSON (%s): not sent; fix it in the admin", entry.name, exc
            )
            return False
        try:
            self.send_task(entry.task, args, kwargs, producer=producer, **entry.message_options(send.slot, send.at))
        except Exception as exc:  # noqa: BLE001  (a failed send must not stop the others)
            logger.error("could not send %s for %s: %r; trying again", entry.name, send.slot.isoformat(), exc)
            self.unsent.append(send)
            return False
        logger.info("Scheduler: Sending due task %s (%s) for %s", entry.name, entry.task, send.moment.isoformat())
        return True
