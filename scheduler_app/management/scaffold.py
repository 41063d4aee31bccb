"""A new task app, written by `manage.py new_task_app`: a package with one platform task
and its default schedule, and a test of both. README: *Adding a task*.

A name is refused, with nothing written, when it is not a lower-case Python name or when
it would clash with a module Python already finds or an installed app's label.
"""

from __future__ import annotations

import importlib.util
import keyword
import re
from dataclasses import dataclass
from pathlib import Path

from django.apps import apps

NAME = re.compile(r"[a-z][a-z0-9_]*")

INIT = '''"""{name}: tasks for Beatkeeper (installed through BEATKEEPER_APPS; README: Adding a task)."""
'''

TASKS = '''"""{name}'s tasks: thin Celery tasks over plain functions, each with its default schedule.

Every process imports this module by itself once {name} is in BEATKEEPER_APPS: the worker
and beat at start-up, the console's task picker, /api/tasks/ and `seed_default_tasks`.
"""

from __future__ import annotations

from typing import Any

from scheduler_app.catalog import Cron, platform_task


def greet(name: str) -> dict[str, Any]:
    """The work itself: a plain, typed function that returns the run's result (test_tasks.py)."""
    return {{"greeting": f"Hello, {{name}}!"}}


@platform_task(
    name="{task}",  # the Celery task name: keep it stable once schedules use it
    schedule_name="{schedule}",  # the schedule as operators see it in the admin
    schedule=Cron(minute="*"),  # every minute, to see it run; e.g. Cron(minute="0", hour="7", timezone="Europe/Paris")
    overlap="skip",  # never two at once; any RunPolicy field may be given here
    soft_time_limit=60,
    time_limit=90,
    expires=60,  # a run not started within a minute is EXPIRED, not run late
)
def say_hello(name: str = "world") -> dict[str, Any]:
    """Say hello (the first line of the docstring describes the schedule in the admin)."""
    return greet(name)
'''

TEST = '''"""{name}'s tests: `.venv/bin/python -m pytest {name}/` from the checkout."""

# ruff: noqa: S101  (pytest's asserts)
from __future__ import annotations

{imports}


def test_it_greets_by_name() -> None:
    assert tasks.greet("Ada") == {{"greeting": "Hello, Ada!"}}


def test_it_declares_its_task_and_default_schedule() -> None:
    (definition,) = [d for d in catalog.definitions() if d.task == "{task}"]
    assert definition.name == "{schedule}"
    assert definition.schedule == catalog.Cron(minute="*")
    assert definition.policy.overlap == "skip"
    assert tasks.say_hello.name == "{task}"
'''


class ScaffoldError(Exception):
    """Why the app was not written, and what is allowed."""


@dataclass(frozen=True)
class App:
    name: str
    folder: Path  # <dir>/<name>

    @property
    def task(self) -> str:
        return f"{self.name}.say_hello"

    @property
    def schedule(self) -> str:
        return f"Say hello ({self.name})"

    def test_imports(self) -> str:
        """One block in ruff's order: the app sits beside scheduler_app, both first-party."""
        lines = {
            self.name: f"from {self.name} import tasks",
            "scheduler_app": "from scheduler_app import catalog",
        }
        return "\n".join(lines[module] for module in sorted(lines))

    def files(self) -> dict[str, str]:
        values = {"name": self.name, "task": self.task, "schedule": self.schedule, "imports": self.test_imports()}
        return {
            "__init__.py": INIT.format(**values),
            "tasks.py": TASKS.format(**values),
            "test_tasks.py": TEST.format(**values),
        }


def check_name(name: str) -> None:
    if not NAME.fullmatch(name) or keyword.iskeyword(name):
        raise ScaffoldError(
            f"{name!r} is not a name for a task app: use a lower-case Python name, a letter then "
            "letters, digits or _ (e.g. reports, billing_jobs)."
        )
    found = _module_origin(name)
    if found:
        raise ScaffoldError(
            f"{name!r} clashes with the module Python already imports as {name} ({found}): pick another."
        )
    labels = {config.label for config in apps.get_app_configs()}
    if name in labels:
        raise ScaffoldError(f"{name!r} is the label of an installed app already: pick another.")


def _module_origin(name: str) -> str:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return ""
    if spec is None:
        return ""
    return spec.origin or ", ".join(spec.submodule_search_locations or []) or "built in"


def plan(name: str, directory: Path) -> App:
    """The app to write, checked: nothing is written when it raises."""
    check_name(name)
    if not directory.is_dir():
        raise ScaffoldError(f"--dir {directory}: no such folder; give an existing one (default: the checkout).")
    app = App(name, directory.resolve() / name)
    if app.folder.exists():
        raise ScaffoldError(f"{app.folder} exists already: pick another name, or remove it first.")
    return app


def write(app: App) -> list[Path]:
    app.folder.mkdir()
    written = []
    for filename, text in app.files().items():
        path = app.folder / filename
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
