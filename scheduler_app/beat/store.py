"""The enabled schedules beat holds: entries, the timetables they share, and their loading.

A full load reads every enabled row once; afterwards only the rows the change log names
are reloaded (`reload_tasks`, `reload_tables`). One bad row never stops beat: it is logged
and left out, and the others run.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django_celery_beat.models import PeriodicTask

from scheduler_app.beat import calendars, rules, slots
from scheduler_app.beat.due import DueHeap
from scheduler_app.beat.entries import Entry, Policies, TableKey, entry_from_row, fetch
from scheduler_app.beat.writes import PendingWrites
from scheduler_app.models import SHARED_SCHEDULES, BusinessCalendar, SchedulePolicy

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)
RELOAD_CHUNK = 5_000  # schedules reloaded per query (below SQLite's and PostgreSQL's parameter limits)


class EntryStore:
    def __init__(self, heap: DueHeap, writes: PendingWrites) -> None:
        self.heap = heap
        self.writes = writes
        self.entries: dict[int, Entry] = {}
        self.tables: dict[TableKey, slots.Timetable] = {}
        self.users: dict[TableKey, set[int]] = {}  # table key -> pks of the entries using it
        self.calendars: dict[int, calendars.Calendar] = {}  # the business calendars, by id
        self.links: dict[int, tuple[int, ...]] = {}  # schedule pk -> its calendars' ids (only those with any)
        self.policies: Policies  # set by load_all, before any entry is made

    def load_all(self, app: Celery) -> None:
        """Load every enabled schedule. A database error part-way keeps what was loaded
        before, so nothing is half-loaded; the caller rebuilds the heap on success."""
        before = (self.tables, self.entries, self.users, self.calendars, self.links)
        self.tables, self.entries, self.users = {}, {}, {}
        self.policies = Policies(app)
        gc.disable()  # a load allocates many long-lived objects: collecting meanwhile finds nothing
        try:
            self.load_tables(SHARED_SCHEDULES.items())
            self.calendars = load_calendars()
            self.links = calendar_links()
            for row in fetch(PeriodicTask.objects.filter(enabled=True), ahead=True):
                self.add(row)
        except BaseException:
            self.tables, self.entries, self.users, self.calendars, self.links = before
            raise
        finally:
            gc.enable()
        gc.freeze()  # and they stay: keep them out of later collections

    def load_tables(self, kinds: Iterable[tuple[str, Any]], ids: Iterable[int] | None = None) -> None:
        for kind, model in kinds:
            found = model.objects.all() if ids is None else model.objects.filter(pk__in=list(ids))
            for row in found:
                try:
                    self.tables[(kind, row.pk)] = slots.timetable(row)
                except Exception as exc:  # noqa: BLE001  (one bad row never stops beat)
                    logger.error("%s schedule %s is invalid and its schedules will not run: %s", kind, row.pk, exc)

    def add(self, row: tuple[Any, ...]) -> Entry | None:
        try:
            entry = entry_from_row(row, self.policies)
            entry.calendar_ids = self.links.get(entry.pk, ())
        except Exception as exc:  # noqa: BLE001  (one bad row never stops beat)
            logger.error("schedule %r cannot run: %s; fix it in the admin", row[1], exc)
            self.remove(row[0])  # its previous, valid version stops too: it no longer says what runs
            return None
        if entry.one_off and entry.total_run_count > 0:  # it ran: disabled (django-celery-beat's rule), not run again
            logger.info("one-off schedule %r has already run; disabling it", entry.name)
            self.writes.already_ran(entry.pk, clocked=entry.clocked)
            self.remove(entry.pk)
            return None
        old = self.entries.get(entry.pk)
        if old is not None:
            self.forget(old)
            if old.last_run_at and (entry.last_run_at is None or old.last_run_at > entry.last_run_at):
                entry.last_run_at = old.last_run_at  # what we sent and not yet wrote
        self.entries[entry.pk] = entry
        self.users.setdefault(entry.table_key, set()).add(entry.pk)
        try:
            self.plan(entry)
        except Exception as exc:  # noqa: BLE001  (one bad row never stops beat)
            logger.error("schedule %r cannot run: %s; fix it in the admin", entry.name, exc)
            self.remove(entry.pk)
            return None
        return entry

    def forget(self, entry: Entry) -> None:
        self.users.get(entry.table_key, set()).discard(entry.pk)

    def remove(self, pk: int) -> None:
        entry = self.entries.pop(pk, None)
        if entry is not None:
            self.forget(entry)

    def table_of(self, entry: Entry) -> slots.Timetable | None:
        """The entry's timetable: its own (its rules applied), or the one it shares."""
        return entry.table or self.tables.get(entry.table_key)

    def own_table(self, entry: Entry, shared: slots.Timetable) -> slots.Timetable | None:
        """The entry's timetable with its H values, jitter and calendars (None: the shared one serves)."""
        if not (entry.jitter or entry.calendar_ids or isinstance(shared, slots.HashedCron)):
            return None
        found = [self.calendars[pk] for pk in entry.calendar_ids if pk in self.calendars]
        return rules.for_schedule(
            shared, entry.name, jitter=entry.jitter, calendars=calendars.Calendars(tuple(found)), move=entry.move
        )

    def plan(self, entry: Entry, push: bool = False) -> None:
        """The entry's first slot from what it last ran (or its start time or creation)."""
        shared = self.tables.get(entry.table_key)
        if shared is None:
            entry.next_slot = entry.table = None
            return
        entry.table = self.own_table(entry, shared)
        table = entry.table or shared
        if type(table) is slots.Interval and entry.start_time is None:  # most of a million: first_slot's answer, sooner
            entry.next_slot = table.slot_after(entry.last_run_at or entry.date_changed)
        else:
            entry.next_slot = slots.first_slot(
                table, last_run_at=entry.last_run_at, start_time=entry.start_time, created=entry.date_changed
            )
        if push:
            self.heap.push(entry)

    def reload_tables(self, keys: set[TableKey]) -> None:
        for kind, pk in keys:
            self.tables.pop((kind, pk), None)
            self.load_tables([(kind, SHARED_SCHEDULES[kind])], [pk])
            for user in list(self.users.get((kind, pk), ())):
                self.plan(self.entries[user], push=True)  # its older heap item is dropped when it surfaces

    def reload_calendars(self, ids: set[int]) -> set[int]:
        """Read these calendars again; returns the schedules that use them (to be reloaded)."""
        fresh = load_calendars(ids)
        for pk in ids:
            self.calendars.pop(pk, None)
        self.calendars.update(fresh)
        users = {pk for pk, linked in self.links.items() if ids & set(linked)}
        return users | set(calendar_links(calendar_ids=ids))

    def reload_tasks(self, pks: set[int]) -> set[int]:
        """Reload these schedules; those no longer enabled are dropped. Returns the pks
        whose rows are gone from the database (their slot marks may go too). Read
        RELOAD_CHUNK at a time: a bulk edit of 10,000 rows is a few queries."""
        gone = set()
        ordered = sorted(pks)
        for start in range(0, len(ordered), RELOAD_CHUNK):
            chunk = set(ordered[start : start + RELOAD_CHUNK])
            for pk in chunk:
                self.links.pop(pk, None)
            self.links.update(calendar_links(task_ids=chunk))
            found = set()
            for row in fetch(PeriodicTask.objects.filter(pk__in=chunk, enabled=True)):
                found.add(row[0])
                entry = self.add(row)
                if entry is not None:
                    self.heap.push(entry)
            for pk in chunk - found:
                self.remove(pk)
            gone |= self.gone(chunk)
        return gone

    def gone(self, pks: set[int]) -> set[int]:
        """Those of these schedules whose rows are gone from the database."""
        ordered, found = sorted(pks), set()
        for start in range(0, len(ordered), RELOAD_CHUNK):
            chunk = ordered[start : start + RELOAD_CHUNK]
            found |= set(PeriodicTask.objects.filter(pk__in=chunk).values_list("pk", flat=True))
        return pks - found


