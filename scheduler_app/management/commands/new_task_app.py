from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from scheduler_app.management.scaffold import App, ScaffoldError, plan, write


class Command(BaseCommand):
    help = (
        "Write a new task app: <name>/__init__.py, tasks.py (one @platform_task with its default "
        "schedule) and test_tasks.py, in the checkout (or --dir), then print how to install, seed and "
        "restart. A name that is not a lower-case Python name, or that clashes with a module or an "
        "installed app, is refused and nothing is written."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="the app's package name, e.g. reports")
        parser.add_argument(
            "--dir", type=Path, default=None, help="the folder to write it in (default: the checkout, beside manage.py)"
        )

    def handle(self, *args: Any, name: str, dir: Path | None, **options: Any) -> None:
        try:
            app = plan(name, dir or Path(settings.BASE_DIR))
        except ScaffoldError as exc:
            raise CommandError(f"{exc} Nothing was written.") from None
        for path in write(app):
            self.stdout.write(f"wrote {path}")
        for line in next_steps(app, Path(settings.BASE_DIR).resolve()):
            self.stdout.write(line)
        self.stdout.write(f"created the task app {app.name!r} with the task {app.task} (every minute)")


def next_steps(app: App, checkout: Path) -> list[str]:
    inside = app.folder.parent == checkout
    steps = ["", "Next steps:", "1. Install it: in the environment of every process (web, worker, beat, recorder):"]
    steps.append(f"     export BEATKEEPER_APPS={apps_value(app)}")
    if not inside:
        steps.append(f"     export PYTHONPATH={app.folder.parent}   # the folder that holds {app.name}/")
    steps += [
        f"2. Test it:  .venv/bin/python -m pytest {app.folder}",
        f"3. Seed its schedule:  python manage.py seed_default_tasks   (prints: created   {app.schedule} ({app.task}))",
        "4. Restart the worker and beat (they import the tasks when they start) and the web (the task picker,",
        "   /api/tasks/). Under make run: Ctrl-C, then run it again with BEATKEEPER_APPS set; it seeds by itself.",
    ]
    return steps + _image_step(app, checkout, inside)


def _image_step(app: App, checkout: Path, inside: bool) -> list[str]:
    if not inside:
        return [f"5. For the Docker image, move {app.name}/ beside manage.py ({checkout}), then add its COPY line."]
    return [
        "5. For the Docker image, add beside `COPY maintenance ./maintenance` in deploy/Dockerfile:",
        f"     COPY {app.name} ./{app.name}",
        f"   and BEATKEEPER_APPS={apps_value(app)} to deploy/.env (compose), deploy/kubernetes/configmap.yaml or",
        "   /etc/beatkeeper/env (systemd).",
    ]


def apps_value(app: App) -> str:
    """BEATKEEPER_APPS as it is now, with the new app added."""
    return ",".join([*filter(None, os.environ.get("BEATKEEPER_APPS", "").split(",")), app.name])
