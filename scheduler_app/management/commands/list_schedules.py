from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from scheduler_app.beat import slots
from scheduler_app.forms import preview_rows
from scheduler_app.schedules import explain, shown_description, table_of, why_not

MAX_NEXT = 100  # as the API's next-runs


class Command(BaseCommand):
    help = (
        "List every schedule with its task, its schedule in words, and its next run time "
        "(--next N: the next N slots as beat sends them, in the schedule's zone and in UTC: the send moment, "
        "the nominal slot where jitter or a calendar moves it, slots a calendar skips, daylight saving changes "
        "marked)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--next", type=int, default=1, metavar="N", help=f"how many next run times to show (1 to {MAX_NEXT})"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count = options["next"]
        if not 1 <= count <= MAX_NEXT:
            raise CommandError(f"--next: {count} is out of range; give a whole number from 1 to {MAX_NEXT}.")
        now = timezone.now()
        tasks = PeriodicTask.objects.select_related("interval", "crontab", "clocked", "solar", "policy")
        total = 0
        for task in tasks.prefetch_related("policy__calendars__exclusions").order_by("name"):
            total += 1
            state = "enabled" if task.enabled else "disabled"
            self.stdout.write(f"{task.name}  [{state}]")
            self.stdout.write(f"    task:     {task.task}")
            self.stdout.write(f"    schedule: {shown_description(task)}")
            self.stdout.write(f"    last run: {task.last_run_at.isoformat() if task.last_run_at else 'never'}")
            self._write_runs(task, now, count)
        self.stdout.write(f"{total} schedule(s)")

    def _write_runs(self, task: PeriodicTask, now: dt.datetime, count: int) -> None:
        """Each next slot as beat sends it (`schedules.explain`, as the admin's and the API's
        previews): the send moment, the nominal slot where it differs, and the note (jitter,
        skipped or moved by a calendar); a skipped slot is listed, marked skipped."""
        try:
            table = table_of(task)
            verdicts = explain(task, count, now, table)
        except (slots.InvalidSchedule, ValueError, OverflowError) as exc:
            self.stdout.write(f"    next run: none (invalid schedule: {exc})")
            return
        if not verdicts:
            self.stdout.write(f"    next run: none ({why_not(task) or 'no further slot'})")
            return
        label = "next run:" if count == 1 else "next runs:"
        for n, row in enumerate(preview_rows(verdicts, table.zone)):
            lead = f"    {label}" if n == 0 else " " * (5 + len(label))
            self.stdout.write(f"{lead} {row_in_words(row, table.zone)}")


def row_in_words(row: dict[str, Any], zone: str) -> str:
    """`<local> <zone> = <utc> UTC`, then what differs from the slot: `(slot ...; jitter +37s)`,
    `skipped: Christmas Day, DE`, the daylight saving mark."""
    shown = f"{row['local'].isoformat()} {zone} = {row['utc'].isoformat()} UTC"
    if row["skipped"]:
        shown = f"{shown}  {row['note']} (not sent)"
    else:
        said = [f"slot {row['slot_local'].isoformat()}"] if row["slot_local"] else []
        said += [row["note"]] if row["note"] else []
        shown = f"{shown}  ({'; '.join(said)})" if said else shown
    return f"{shown}  (daylight saving change before this run)" if row["dst_change"] else shown
