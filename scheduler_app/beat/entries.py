"""What beat holds of each enabled schedule: a lean `Entry` read from one row.

Columns are read with one query (policy fields joined in), through the driver, with
timestamps as text; arguments stay JSON text until the entry is sent; entries that send
alike share their options, overrides and policy (`Policies`), and timetables are shared
per schedule row (`store`). About 0.5 KB an entry.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import queue
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery.schedules import schedstate
from django.conf import settings
from django.db import connection, transaction
from django.db.models import BooleanField, ExpressionWrapper, Q, QuerySet, TextField
from django.db.models.functions import Cast, Coalesce
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
    "expire_seconds", "expires_text", "headers", "one_off", "start_text", "total_run_count",
    "interval_id", "crontab_id", "solar_id", "clocked_id",
    *(f"policy__{name}" for name in POLICY_FIELDS), "policy__pool_id", "policy__jitter", "policy__calendar_rule",
    "anchor_text", "never_run",  # last_run_at, or date_changed for a schedule that never ran: one timestamp to parse
)  # fmt: skip
AT = {name: index for index, name in enumerate(ROW_FIELDS)}  # a row's columns by name
OVERRIDES = slice(AT[f"policy__{POLICY_FIELDS[0]}"], AT["policy__pool_id"] + 1)  # the policy's columns, in order
OVERRIDE_NAMES = (*POLICY_FIELDS, "pool")  # the pool's name: the key the policy joins it on
TABLE_COLUMNS = tuple((kind, AT[f"{kind}_id"]) for kind in ("interval", "crontab", "solar", "clocked"))
TableKey = tuple[str, int]  # ("interval" | "crontab" | "solar" | "clocked", the row's id)
UTC = dt.UTC


def rows(tasks: QuerySet[PeriodicTask]) -> QuerySet[Any, tuple[Any, ...]]:
    """The columns an entry is made of. Timestamps come as text, parsed by `moment`: the
    driver's time-zone-aware conversion cost more than all the rest of a row."""
    anchor = Cast(Coalesce("last_run_at", "date_changed"), TextField())
    never_run = ExpressionWrapper(Q(last_run_at__isnull=True), output_field=BooleanField())
    found: QuerySet[Any, tuple[Any, ...]] = tasks.annotate(
        anchor_text=anchor, never_run=never_run, start_text=Cast("start_time", TextField()),
        expires_text=Cast("expires", TextField()),
    ).values_list(*ROW_FIELDS)  # fmt: skip
    return found


def fetch(tasks: QuerySet[PeriodicTask], chunk: int = 10_000, ahead: bool = False) -> Iterator[tuple[Any, ...]]:
    """The rows of `rows(tasks)`, read through the driver directly, `chunk` at a time (a
    server-side cursor on PostgreSQL: a million rows never sit in memory at once).
    `ahead`, on PostgreSQL: inside a transaction (so the cursor is not `WITH HOLD` and the
    server makes the rows as they are fetched), the next chunk read by a thread while the
    caller works on this one (`read_ahead`)."""
    sql, params = rows(tasks).query.sql_with_params()
    server_side = not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")  # off behind PgBouncer
    if ahead and server_side and connection.vendor == "postgresql":
        with transaction.atomic(), connection.chunked_cursor() as cursor:
            cursor.execute(sql, params)
            yield from read_ahead(cursor, chunk)
        return
    with connection.chunked_cursor() if server_side else connection.cursor() as cursor:
        cursor.execute(sql, params)
        while found := cursor.fetchmany(chunk):
            yield from found


def read_ahead(cursor: Any, chunk: int) -> Generator[tuple[Any, ...], None, None]:
    """A cursor's rows, `chunk` at a time, the next chunk fetched by a thread of its own
    meanwhile: the driver waits for the network without holding the GIL, so the transfer
    hides behind the making of entries (decoding still holds it). The caller does not use
    the connection until the rows are read; an error of the reader is raised here."""
    chunks: queue.Queue[list[tuple[Any, ...]] | BaseException] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                found = cursor.fetchmany(chunk)
                chunks.put(found)
                if not found:
                    return
        except BaseException as exc:  # noqa: BLE001  (handed to the caller, raised there)
            chunks.put(exc)

    reader = threading.Thread(target=read, name="beat-load-reader", daemon=True)
    reader.start()
    try:
        while True:
            found = chunks.get()
            if isinstance(found, BaseException):
                raise found
            if not found:
                return
            yield from found
    finally:
        stop.set()
        while reader.is_alive():  # the caller stopped early: let a blocked put through
            with contextlib.suppress(queue.Empty):
                chunks.get(timeout=0.05)
        reader.join()


def moment(text: str | dt.datetime | None) -> dt.datetime | None:
    """A timestamp read as text: PostgreSQL writes its offset, SQLite holds naive UTC."""
    if text is None or isinstance(text, dt.datetime):
        return text
    found = dt.datetime.fromisoformat(text)  # an offset of 0 gives UTC's own tzinfo (not one more object each)
    if found.tzinfo is None:
        return dt.datetime.fromisoformat(text + "+00:00")  # 8x faster than replace(tzinfo=)
    return found if found.tzinfo is UTC else found.astimezone(UTC)


Shape = tuple[
    str, str, str, dict[str, Any], dict[str, Any], RunPolicy
]  # task, args, kwargs, options, overrides, policy
SHAPE = slice(AT["task"], AT["headers"] + 1)  # the columns a shape is made of, with the policy's (`OVERRIDES`)


