"""The README's *Adding a task*, followed literally: scaffold an app in a folder of its own,
install it through BEATKEEPER_APPS (and PYTHONPATH, the folder being outside the checkout),
test it, seed it, see it in the task picker and /api/tasks/, and see a real beat send it to a
real worker that runs it, recorded SUCCESS. No apps.py, no edit of the project's settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django_celery_results.models import TaskResult

from tests.processes import ROOT, beat, process_env, wait_for, worker

# What the web process sees, asked as a staff user in a process started as the README says.
WEB_VIEW = """
import json, django
django.setup()
from django.contrib.auth.models import User
from django.test import Client
client = Client()
client.force_login(User.objects.create_user("recipe", is_staff=True, is_superuser=True))
tasks = {t["name"]: t for t in client.get("/api/tasks/").json()}
picker = client.get("/admin/django_celery_beat/periodictask/add/").content.decode()
print(json.dumps({"tasks": tasks, "picker": picker}))
"""


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    done = run([sys.executable, "manage.py", *args], process_env(**env))
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def installed(name: str, folder: Path) -> dict[str, str]:
    """The environment the scaffold's next steps print: BEATKEEPER_APPS, and PYTHONPATH."""
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH", "")]))
    return {"BEATKEEPER_APPS": name, "PYTHONPATH": path}


@pytest.mark.django_db(transaction=True)
def test_it_runs_a_new_task_app_from_the_scaffold_to_a_recorded_run(tmp_path: Path) -> None:
    name, folder = f"recipe_{uuid.uuid4().hex[:6]}", tmp_path / "apps"
    folder.mkdir()
    task = f"{name}.say_hello"
    scaffold = manage("new_task_app", name, "--dir", str(folder))
    assert f"export BEATKEEPER_APPS={name}" in scaffold.stdout
    assert f"export PYTHONPATH={folder}" in scaffold.stdout
    assert sorted(p.name for p in (folder / name).iterdir()) == ["__init__.py", "tasks.py", "test_tasks.py"]
    env = installed(name, folder)

    own_tests = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
                     "--rootdir", str(ROOT), str(folder / name)], process_env(**env))  # fmt: skip
    assert "2 passed" in own_tests.stdout, own_tests.stdout + own_tests.stderr

    manage("seed_default_tasks")  # what `make run` seeded before the app existed
    seeded = manage("seed_default_tasks", **env)
    assert f"created   Say hello ({name}) ({task})" in seeded.stdout
    assert "1 created, 0 updated" in seeded.stdout

    web = json.loads(run([sys.executable, "-c", WEB_VIEW], process_env(**env)).stdout)
    every_minute = {"minute": "*", "hour": "*", "day_of_month": "*", "month_of_year": "*", "day_of_week": "*"}
    assert web["tasks"][task]["default_schedule"] == {"kind": "cron", **every_minute, "timezone": "UTC"}
    assert web["tasks"][task]["policy"]["overlap"] == "skip"
    assert f'<option value="{task}">' in web["picker"]

    with worker(tmp_path, concurrency=1, **env), beat(tmp_path, **env):
        found = wait_for(
            lambda: TaskResult.objects.filter(task_name=task, status="SUCCESS").first(), 120, f"a SUCCESS of {task}"
        )
    assert json.loads(found.result or "null") == {"greeting": "Hello, world!"}
    assert found.periodic_task_name == f"Say hello ({name})"


def test_it_is_not_installed_by_a_folder_alone(tmp_path: Path) -> None:
    """Without BEATKEEPER_APPS the app's schedule is not seeded: the install step matters."""
    name = f"recipe_{uuid.uuid4().hex[:6]}"
    call_command("new_task_app", name, "--dir", str(tmp_path), stdout=StringIO())
    done = run([sys.executable, "manage.py", "seed_default_tasks", "--dry-run"], process_env(PYTHONPATH=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert name not in done.stdout


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("9lives", "not a name for a task app: use a lower-case Python name"),
        ("Reports", "not a name for a task app"),
        ("class", "not a name for a task app"),
        ("json", "clashes with the module Python already imports as json"),
        ("tests", "clashes with the module Python already imports as tests"),
        ("admin", "the label of an installed app already"),
    ],
)
def test_it_refuses_a_bad_app_name_writing_nothing(name: str, says: str, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="Nothing was written") as refused:
        call_command("new_task_app", name, "--dir", str(tmp_path))
    assert says in str(refused.value)
    assert list(tmp_path.iterdir()) == []


def test_it_refuses_a_folder_that_exists_or_a_missing_dir(tmp_path: Path) -> None:
    (tmp_path / "reports_b").mkdir()
    with pytest.raises(CommandError, match="exists already"):
        call_command("new_task_app", "reports_b", "--dir", str(tmp_path))
    assert list((tmp_path / "reports_b").iterdir()) == []
    with pytest.raises(CommandError, match="no such folder"):
        call_command("new_task_app", "reports_b", "--dir", str(tmp_path / "nowhere"))


@pytest.mark.parametrize(
    ("apps", "says"),
    [
        ("a-b", "BEATKEEPER_APPS has 'a-b', not a Python module name"),
        ("no_such_app_b", "BEATKEEPER_APPS has 'no_such_app_b', which Python cannot import"),
        ("maintenance", "BEATKEEPER_APPS has 'maintenance', which is installed already"),
    ],
)
def test_it_stops_start_up_on_a_bad_beatkeeper_apps(apps: str, says: str) -> None:
    done = run([sys.executable, "manage.py", "check"], process_env(BEATKEEPER_APPS=apps))
    assert done.returncode != 0
    assert says in done.stderr
