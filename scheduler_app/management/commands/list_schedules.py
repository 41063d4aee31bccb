from __future__ import annotations

import datetime as dt
from typing import Any, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from scheduler_app.beat import slots
from scheduler_app.schedules import NextRun, describe, next_runs, why_not

MAX_NEXT = 100  # as the API's next-runs


class Command(BaseCommand):
    help = (
        "List every schedule with its task, its schedule in words, and its next run time "
        "(--next N: the next N, in the schedule's zone and in UTC, daylight saving changes marked)."
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
        for task in tasks.order_by("name"):
            total += 1
            state = "enabled" if task.enabled else "disabled"
            self.stdout.write(f"{task.name}  [{state}]")
            self.stdout.write(f"    task:     {task.task}")
            self.stdout.write(f"    schedule: {describe(task)}")
            self.stdout.write(f"    last run: {task.last_run_at.isoformat() if task.last_run_at else 'never'}")
            self._write_runs(task, next_runs(task, count, now), count)
        self.stdout.write(f"{total} schedule(s)")

    def _write_runs(self, task: PeriodicTask, runs: list[NextRun], count: int) -> None:
        if not runs:
            self.stdout.write(f"    next run: none ({why_not(task) or 'no further slot'})")
            return
        times = cast(list[dt.datetime], [run.at for run in runs])  # next_runs gives each run its time
        rows = slots.describe_offsets(times, runs[0].zone)
        label = "next run:" if count == 1 else "next runs:"
        for n, row in enumerate(rows):
            mark = "  (daylight saving change before this run)" if row["dst_change"] else ""
            lead = f"    {label}" if n == 0 else " " * (5 + len(label))
            self.stdout.write(f"{lead} {row['local'].isoformat()} {runs[0].zone} = {row['utc'].isoformat()} UTC{mark}")
