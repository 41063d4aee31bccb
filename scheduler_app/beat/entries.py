"""What beat holds of each enabled schedule: a lean `Entry` read from one row.

Columns are read with one `values_list` (policy fields joined in); arguments stay JSON
text until the entry is sent, and timetables are shared per schedule row (`store`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery.schedules import schedstate
from django.conf import settings
from django.db.models import BooleanField, ExpressionWrapper, Q, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_beat.utils import NEVER_CHECK_TIMEOUT
from kombu.utils.json import loads

from scheduler_app.beat import rules, slots
from scheduler_app.models import POLICY_FIELDS
from scheduler_app.runs.context import HEADER
from scheduler_app.runs.policy import RunPolicy, task_policy

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)
ROW_FIELDS = (
    "id", "name", "task", "args", "kwargs", "queue", "exchange", "routing_key", "priority",
    "expire_seconds", "expires", "headers", "one_off", "start_time", "total_run_count",
    "interval_id", "crontab_id", "solar_id", "clocked_id",
    *(f"policy__{name}" for name in POLICY_FIELDS), "policy__pool_id", "policy__jitter", "policy__calendar_rule",
    "anchor", "never_run",  # last_run_at, or date_changed for a schedule that never ran: one timestamp to parse
)  # fmt: skip
TableKey = tuple[str, int]  # ("interval" | "crontab" | "solar" | "clocked", the row's id)


def rows(tasks: QuerySet[PeriodicTask]) -> QuerySet[Any, tuple[Any, ...]]:
    anchor = Coalesce("last_run_at", "date_changed")
    never_run = ExpressionWrapper(Q(last_run_at__isnull=True), output_field=BooleanField())
    found: QuerySet[Any, tuple[Any, ...]] = tasks.annotate(anchor=anchor, never_run=never_run).values_list(*ROW_FIELDS)
    return found


class Policies(dict[str, RunPolicy]):
    """Each task's own policy, looked up once per load."""

    def __init__(self, app: Celery) -> None:
        super().__init__()
        self.app = app

    def __missing__(self, task_name: str) -> RunPolicy:
        self[task_name] = policy = task_policy(task_name, self.app)
        return policy


@dataclass(eq=False)
class Entry:
    """One enabled schedule, as beat holds it (the shape of Celery's ScheduleEntry, lean)."""

    pk: int
    name: str
    task: str
    table_key: TableKey
    raw_args: str
    raw_kwargs: str
    options: dict[str, Any]
    overrides: dict[str, Any]
    policy: RunPolicy
    one_off: bool
    start_time: dt.datetime | None
    expires: dt.datetime | None
    last_run_at: dt.datetime | None
    total_run_count: int
    date_changed: dt.datetime
    jitter: float = 0.0
    move: bool = False  # calendar rule: move an excluded slot (True) or skip it
    calendar_ids: tuple[int, ...] = ()
    next_slot: dt.datetime | None = None
    table: slots.Timetable | None = None  # its own timetable, when rules apply (`rules.for_schedule`)
    version: int = 0

    @property
    def has_rules(self) -> bool:
        return bool(self.jitter or self.calendar_ids)

    @property
    def due_at(self) -> dt.datetime | None:
        """When its next slot is sent: the slot, or later by its jitter or calendars."""
        if self.next_slot is None or self.table is None:
            return self.next_slot
        return rules.send_at(self.table, self.next_slot)

    @property
    def clocked(self) -> bool:
        return self.table_key[0] == "clocked"

    @property
    def args(self) -> list[Any]:
        return list(loads(self.raw_args or "[]"))

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(loads(self.raw_kwargs or "{}"))

    def header(self, slot: dt.datetime, at: dt.datetime | None = None) -> dict[str, Any]:
        """`scheduled_for` is the moment the slot is sent (its jitter or calendar move in);
        the slot itself goes as `slot` where the two differ."""
        header = {"trigger": "beat", "schedule": self.name, "scheduled_for": (at or slot).isoformat(),
                  "policy": self.overrides}  # fmt: skip
        if at is not None and at != slot:
            header["slot"] = slot.isoformat()
        return header

    def message_options(self, slot: dt.datetime, at: dt.datetime | None = None) -> dict[str, Any]:
        """What beat sends with this slot. `celery_beat_task` is the header Celery's own beat
        adds, by which code tells beat's runs apart."""
        options = dict(self.options)
        options["headers"] = {**options.get("headers", {}), "celery_beat_task": True, HEADER: self.header(slot, at)}
        return options

    def is_due(self) -> schedstate:
        """Celery's `ScheduleEntry.is_due()`: whether a slot is due now, and the seconds until
        the next check. Beat itself reads its heap; this is for code written against Celery."""
        due_at = self.due_at
        if due_at is None:
            return schedstate(False, NEVER_CHECK_TIMEOUT)  # django-celery-beat's answer for an entry that never runs
        remaining = (due_at - timezone.now()).total_seconds()
        if remaining <= 0:  # due: look again after beat's check interval, as its tick would
            return schedstate(True, float(settings.BEAT_CHECK_SECONDS))
        return schedstate(False, remaining)


