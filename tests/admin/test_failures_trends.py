"""Issue 15's console reads with real rows: failures grouped (and retried or discarded in
bulk, with permissions and CSRF), trends' figures, a schedule's timeline of slots, a run's
state history written by the recorder for a real worker's run, the long-running flag and
the runs list's search by arguments."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
import time_machine
from celery import current_app
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app import insights
from scheduler_app.models import AuditEntry, SchedulePolicy
from scheduler_app.monitoring import timeline
from scheduler_app.runs import state_history
from scheduler_app.runs.history import run_context
from tests.processes import wait_for, worker

pytestmark = pytest.mark.django_db(transaction=True)
TASK = "maintenance.purge_expired_sessions"
OTHER = "maintenance.cleanup_old_runs"
FAILURES = "/admin/failures/"
RUNS = "/admin/scheduler_app/run/"
SCHEDULES = "/admin/django_celery_beat/periodictask/"
TRACEBACK = 'Traceback (most recent call last):\n  File "job.py", line 3, in run\n    fetch()\nValueError: bad <b>'


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("boss", password="x"))
    return client


def staff(*codenames: str) -> Client:
    user = User.objects.create_user(f"staff-{uuid.uuid4().hex[:6]}", password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def run(task: str = TASK, status: str = "SUCCESS", *, created: dt.datetime | None = None, seconds: float = 1.0,
        exc: str | None = None, **fields: Any) -> TaskResult:  # fmt: skip
    created = created or timezone.now()
    done = created + dt.timedelta(seconds=seconds)
    values: dict[str, Any] = {"date_started": created, "date_done": done, "meta": json.dumps({"trigger": "beat"}),
                              "task_args": "[]", "task_kwargs": "{}"}  # fmt: skip
    if exc:
        values |= {"result": json.dumps({"exc_type": exc, "exc_message": [f"{exc} <i>msg</i>"],
                                         "exc_module": "builtins"}), "traceback": TRACEBACK}  # fmt: skip
    task_id = fields.pop("task_id", None) or str(uuid.uuid4())
    row = TaskResult.objects.create(task_id=task_id, task_name=task, status=status, **(values | fields))
    dates = {"date_created": created, "date_done": (values | fields)["date_done"]}
    TaskResult.objects.filter(pk=row.pk).update(**dates)  # auto_now(_add): set them afterwards
    row.refresh_from_db()
    return row


def failures_of_two_tasks() -> dict[str, list[TaskResult]]:
    now = timezone.now()
    groups = {
        "value": [run(TASK, "FAILURE", exc="ValueError", created=now - dt.timedelta(hours=h)) for h in (30, 2, 1)],
        "key": [run(OTHER, "FAILURE", exc="KeyError", created=now - dt.timedelta(hours=h)) for h in (3, 4)],
    }
    run(TASK, "FAILURE", exc="ValueError", created=now - dt.timedelta(days=8))  # outside both windows
    run(TASK, "SUCCESS")
    return groups


# --- Failures grouped --------------------------------------------------------------------


def test_it_groups_failures_by_task_and_exception_type(admin_client: Client) -> None:
    groups = failures_of_two_tasks()
    week = insights.failure_groups(timezone.now() - dt.timedelta(days=7))
    assert [(g.task_name, g.exc_type, g.count) for g in week] == [(TASK, "ValueError", 3), (OTHER, "KeyError", 2)]
    assert week[0].first_seen == groups["value"][0].date_created
    assert week[0].last_seen == groups["value"][2].date_created
    assert week[0].sample_task_id == groups["value"][2].task_id and week[0].message == "ValueError <i>msg</i>"
    day = insights.failure_groups(timezone.now() - dt.timedelta(hours=24))
    assert [(g.task_name, g.count) for g in day] == [(TASK, 2), (OTHER, 2)]

    page = admin_client.get(FAILURES, {"window": "7d"}).content.decode()
    assert page.count('class="bk-failure-group') == 2
    assert re.findall(r'class="bk-failure-count"><a [^>]*>(\d+)</a>', page) == ["3", "2"]
    assert '<pre class="bk-traceback">Traceback (most recent call last):\n  File &quot;job.py&quot;' in page
    assert "ValueError: bad &lt;b&gt;" in page and "<b>" not in page  # escaped, indentation kept
    assert "state=FAILURE&amp;since=7d&amp;task=maintenance.purge_expired_sessions" in page


def test_it_retries_a_group_in_bulk_after_a_confirmation(admin_client: Client) -> None:
    groups = failures_of_two_tasks()
    query = {"window": "7d", "task": TASK, "exc": "ValueError"}
    confirm = admin_client.get(FAILURES + "retry/", query)
    assert confirm.status_code == 200 and b"Yes, retry them" in confirm.content
    assert TaskResult.objects.filter(meta__contains="retry_of").count() == 0  # a GET changes nothing

    response = admin_client.post(FAILURES + "retry/?" + "&".join(f"{k}={v}" for k, v in query.items()))
    assert response.status_code == 302
    retried = TaskResult.objects.filter(meta__contains='"retry_of"')
    assert sorted(run_context(r)["retry_of"] for r in retried) == sorted(r.task_id for r in groups["value"])
    assert {r.status for r in retried} == {"PENDING"} and {r.task_name for r in retried} == {TASK}
    assert [g.task_name for g in insights.failure_groups(timezone.now() - dt.timedelta(days=7))] == [OTHER]
    entries = AuditEntry.objects.filter(action="retry", via="admin")
    assert entries.count() == 3 and {e.actor_name for e in entries} == {"boss"}


def test_a_group_without_a_task_name_or_exception_type_can_be_acted_on(admin_client: Client) -> None:
    """The page names "none recorded" as "" in its links; the rows may hold "" or NULL."""
    row = run("", "FAILURE", exc="")
    assert "1 failed run in 1 group" in admin_client.get(FAILURES).content.decode()
    confirm = admin_client.get(f"{FAILURES}discard/?window=24h&task=&exc=").content.decode()
    assert "no undismissed failures" not in confirm and row.task_id[:8] in confirm


def test_bulk_retry_needs_its_permission_and_a_csrf_token() -> None:
    failures_of_two_tasks()
    url = FAILURES + f"retry/?window=7d&task={TASK}&exc=ValueError"
    viewer = staff("view_run")
    assert viewer.get(FAILURES).status_code == 200
    assert viewer.get(url).status_code == 403 and viewer.post(url).status_code == 403
    retrier = staff("view_run", "retry_run")
    page = retrier.get(url)
    assert page.status_code == 200
    assert retrier.post(url).status_code == 403  # no CSRF token
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.content)
    assert token is not None
    assert retrier.post(url, {"csrfmiddlewaretoken": token.group(1).decode()}).status_code == 302
    assert TaskResult.objects.filter(meta__contains='"retry_of"').count() == 3
    assert staff().get(FAILURES).status_code == 403  # staff without view_run


def test_it_discards_a_group_by_dismissing_its_runs(admin_client: Client) -> None:
    groups = failures_of_two_tasks()
    assert (
        staff("view_run", "retry_run").get(FAILURES + f"discard/?window=7d&task={OTHER}&exc=KeyError").status_code
        == 403
    )
    response = admin_client.post(FAILURES + f"discard/?window=7d&task={OTHER}&exc=KeyError")
    assert response.status_code == 302
    for row in groups["key"]:
        row.refresh_from_db()
        assert row.status == "FAILURE" and run_context(row)["dismissed_by"] == "boss"  # kept, marked
    assert [g.exc_type for g in insights.failure_groups(timezone.now() - dt.timedelta(days=7))] == ["ValueError"]
    assert AuditEntry.objects.filter(action="dismiss", via="admin").count() == 2


# --- Trends -----------------------------------------------------------------------------

NOW = dt.datetime(2026, 3, 2, 12, 30, tzinfo=dt.UTC)


def test_it_computes_each_tasks_throughput_error_rate_and_percentiles(admin_client: Client) -> None:
    eleven = NOW.replace(hour=11, minute=5)
    for seconds in (1.0, 2.0, 3.0, 4.0, 10.0):
        run(TASK, created=eleven, seconds=seconds)
    run(TASK, "FAILURE", created=NOW.replace(hour=10, minute=15), seconds=6, exc="ValueError")
    for seconds in (0.5, 1.5):
        run(OTHER, created=eleven, seconds=seconds)
    run(TASK, created=NOW - dt.timedelta(days=2))  # outside the 24 hours, inside the 7 days

    with time_machine.travel(NOW, tick=False):
        found = insights.trends(timezone.now(), "24h", TASK)
        week = insights.trends(timezone.now(), "7d")
        page = admin_client.get("/admin/trends/", {"window": "24h", "task": TASK})
    figures = found.per_task[TASK]
    assert (figures.runs, figures.successes, figures.failures) == (6, 5, 1)
    assert figures.error_rate == pytest.approx(1 / 6)
    assert figures.p50 == pytest.approx(3.5) and figures.p95 == pytest.approx(9.0)  # percentile_cont over 1,2,3,4,6,10
    assert found.per_hour(figures) == pytest.approx(6 / 24)
    assert found.per_task[OTHER].p50 == pytest.approx(1.0) and found.per_task[OTHER].p95 == pytest.approx(1.45)
    data = found.chart_data()
    assert len(data["labels"]) == 24 and data["labels"][22] == "2026-03-02T11:00:00+00:00"
    assert (data["per_hour"][22], data["p50"][22], data["p95"][22]) == (5, 3.0, 8.8)
    assert (data["error_rate"][21], data["error_rate"][22], data["p50"][0]) == (100.0, 0.0, None)
    assert week.per_task[TASK].runs == 7 and len(week.chart_data()["labels"]) == 28 and not found.sampled
    body = page.content.decode()
    assert page.status_code == 200 and 'id="bk-trends-data"' in body and "chart.umd.min.js" in body
    assert json.loads(re.search(r'id="bk-trends-data" type="application/json">(.*?)</script>', body).group(1)) == data  # type: ignore[union-attr]


def test_choosing_another_or_an_unknown_task_reads_no_run_again(admin_client: Client) -> None:
    eleven = NOW.replace(hour=11, minute=5)
    run(TASK, created=eleven, seconds=2.0)
    for seconds in (0.5, 1.5):
        run(OTHER, created=eleven, seconds=seconds)

    def chart(response: Any) -> dict[str, Any]:
        found = re.search(r'id="bk-trends-data" type="application/json">(.*?)</script>', response.content.decode())
        assert found, response.content.decode()
        return cast(dict[str, Any], json.loads(found.group(1)))

    def runs_read(queries: CaptureQueriesContext) -> list[str]:
        return [q["sql"] for q in queries.captured_queries if "django_celery_results_taskresult" in q["sql"]]

    with time_machine.travel(NOW, tick=False):
        with CaptureQueriesContext(connection) as first:
            mine = admin_client.get("/admin/trends/", {"window": "24h", "task": TASK})
        assert runs_read(first)  # the window was read once, for every task
        with CaptureQueriesContext(connection) as other:
            theirs = admin_client.get("/admin/trends/", {"window": "24h", "task": OTHER})
        with CaptureQueriesContext(connection) as unknown:
            nobody = admin_client.get("/admin/trends/", {"window": "24h", "task": "no.such.task"})
    assert runs_read(other) == [] and runs_read(unknown) == []
    assert (chart(mine)["per_hour"][22], chart(mine)["p50"][22]) == (1, 2.0)
    assert (chart(theirs)["per_hour"][22], chart(theirs)["p50"][22]) == (2, 1.0)
    body = nobody.content.decode()
    assert nobody.status_code == 200 and "No task “no.such.task” ran in this window" in body
    assert chart(nobody)["per_hour"][22] == 3 and '<option value="no.such.task"' not in body


def test_trends_need_the_permission_to_view_runs() -> None:
    assert staff().get("/admin/trends/").status_code == 403
    assert staff("view_run").get("/admin/trends/").status_code == 200


# --- A schedule's timeline --------------------------------------------------------------


def schedule_with_slots() -> PeriodicTask:
    """Every 10 minutes since 10:55; slots 11:00 ... 12:00 seen at 12:00:30."""
    every, _ = IntervalSchedule.objects.get_or_create(every=10, period=IntervalSchedule.MINUTES)
    task = PeriodicTask.objects.create(name="ten-minutely", task=TASK, interval=every)
    noon = NOW.replace(hour=12, minute=0)
    PeriodicTask.objects.filter(pk=task.pk).update(date_changed=NOW.replace(hour=10, minute=55), last_run_at=noon)
    outcomes = [(0, "SUCCESS", 2), (10, "FAILURE", 1), (20, "SKIPPED", None), (40, "SUCCESS", 7 * 60),
                (50, "FAILURE", 1), (50, "SUCCESS", 2)]  # fmt: skip
    for minute, status, late in outcomes:
        slot = NOW.replace(hour=11, minute=0) + dt.timedelta(minutes=minute)
        started = slot + dt.timedelta(seconds=late) if late is not None else None
        meta = json.dumps({"trigger": "beat", "scheduled_for": slot.isoformat()})
        run(TASK, status, created=started or slot, periodic_task_name=task.name, date_started=started, meta=meta)
    return task


def cells_in(html: str) -> list[str]:
    strip = re.search(r'<ol class="bk-timeline".*?</ol>', html, re.S)
    assert strip is not None, "no timeline on the page"
    return re.findall(r'class="bk-slot bk-slot-(\w+)"', strip.group(0))


def test_the_timeline_shows_each_slots_outcome_in_order(admin_client: Client) -> None:
    task = schedule_with_slots()
    expected = ["ran", "failed", "skipped", "missed", "late", "ran", "due"]  # 11:00 ... 12:00
    with time_machine.travel(NOW.replace(hour=12, minute=0, second=30), tick=False):
        listed = admin_client.get(SCHEDULES).content.decode()
        page = admin_client.get(f"{SCHEDULES}{task.pk}/change/").content.decode()
    assert cells_in(listed) == expected
    assert cells_in(page) == expected
    assert 'title="2026-03-02 11:30 UTC: missed: no run"' in page
    assert re.search(r'href="/admin/scheduler_app/run/\d+/change/" class="bk-slot bk-slot-late" '
                     r'title="2026-03-02 11:40 UTC: started late \(SUCCESS, run \w{8}\)"', page)  # fmt: skip
    assert 'class="bk-timeline-legend"' in page and "skipped (overlap)" in page


def test_one_schedules_many_manual_runs_do_not_hide_anothers_slots() -> None:
    task = schedule_with_slots()
    every = IntervalSchedule.objects.get(every=10, period=IntervalSchedule.MINUTES)
    busy = PeriodicTask.objects.create(name="busy", task=OTHER, interval=every)
    PeriodicTask.objects.filter(pk=busy.pk).update(date_changed=NOW.replace(hour=10, minute=55))
    manual = json.dumps({"trigger": "manual", "by": "op"})
    TaskResult.objects.bulk_create(
        TaskResult(task_id=str(uuid.uuid4()), task_name=OTHER, status="SUCCESS", periodic_task_name=busy.name,
                   meta=manual)
        for _ in range(200)
    )  # fmt: skip
    TaskResult.objects.filter(periodic_task_name=busy.name).update(date_created=NOW.replace(hour=11, minute=59))
    with time_machine.travel(NOW.replace(hour=12, minute=0, second=30), tick=False):
        tasks = list(PeriodicTask.objects.filter(pk__in=[task.pk, busy.pk]).order_by("name"))
        with CaptureQueriesContext(connection) as queries:
            found = timeline.timelines(tasks, timezone.now())
    assert [cell.state for cell in found[task.pk]] == ["ran", "failed", "skipped", "missed", "late", "ran", "due"]
    assert found[busy.pk] and all(cell.run is None for cell in found[busy.pk])  # manual runs fill no slot
    assert len([q for q in queries.captured_queries if "django_celery_results_taskresult" in q["sql"]]) == 1


# --- State history, long runs, search ---------------------------------------------------


def test_state_history_merges_once_in_order_and_stays_bounded() -> None:
    t = [(dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=s)).isoformat() for s in range(60)]
    earlier = [("PENDING", t[0]), ("STARTED", t[1])]
    later = [("STARTED", t[1]), ("PROGRESS", t[2]), ("PROGRESS", t[3]), ("SUCCESS", t[4])]
    assert state_history.merged(earlier, later) == [("PENDING", t[0]), ("STARTED", t[1]), ("PROGRESS", t[2]),
                                                    ("SUCCESS", t[4])]  # fmt: skip
    many = [("RETRY" if i % 2 else "STARTED", t[i]) for i in range(60)]
    bounded = state_history.merged([], many)
    assert len(bounded) == state_history.MAX_STATES and bounded[0] == many[0] and bounded[-1] == many[-1]
    assert state_history.with_states("not json", None, later) == "not json"


def test_the_recorder_writes_a_real_runs_state_history(admin_client: Client, tmp_path: Path, key: str) -> None:
    with worker(tmp_path, "--include", "tests.tasks"):
        result = current_app.send_task("tests.flaky", kwargs={"key": key, "failures": 1},
                                       headers={"beatkeeper": {"trigger": "api"}})  # fmt: skip
        done = wait_for(lambda: TaskResult.objects.filter(task_id=result.id, status="SUCCESS").first(), 60,
                        "the retried run to succeed")  # fmt: skip
    states = [status for status, _ in state_history.stored(done.meta)]
    # Each attempt's message is received before it starts; the retry's message may reach the
    # worker a moment before or after the first attempt's RETRY is written.
    assert [s for s in states if s != "RECEIVED"] == ["STARTED", "RETRY", "STARTED", "SUCCESS"], states
    assert states.count("RECEIVED") == 2 and states[0] == "RECEIVED", states
    second_received, second_start = len(states) - 1 - states[::-1].index("RECEIVED"), len(states) - 2
    assert second_received < second_start, states
    times = [dt.datetime.fromisoformat(at) for _, at in state_history.stored(done.meta)]
    assert times == sorted(times) and times[-1] == done.date_done
    page = admin_client.get(f"{RUNS}{done.pk}/change/").content.decode()
    table = re.search(r'<table class="bk-state-history">.*?</table>', page, re.S)
    assert table is not None
    assert re.findall(r"<tr><td>(\w+)</td>", table.group(0)) == ["QUEUED", *states]


@time_machine.travel(NOW, tick=False)
def test_a_run_running_longer_than_usual_is_flagged(admin_client: Client) -> None:
    now = timezone.now()
    for hours in (1, 2, 3, 4, 5):
        run(TASK, created=now - dt.timedelta(hours=hours), seconds=1.0)  # p95 = 1 s
    long = run(TASK, "STARTED", created=now - dt.timedelta(seconds=10), seconds=0)
    usual = run(TASK, "STARTED", created=now - dt.timedelta(seconds=1), seconds=0)
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    limited = PeriodicTask.objects.create(name="limited", task=TASK, interval=every)
    SchedulePolicy.objects.create(periodic_task=limited, time_limit=60)
    near = run(OTHER, "STARTED", created=now - dt.timedelta(seconds=55), seconds=0, periodic_task_name="limited")

    flagged = insights.running_long([long, usual, near], timezone.now())
    assert set(flagged) == {long.task_id, near.task_id}
    assert "over 2 × its task's p95 (1.0 s" in flagged[long.task_id]
    assert "within 10 % of its 60.0 s time limit" in flagged[near.task_id]
    listed = admin_client.get(RUNS).content.decode()
    assert listed.count('class="bk-long"') == 2
    page = admin_client.get(f"{RUNS}{long.pk}/change/").content.decode()
    assert "bk-long-note" in page and "over 2 × its task&#x27;s p95" in page
    assert "bk-long-note" not in admin_client.get(f"{RUNS}{usual.pk}/change/").content.decode()


def test_the_runs_search_finds_text_in_arguments_within_its_window(admin_client: Client) -> None:
    now = timezone.now()
    recent = run(TASK, task_kwargs=json.dumps("{'invoice': 'INV-42'}"))
    older = run(TASK, created=now - dt.timedelta(days=3), task_args=json.dumps("['inv-42']"))
    other = run(TASK, task_kwargs=json.dumps("{'invoice': 'INV-7'}"))

    def found(**query: str) -> set[str]:
        page = admin_client.get(RUNS, query).content.decode()
        return {row.task_id for row in (recent, older, other) if f">{row.task_id[:8]}</a>" in page}

    assert found(q="inv-42") == {recent.task_id}  # any case, the last 24 hours
    assert found(q="inv-42", since="7d") == {recent.task_id, older.task_id}
    assert found(q=other.task_id[:8]) == {other.task_id}  # a run id's prefix still finds the run
    assert found(q=older.task_id) == {older.task_id}


def test_a_short_number_is_searched_in_the_arguments_even_when_a_run_id_starts_with_it(admin_client: Client) -> None:
    """At a million runs, "42" or "cafe" starts some run's id: only 8 characters or more are an id."""
    by_id = run(TASK, task_id="42" + uuid.uuid4().hex[2:])
    by_argument = run(TASK, task_args=json.dumps("[42]"))
    page = admin_client.get(RUNS, {"q": "42"}).content.decode()
    assert f">{by_argument.task_id[:8]}</a>" in page
    assert f">{by_id.task_id[:8]}</a>" not in page
