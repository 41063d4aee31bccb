from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from scheduler_app.schedules import NextRun, describe, next_run


class Command(BaseCommand):
    help = "List every schedule with its task, its schedule in words, and its next run time."

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        tasks = PeriodicTask.objects.select_related("interval", "crontab", "clocked", "solar").order_by("name")
        count = 0
        for task in tasks:
            count += 1
            upcoming = next_run(task, now)
            state = "enabled" if task.enabled else "disabled"
            self.stdout.write(f"{task.name}  [{state}]")
            self.stdout.write(f"    task:     {task.task}")
            self.stdout.write(f"    schedule: {describe(task)}")
            self.stdout.write(f"    last run: {task.last_run_at.isoformat() if task.last_run_at else 'never'}")
            self.stdout.write(f"    next run: {self._when(upcoming)}")
        self.stdout.write(f"{count} schedule(s)")

    def _when(self, upcoming: NextRun) -> str:
        local = upcoming.local()
        if upcoming.at is None or local is None:
            return f"none ({upcoming.reason})"
        return f"{local.isoformat()} {upcoming.zone} = {upcoming.at.isoformat()} UTC"
