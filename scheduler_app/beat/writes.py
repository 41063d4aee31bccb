"""What beat writes back to the database, in batches: the slot each schedule last sent
(`last_run_at`) and its run count, and the schedules to disable (one-offs sent, expired,
one-offs found to have run already).

A flush writes everything pending in one transaction, with one UPDATE (PostgreSQL: joined
on arrays; SQLite: Django's bulk_update, 500 rows a statement); a flush that fails keeps
it for the next one, merged with whatever was sent meanwhile.
"""

from __future__ import annotations

import datetime as dt

import redis
from django.db import DatabaseError, InterfaceError, connection, transaction
from django.db.models import F
from django_celery_beat.models import PeriodicTask

from scheduler_app.beat import leader


class PendingWrites:
    def __init__(self, ledger: leader.SlotLedger) -> None:
        self.ledger = ledger
        self.slots: dict[int, tuple[dt.datetime, int]] = {}  # pk -> (last_run_at, runs to add)
        self.disable: set[int] = set()
        self.ran_before: dict[int, bool] = {}  # one-offs loaded enabled with runs counted -> clocked?
        self.unmark: set[int] = set()  # clocked one-offs whose mark goes once they are disabled

    def __len__(self) -> int:
        return len(self.slots)

    def sent(self, pk: int, slot: dt.datetime, ran: bool) -> None:
        """`slot` was decided for `pk`; `ran` whether this beat's claim was granted."""
        self.slots[pk] = (slot, self.slots.get(pk, (slot, 0))[1] + ran)

    def learned(self, pk: int, mark: dt.datetime) -> None:
        """A slot another leader sent (its mark) that the database may not know yet (the
        later of two, so an older mark learned first never overwrites a newer one)."""
        slot, runs = self.slots.get(pk, (mark, 0))
        self.slots[pk] = (max(slot, mark), runs)

    def one_off_done(self, pk: int, slot: dt.datetime, clocked: bool) -> None:
        """A one-off schedule is disabled once sent (django-celery-beat's rule), with its
        run count reset so that enabling it again runs it once more."""
        self.slots[pk] = (slot, 0)
        self.disable.add(pk)
        if clocked:  # its one slot is sent again if it is enabled again
            self.unmark.add(pk)

    def already_ran(self, pk: int, clocked: bool) -> None:
        """A one-off loaded enabled with a run count above 0 has run: it is disabled (and its
        count reset) only if it still reads so when written, so that an enable made
        meanwhile, which resets the count, is never undone; whichever beat saw it."""
        self.ran_before[pk] = clocked

    def flush(self) -> None:
        """Write the slots sent since the last flush: `last_run_at` and the run count."""
        if not (self.slots or self.disable or self.ran_before):
            self._forget_marks()  # one left from a flush whose Redis part failed
            return
        dirty, self.slots = self.slots, {}
        disable, self.disable = self.disable, set()
        ran_before, self.ran_before = self.ran_before, {}
        try:
            with transaction.atomic():  # all or nothing: a retried flush never counts a run twice
                write(dirty, disable)
                disabled = disable_if_ran(ran_before)
        except (DatabaseError, InterfaceError):
            for pk, (slot, runs) in dirty.items():  # keep them for the next flush
                newer, more = self.slots.get(pk, (slot, 0))
                self.slots[pk] = (max(slot, newer), runs + more)
            self.disable |= disable
            self.ran_before |= ran_before
            raise
        self.unmark |= {pk for pk in disabled if ran_before[pk]}
        self._forget_marks()

    def _forget_marks(self) -> None:
        """Once the database says a clocked one-off is disabled, its mark may go."""
        done = set(self.unmark)
        if not done:
            return
        try:
            self.ledger.forget(done)
        except redis.RedisError:
            return  # next flush
        self.unmark -= done


# PostgreSQL: one statement joined on arrays, whatever the count (a CASE per row, as Django's
# bulk_update writes it, costs the square of the rows: a second for 1,000 rows at 500 sends/s).
WRITE_SQL = """UPDATE {table} AS t SET last_run_at = v.slot, total_run_count = t.total_run_count + v.runs
FROM (SELECT unnest(%s::integer[]) AS id, unnest(%s::timestamptz[]) AS slot, unnest(%s::integer[]) AS runs) AS v
WHERE t.id = v.id
"""


def write(dirty: dict[int, tuple[dt.datetime, int]], disable: set[int]) -> None:
    if dirty and connection.vendor == "postgresql":
        pks, slots, runs = list(dirty), [slot for slot, _ in dirty.values()], [ran for _, ran in dirty.values()]
        with connection.cursor() as cursor:
            cursor.execute(WRITE_SQL.format(table=connection.ops.quote_name(PeriodicTask._meta.db_table)),
                           [pks, slots, runs])  # fmt: skip
    elif dirty:
        rows = [
            PeriodicTask(pk=pk, last_run_at=slot, total_run_count=F("total_run_count") + ran)
            for pk, (slot, ran) in dirty.items()
        ]
        PeriodicTask.objects.bulk_update(rows, ["last_run_at", "total_run_count"], batch_size=500)
    if disable:
        PeriodicTask.objects.filter(pk__in=disable).update(enabled=False, total_run_count=0)  # logged by the trigger


def disable_if_ran(candidates: dict[int, bool]) -> set[int]:
    """Disable each one-off that still reads enabled with runs counted; which were."""
    disabled = {
        pk
        for pk in candidates
        if PeriodicTask.objects.filter(pk=pk, enabled=True, total_run_count__gt=0).update(
            enabled=False, total_run_count=0
        )
    }
    return disabled  # the change log has them: the trigger wrote it, so every beat drops them
