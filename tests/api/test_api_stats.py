"""GET /api/stats/: the run figures over a window, platform-wide and per task, equal to values
worked out by hand from seeded runs and to what the dashboard's selectors give; queues and
workers read through Redis (null with an error when it does not answer, in bounded time);
a page of schedules as the schedule list shows them; permissions, refusals and the schema.

Time is frozen (time_machine) so the windows' edges are known; every run's dates are set
after it is created (`date_created` and `date_done` are written by Django on save)."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Permission, User
from django.test import Client
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult
from rest_framework.authtoken.models import Token

from scheduler_app import broker, schedules, selectors
from scheduler_app.admin import dashboard
from tests.api.test_api_fuzz import served_schema
from tests.hardening.test_redis_hung import DEADLINE, frozen, pointed_at
from tests.runs.servers import RedisServer, redis_server

pytestmark = pytest.mark.django_db(transaction=True)
NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
ALPHA, BETA = "tests.alpha", "tests.beta"
SECOND = dt.timedelta(seconds=1)


def token_client(user: User) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")


def staff(*codenames: str) -> User:
    user = User.objects.create_user(f"staff-{uuid.uuid4().hex[:6]}", password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def frozen_now() -> Iterator[None]:
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def api(frozen_now: None) -> Client:
    return token_client(User.objects.create_superuser("boss", password="x"))


def run(task: str, status: str, created: dt.datetime, seconds: float | None = None,
        schedule: str | None = None) -> TaskResult:  # fmt: skip
    """A run created (and, with `seconds`, started then) at `created`, last written `seconds` later."""
    row = TaskResult.objects.create(task_id=str(uuid.uuid4()), task_name=task, status=status, task_args="[]",
                                    task_kwargs="{}", periodic_task_name=schedule)  # fmt: skip
    started = created if seconds is not None else None
    done = created + dt.timedelta(seconds=seconds or 0)  # NOT NULL: a row's last write
    TaskResult.objects.filter(pk=row.pk).update(date_created=created, date_started=started, date_done=done)
    return row


def seed() -> None:
    """Alpha, last hour: three finished runs of 60, 20, 40 s overlapping (3 at T+40 s) and four
    still running (STARTED/PROGRESS, their rows written when they started: 4 at once up to now).
    Beta: a PENDING run in the last hour; 5 h ago a 100 s run and a 30 s failure starting as it
    ends (never both at once); 3 days ago a 200 s run. 8 days ago an alpha run of no window."""
    t = NOW - dt.timedelta(minutes=50)
    run(ALPHA, "SUCCESS", t, 60, schedule="alpha hourly")
    run(ALPHA, "SUCCESS", t + 30 * SECOND, 20, schedule="alpha hourly")
    run(ALPHA, "FAILURE", t + 40 * SECOND, 40, schedule="alpha hourly")
    for minutes, state in ((10, "STARTED"), (5, "PROGRESS"), (3, "STARTED"), (1, "PROGRESS")):
        run(ALPHA, state, NOW - dt.timedelta(minutes=minutes), 0)
    run(BETA, "PENDING", NOW - dt.timedelta(minutes=20))
    u = NOW - dt.timedelta(hours=5)
    run(BETA, "SUCCESS", u, 100, schedule="beta daily")
    run(BETA, "FAILURE", u + 100 * SECOND, 30, schedule="beta daily")
    run(BETA, "SUCCESS", NOW - dt.timedelta(days=3), 200)
    run(ALPHA, "SUCCESS", NOW - dt.timedelta(days=8), 1000)


def expected(runs: int, successes: int, failures: int, durations: tuple[float | None, float | None, float | None],
             peak: int, running: int, hours: float) -> dict[str, Any]:  # fmt: skip
    mean, p50, p95 = durations
    return {"runs": runs, "successes": successes, "failures": failures,
            "error_rate": failures / (successes + failures) if successes + failures else None,
            "mean_seconds": mean, "p50_seconds": p50, "p95_seconds": p95, "throughput_per_hour": runs / hours,
            "peak_concurrency": peak, "running": running, "sampled": False}  # fmt: skip


# Worked out by hand from seed(): percentiles interpolated as PostgreSQL's percentile_cont.
PLATFORM = {
    "1h": expected(8, 2, 1, (40.0, 40.0, 58.0), peak=4, running=4, hours=1),  # [20, 40, 60]
    "24h": expected(10, 3, 2, (50.0, 40.0, 92.0), peak=4, running=4, hours=24),  # [20, 30, 40, 60, 100]
    "7d": expected(11, 4, 2, (75.0, 50.0, 175.0), peak=4, running=4, hours=168),  # ... and 200
}
PER_TASK = {
    "1h": {ALPHA: expected(7, 2, 1, (40.0, 40.0, 58.0), 4, 4, 1), BETA: expected(1, 0, 0, (None, None, None), 0, 0, 1)},
    "24h": {
        ALPHA: expected(7, 2, 1, (40.0, 40.0, 58.0), 4, 4, 24),
        BETA: expected(3, 1, 1, (65.0, 65.0, 96.5), 1, 0, 24),
    },  # fmt: skip
    "7d": {
        ALPHA: expected(7, 2, 1, (40.0, 40.0, 58.0), 4, 4, 168),
        BETA: expected(4, 2, 1, (110.0, 100.0, 190.0), 1, 0, 168),
    },  # fmt: skip
}


def close(found: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Equal, floats to a millionth (PostgreSQL's avg and Python's fmean may differ in the last bits)."""
    return found.keys() == wanted.keys() and all(
        found[k] == pytest.approx(wanted[k], rel=1e-6) if isinstance(wanted[k], float) else found[k] == wanted[k]
        for k in wanted
    )


