"""Run states: Celery's own plus the platform's, and which of them are final."""

from __future__ import annotations

from celery import states

SKIPPED = "SKIPPED"  # not executed: the previous run of the schedule still held its lock
EXPIRED = "EXPIRED"  # not executed: not started before its expiry time

TERMINAL_STATES = frozenset(states.READY_STATES | {SKIPPED, EXPIRED})