def load_calendars(ids: set[int] | None = None) -> dict[int, calendars.Calendar]:
    """The business calendars (these ones, or all), with their excluded dates; a bad one is left out."""
    found = BusinessCalendar.objects.prefetch_related("exclusions")
    found = found if ids is None else found.filter(pk__in=ids)
    loaded = {}
    for row in found:
        try:
            loaded[row.pk] = calendars.from_row(row)
        except Exception as exc:  # noqa: BLE001  (one bad calendar never stops beat)
            logger.error("business calendar %r is invalid; its schedules keep none of it: %s", row.name, exc)
    return loaded


def calendar_links(
    task_ids: set[int] | None = None, calendar_ids: set[int] | None = None
) -> dict[int, tuple[int, ...]]:
    """Schedule pk -> the ids of its calendars (one query on the policies' link table)."""
    links = SchedulePolicy.calendars.through.objects.all()
    if task_ids is not None:
        links = links.filter(schedulepolicy_id__in=task_ids)
    if calendar_ids is not None:
        links = links.filter(businesscalendar_id__in=calendar_ids)
    found: dict[int, list[int]] = {}
    for task_pk, calendar_pk in links.values_list("schedulepolicy_id", "businesscalendar_id"):
        found.setdefault(task_pk, []).append(calendar_pk)
    return {pk: tuple(sorted(ids)) for pk, ids in found.items()}