def stats(client: Client, query: str = "") -> Any:
    response = client.get(f"/api/stats/{query}")
    assert response.status_code == 200, response.content
    return response.json()


def test_its_figures_equal_those_worked_out_by_hand_for_each_window(api: Client) -> None:
    """Counts, error rate, mean / p50 / p95, throughput, peak concurrency (overlaps, a run
    ending as another starts, running runs up to now) and running now, per window and task."""
    seed()
    for window in ("1h", "24h", "7d"):
        found = stats(api, f"?window={window}")
        assert found["window"] == window
        assert dt.datetime.fromisoformat(found["since"]) == NOW - selectors.SINCE[window]
        assert close(found["runs"], PLATFORM[window]), (window, found["runs"])
        per_task = {figures.pop("task"): figures for figures in found["tasks"]}
        assert per_task.keys() == PER_TASK[window].keys(), window
        for task, wanted in PER_TASK[window].items():
            assert close(per_task[task], wanted), (window, task, per_task[task])
    assert stats(api)["window"] == "24h"  # the default


def test_a_window_moves_with_the_clock(api: Client) -> None:
    """Two hours later the last hour holds none of the seeded runs but the ones written since."""
    seed()
    with time_machine.travel(NOW + dt.timedelta(hours=2), tick=False):
        run(BETA, "SUCCESS", NOW + dt.timedelta(hours=2) - dt.timedelta(minutes=1), 5)
        found = stats(api, "?window=1h")
    assert close(found["runs"], expected(1, 1, 0, (5.0, 5.0, 5.0), 1, 0, 1))
    assert [figures["task"] for figures in found["tasks"]] == [BETA]


def test_its_figures_are_the_dashboards(api: Client) -> None:
    """The 24-hour figures are the dashboard's "Runs, last 24 h" card, from the same selector."""
    seed()
    card = dashboard.figures(False, True)["day"]  # what the dashboard renders, time frozen at NOW
    found = stats(api, "?window=24h")["runs"]
    assert close(found, card) and close(found, selectors.run_figures(NOW - selectors.DAY, NOW))
    platform, per_task = selectors.run_figures_by_task(NOW - dt.timedelta(hours=1), NOW)
    assert close(stats(api, "?window=1h")["runs"], platform)
    assert close({k: v for k, v in stats(api, "?window=1h")["tasks"][0].items() if k != "task"}, per_task[ALPHA])