class Policies(dict[str, RunPolicy]):
    """Each task's own policy, looked up once per load; and what entries share: schedules
    with the same task, arguments, message options and policy overrides (a tenant's copies
    of one job) share one `Shape`: the texts, the options and overrides dicts, the policy."""

    def __init__(self, app: Celery) -> None:
        super().__init__()
        self.app = app
        self.shapes: dict[tuple[Any, ...], Shape] = {}
        self.table_keys: dict[TableKey, TableKey] = {}

    def __missing__(self, task_name: str) -> RunPolicy:
        self[task_name] = policy = task_policy(task_name, self.app)
        return policy

    def key(self, value: TableKey) -> TableKey:
        return self.table_keys.setdefault(value, value)

    def shape_of(self, row: tuple[Any, ...]) -> Shape:
        key = (*row[SHAPE], *row[OVERRIDES])
        found = self.shapes.get(key)
        if found is None:
            overrides, policy = self.policy_of(row)
            found = (row[2], row[3], row[4], shared_options(row, overrides, policy), overrides, policy)
            if overrides or not any(row[OVERRIDES]):  # a bad policy is not remembered: each of its rows says so
                self.shapes[key] = found
        return found

    def policy_of(self, row: tuple[Any, ...]) -> tuple[dict[str, Any], RunPolicy]:
        """The schedule's policy overrides (those set) and the policy they make."""
        overrides = {name: value for name, value in zip(OVERRIDE_NAMES, row[OVERRIDES], strict=True)
                     if value not in (None, "")}  # fmt: skip
        base = self[row[2]]
        try:
            return overrides, base.with_overrides(overrides) if overrides else base
        except ValueError as exc:  # a bad row never stops beat: the task's own policy applies
            logger.error("ignoring the policy of schedule %s: %s; fix it in the admin", row[1], exc)
            return {}, base


@dataclass(eq=False, slots=True)
class Entry:
    """One enabled schedule, as beat holds it (the shape of Celery's ScheduleEntry, lean)."""

    pk: int
    name: str
    task: str
    table_key: TableKey
    raw_args: str
    raw_kwargs: str
    options: dict[str, Any]  # shared between entries that send alike (`Policies.shape_of`): read only
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
    heap_key: int | None = None  # its live item in the due heap (`due.DueHeap`)

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
        options = dict(self.options)  # shared with other entries: never changed in place
        headers = {**options.get("headers", {}), "periodic_task_name": self.name, "celery_beat_task": True}
        options["headers"] = {**headers, HEADER: self.header(slot, at)}
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
    """The entry of one row of `rows()`; what entries share comes from `policies`. (A
    million of these make beat's start-up: the columns are unpacked, not looked up.)"""
    (pk, name, _, _, _, _, _, _, _, _, expires, _, one_off, start_time, total_run_count, _, _, _, clocked_id,
     *_, jitter, calendar_rule, anchor_text, never_run) = row  # fmt: skip
    task, raw_args, raw_kwargs, options, overrides, policy = policies.shape_of(row)
    anchor = moment(anchor_text)
    assert anchor is not None  # noqa: S101  (date_changed is never null)
    return Entry(
        pk, name, task, policies.key(table_key(row)), raw_args, raw_kwargs, options, overrides, policy,
        one_off=one_off or clocked_id is not None,  # a clocked slot runs once, one_off or not
        start_time=moment(start_time) if start_time else None,
        expires=moment(expires) if expires else None,
        last_run_at=None if never_run else anchor,
        total_run_count=total_run_count,
        date_changed=anchor,
        jitter=float(jitter) if jitter else 0.0,  # one 0.0 for all
        move=calendar_rule == "move",
    )  # fmt: skip


def table_key(row: tuple[Any, ...]) -> TableKey:
    for kind, index in TABLE_COLUMNS:
        if row[index] is not None:
            return kind, row[index]
    raise slots.InvalidSchedule(f"schedule {row[1]!r} has no interval, crontab, solar or clocked")


def shared_options(row: tuple[Any, ...], overrides: dict[str, Any], policy: RunPolicy) -> dict[str, Any]:
    """`options_of` a row, but the schedule's name (`Entry.message_options` adds it):
    schedules that send alike share one dict, which nobody changes."""
    headers = json.loads(row[AT["headers"]] or "{}")
    if not isinstance(headers, dict):
        raise ValueError(f"its headers are not a JSON object: {row[AT['headers']][:80]!r}")
    values = {name: row[AT[name]] for name in ("queue", "exchange", "routing_key", "priority", "expire_seconds")}
    return options_of(values, moment(row[AT["expires_text"]]), headers, overrides, policy)


def options_of(values: dict[str, Any], expires: dt.datetime | None, headers: dict[str, Any],
               overrides: dict[str, Any], policy: RunPolicy) -> dict[str, Any]:  # fmt: skip
    """What django-celery-beat's ModelEntry puts on the message, plus the policy's limits."""
    options = {key: values[key] for key in ("queue", "exchange", "routing_key", "priority") if values[key] is not None}
    if expires or values["expire_seconds"]:
        options["expires"] = expires or values["expire_seconds"]
    options["headers"] = headers
    if "soft_time_limit" in overrides or "time_limit" in overrides:
        options["soft_time_limit"], options["time_limit"] = policy.soft_time_limit, policy.time_limit
    return options


def message_options(values: dict[str, Any], overrides: dict[str, Any], policy: RunPolicy) -> dict[str, Any]:
    """What django-celery-beat's ModelEntry puts on the message, plus the policy's limits
    (`values`: the schedule's columns by name; a backfill's messages)."""
    headers = {**json.loads(values["headers"] or "{}"), "periodic_task_name": values["name"]}
    return options_of(values, values["expires"], headers, overrides, policy)