@dataclass
class Send:
    """A due slot of an entry, decided and waiting to be claimed and sent (`at`: the moment
    it is sent for, the slot unless its jitter or calendars move it)."""

    entry: Entry
    slot: dt.datetime
    at: dt.datetime | None = None

    @property
    def moment(self) -> dt.datetime:
        return self.at or self.slot


def same_schedule(a: Entry, b: Entry) -> bool:
    """Whether two entries send the same thing at the same times (the next one included, so
    that an edit of the timetable they share counts)."""
    facts = ("pk", "task", "table_key", "raw_args", "raw_kwargs", "options", "overrides", "one_off", "start_time",
             "expires", "jitter", "move", "calendar_ids", "next_slot")  # fmt: skip
    return all(getattr(a, fact) == getattr(b, fact) for fact in facts)


def entry_from_row(row: tuple[Any, ...], policies: Policies) -> Entry:
    values = dict(zip(ROW_FIELDS, row, strict=True))
    overrides = {name: values[f"policy__{name}"] for name in POLICY_FIELDS}
    overrides["pool"] = values["policy__pool_id"]  # the pool's name (the key the policy joins it on)
    overrides = {name: value for name, value in overrides.items() if value not in (None, "")}
    base = policies[values["task"]]
    try:
        policy = base.with_overrides(overrides) if overrides else base
    except ValueError as exc:  # a bad row never stops beat: the task's own policy applies
        logger.error("ignoring the policy of schedule %s: %s; fix it in the admin", values["name"], exc)
        overrides, policy = {}, base
    return Entry(
        pk=values["id"],
        name=values["name"],
        task=values["task"],
        table_key=table_key(values),
        raw_args=values["args"],
        raw_kwargs=values["kwargs"],
        options=message_options(values, overrides, policy),
        overrides=overrides,
        policy=policy,
        one_off=values["one_off"] or values["clocked_id"] is not None,  # a clocked slot runs once, one_off or not
        start_time=values["start_time"],
        expires=values["expires"],
        last_run_at=None if values["never_run"] else values["anchor"],
        total_run_count=values["total_run_count"],
        date_changed=values["anchor"],
        jitter=float(values["policy__jitter"] or 0),
        move=values["policy__calendar_rule"] == "move",
    )


def table_key(values: dict[str, Any]) -> TableKey:
    for kind in ("interval", "crontab", "solar", "clocked"):
        if values[f"{kind}_id"] is not None:
            return kind, values[f"{kind}_id"]
    raise slots.InvalidSchedule(f"schedule {values['name']!r} has no interval, crontab, solar or clocked")


def message_options(values: dict[str, Any], overrides: dict[str, Any], policy: RunPolicy) -> dict[str, Any]:
    """What django-celery-beat's ModelEntry puts on the message, plus the policy's limits."""
    options = {key: values[key] for key in ("queue", "exchange", "routing_key", "priority") if values[key] is not None}
    if values["expires"] or values["expire_seconds"]:
        options["expires"] = values["expires"] or values["expire_seconds"]
    options["headers"] = {**json.loads(values["headers"] or "{}"), "periodic_task_name": values["name"]}
    if "soft_time_limit" in overrides or "time_limit" in overrides:
        options["soft_time_limit"], options["time_limit"] = policy.soft_time_limit, policy.time_limit
    return options