def test_the_dashboards_all_kept_card_reads_the_newest_runs_on_both_databases(
    frozen_now: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a window (a million rows) durations and concurrency are of the newest
    DASHBOARD_RUN_LIMIT started runs, on PostgreSQL as on SQLite, and say so; counts stay exact."""
    seed()
    monkeypatch.setattr(selectors, "DASHBOARD_RUN_LIMIT", 6)  # the four running, then 40 s and 20 s
    card = dashboard.figures(False, True)["all"]
    wanted = {**expected(12, 5, 2, (30.0, 30.0, 39.0), peak=4, running=4, hours=1), "sampled": True}
    assert close(card, {**wanted, "throughput_per_hour": None}), card


def schedule(name: str) -> PeriodicTask:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    return PeriodicTask.objects.create(name=name, task=ALPHA, interval=every)


def test_each_schedule_shows_what_the_schedule_list_shows_a_page_at_a_time(api: Client) -> None:
    alpha, beta = schedule("alpha hourly"), schedule("beta daily")
    seed()
    first = stats(api, "?page_size=1")["schedules"]
    assert first["count"] == 2 and first["page"] == 1 and first["previous"] is None
    assert "page=2" in first["next"] and "page_size=1" in first["next"]
    [shown] = first["results"]
    assert shown["id"] == alpha.pk and shown["name"] == "alpha hourly" and shown["recent_runs"] == 3
    assert shown["last_run"]["state"] == "FAILURE"  # the newest of its three
    assert shown["success_rate"] == pytest.approx(2 / 3) and shown["median_seconds"] == 40.0
    console = selectors.run_stats(["alpha hourly"])["alpha hourly"]  # what the schedule list reads
    assert (shown["success_rate"], shown["median_seconds"]) == (console.success_rate, console.median_seconds)
    assert dt.datetime.fromisoformat(shown["last_run"]["at"]) == console.last_at
    assert dt.datetime.fromisoformat(shown["next_run"]["at"]) == schedules.shown_next_run(alpha, NOW).at
    second = stats(api, "?page=2&page_size=1")["schedules"]
    assert [s["id"] for s in second["results"]] == [beta.pk] and second["next"] is None
    assert second["results"][0]["success_rate"] == 0.5 and second["results"][0]["median_seconds"] == 65.0
    assert stats(api, "?page=3&page_size=1")["schedules"]["results"] == []


def test_it_follows_staff_and_the_permission_to_view_runs(frozen_now: None) -> None:
    """Anonymous 401; staff without `view_run` 403 (the stock results permission is not
    enough); with it 200, schedules only with the permission to view them; not staff 403."""
    schedule("alpha hourly")
    assert Client().get("/api/stats/").status_code == 401
    assert token_client(staff()).get("/api/stats/").status_code == 403
    assert token_client(staff("view_taskresult", "view_periodictask")).get("/api/stats/").status_code == 403
    runs_only = stats(token_client(staff("view_run")))
    assert runs_only["schedules"] is None and runs_only["runs"]["runs"] == 0
    both = stats(token_client(staff("view_run", "view_periodictask")))
    assert both["schedules"]["count"] == 1
    visitor = User.objects.create_user("visitor", password="x")
    visitor.user_permissions.set(Permission.objects.all())
    assert token_client(visitor).get("/api/stats/").status_code == 403


def test_it_refuses_a_bad_window_unknown_parameters_and_bad_pages_naming_what_it_takes(api: Client) -> None:
    bad = api.get("/api/stats/?window=30d")
    assert bad.status_code == 400 and bad.json() == {"window": ["must be one of 1h, 24h, 7d; got '30d'"]}
    typo = api.get("/api/stats/?windw=7d")
    assert typo.status_code == 400
    assert typo.json() == {"windw": ["unknown parameter; the parameters taken here are window, page, page_size."]}
    for query in ("page=0", "page=x", "page_size=501", "page_size=-1", "page=²", f"page={'9' * 5000}"):
        refused = api.get(f"/api/stats/?{query}")
        assert refused.status_code == 400 and query.split("=")[0] in refused.json(), query
    twice = api.get("/api/stats/?window=1h&window=7d")
    assert twice.status_code == 400 and twice.json() == {"window": ["given 2 times; give it once"]}
    # checked also for a user who is not shown the schedules (the page would not be used)
    runs_only = token_client(staff("view_run")).get("/api/stats/?page=x")
    assert runs_only.status_code == 400 and "page" in runs_only.json()


def test_every_number_the_api_takes_refuses_what_int_cannot_read(api: Client) -> None:
    """`²` passes str.isdigit and fails int(); 5,000 digits exceed int()'s limit: a 400, not a 500."""
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    task = PeriodicTask.objects.create(name="numbers", task="maintenance.purge_expired_sessions", interval=every)
    for path in (f"/api/schedules/{task.pk}/next-runs/?count=", f"/api/schedules/{task.pk}/incidents/?limit=",
                 "/api/dead-letters/?offset=", "/api/dead-letters/?limit="):  # fmt: skip
        for bad in ("²", "9" * 5000):
            refused = api.get(path + bad)
            assert refused.status_code == 400, (path, refused.content[:200])
            assert "a whole number from" in json.dumps(refused.json()), path


def test_it_reads_queues_and_workers_through_redis(api: Client) -> None:
    found = stats(api)
    assert found["broker_error"] is None and found["workers_online"] == len(found["workers"])
    assert found["queues"] == {name: 0 for name in broker.known_queues()}  # nothing waits


@pytest.fixture
def hung(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as running, pointed_at(running.url):
        yield running


def test_queues_and_workers_are_unknown_not_an_error_when_redis_does_not_answer(
    hung: RedisServer, frozen_now: None
) -> None:
    seed()
    client = token_client(User.objects.create_superuser("boss", password="x"))
    with frozen(hung):
        started = time.monotonic()
        response = client.get("/api/stats/?window=1h")
        took = time.monotonic() - started
    assert response.status_code == 200 and took < DEADLINE, (response.status_code, took)
    found = response.json()
    assert found["queues"] is None and found["workers_online"] is None and found["workers"] is None
    assert "Redis did not answer within 1.5 s" in found["broker_error"]
    assert close(found["runs"], PLATFORM["1h"])  # the database's figures all the same


def test_the_schema_and_the_index_list_it(api: Client) -> None:
    operation = served_schema()["paths"]["/api/stats/"]["get"]
    window = next(p for p in operation["parameters"] if p["name"] == "window")
    assert window["schema"]["enum"] == ["1h", "24h", "7d"]
    assert {p["name"] for p in operation["parameters"]} == {"window", "page", "page_size"}
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    served = json.loads(api.get("/api/schema/").content)
    fields = served["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
    assert {"runs", "tasks", "queues", "workers_online", "broker_error", "schedules"} <= fields.keys()
    assert api.get("/api/").json()["stats"]["url"].endswith("/api/stats/")
