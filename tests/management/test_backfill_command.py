"""manage.py backfill: a dry run prints the slots and writes nothing; a start writes the
backfill and says so; refused input is a CommandError (a non-zero exit) and writes nothing."""

from __future__ import annotations

import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from scheduler_app.models import AuditEntry, Backfill
from tests.backfill_clock import HOUR, NOW
from tests.processes import ROOT, process_env

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("backfill_clock")]


@pytest.fixture
def task() -> PeriodicTask:
    every = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
    task = PeriodicTask.objects.create(name="hourly", task="maintenance.purge_expired_sessions", interval=every)
    PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=NOW - 30 * HOUR)
    return task


def run(*args: str) -> str:
    out = StringIO()
    call_command("backfill", *args, stdout=out)
    return out.getvalue()


def test_it_prints_the_slots_of_a_dry_run_and_writes_nothing(task: PeriodicTask) -> None:
    out = run("hourly", "--from", "2025-03-10T09:00+00:00", "--to", "2025-03-10T11:00Z", "--dry-run", "--newest-first")
    lines = out.splitlines()
    assert [line.split()[1] for line in lines[:3]] == [
        "2025-03-10T11:00:00+00:00", "2025-03-10T10:00:00+00:00", "2025-03-10T09:00:00+00:00"]  # fmt: skip
    assert "Dry run, nothing written" in lines[3] and "3 to run" in lines[3], out
    assert Backfill.objects.count() == AuditEntry.objects.count() == 0


def test_it_starts_a_backfill_by_the_schedule_id_and_cancels_it(task: PeriodicTask) -> None:
    out = run(str(task.pk), "--from", "2025-03-10T09:00Z", "--to", "2025-03-10T11:00Z", "--max-concurrent", "2")
    backfill = Backfill.objects.get()
    assert f"Backfill {backfill.pk} of hourly: 3 slot(s), 3 to run" in out, out
    assert (backfill.max_concurrent, backfill.via, backfill.requested_by_name) == (2, "command", "system")
    assert AuditEntry.objects.filter(action="backfill", via="command").count() == 1
    out = run("--cancel", str(backfill.pk))
    assert "3 waiting slot(s) will not run" in out
    backfill.refresh_from_db()
    assert backfill.state == "cancelled"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["nope", "--from", "2025-03-10T09:00Z", "--to", "2025-03-10T11:00Z"], "no schedule 'nope'"),
        (["hourly", "--from", "yesterday", "--to", "2025-03-10T11:00Z"], "not an ISO 8601 moment"),
        (["hourly", "--from", "2025-03-10T09:00Z", "--to", "2025-03-10T13:00Z"], "in the future"),
        (["hourly", "--from", "2025-03-10T09:00Z"], "give --to"),
        (["hourly", "--from", "2025-03-10T09:00Z", "--to", "2025-03-10T11:00Z", "--max-concurrent", "0"], "1 to 100"),
        (["--cancel", "12345"], "no backfill 12345"),
    ],
)
def test_it_refuses_bad_input_with_a_clear_message_writing_nothing(task: PeriodicTask, args: list[str],
                                                                   says: str) -> None:  # fmt: skip
    with pytest.raises(CommandError, match=says):
        run(*args)
    assert Backfill.objects.count() == 0


def test_it_exits_non_zero_when_refused(task: PeriodicTask) -> None:
    done = subprocess.run([sys.executable, "manage.py", "backfill", "no such schedule", "--from", "2025-03-10T09:00Z",
                           "--to", "2025-03-10T11:00Z"], cwd=ROOT, env=process_env(), capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode != 0 and "no schedule 'no such schedule'" in done.stderr, done.stderr
