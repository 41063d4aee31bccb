"""Run states: Celery's own plus the platform's, and which of them are final."""

from __future__ import annotations

from celery import states

SKIPPED = "SKIPPED"  # not executed: the previous run of the schedule still held its lock
EXPIRED = "EXPIRED"  # not executed: not started before its expiry time
WAITING = "WAITING"  # queued behind the running run of its schedule (overlap "wait"), or over its task's rate
PROGRESS = "PROGRESS"  # running, with {percent, message} reported by the task

TERMINAL_STATES = frozenset(states.READY_STATES | {SKIPPED, EXPIRED})
FAILED_STATES = frozenset({states.FAILURE, EXPIRED})  # a run that should have done its work and did not
