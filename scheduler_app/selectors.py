"""Reads shared by the console and the API: run statistics of schedules and the
dashboard's figures. Each read is bounded (a page of schedules, the last day of runs),
so none of them slows down as the run history grows."""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis
from celery import current_app
from celery import states as celery_states
from django.conf import settings
from django.db import connection
from django.db.models import CharField, Count, Func, Q, QuerySet
from django.db.models.functions import TruncHour
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app import broker
from scheduler_app.beat import leader
from scheduler_app.connection import redis_client
from scheduler_app.models import Incident, ScheduleHealth
from scheduler_app.runs import recorder

RUN_STATES = ["PENDING", "STARTED", "PROGRESS", "RETRY", "WAITING", "SUCCESS", "FAILURE", "SKIPPED", "EXPIRED",
              "REVOKED"]  # fmt: skip
SINCE = {"1h": dt.timedelta(hours=1), "24h": dt.timedelta(hours=24), "7d": dt.timedelta(days=7),
         "30d": dt.timedelta(days=30)}  # fmt: skip
RECENT_RUNS = 20  # runs behind a schedule's success rate and median duration
DAY = dt.timedelta(hours=24)
DASHBOARD_RUN_LIMIT = 100_000  # runs of the last day read for percentiles and concurrency
HEALTH_TASK = "maintenance.system_health_check"
RECORDER_QUIET_SECONDS = 30  # a recorder silent this long, with runs waiting, is flagged

RunT = TypeVar("RunT", bound=TaskResult)


@dataclass(frozen=True)
class RunStats:
    last_state: str
    last_at: dt.datetime | None
    success_rate: float | None  # of the finished runs among the recent ones
    median_seconds: float | None
    runs: int


def duration(started: dt.datetime | None, done: dt.datetime | None) -> float | None:
    return (done - started).total_seconds() if started and done else None


def run_stats(names: list[str], recent: int = RECENT_RUNS) -> dict[str, RunStats]:
    """The last `recent` runs of each named schedule, summed up (one bounded query each)."""
    stats = {}
    for name in names:
        runs = TaskResult.objects.filter(periodic_task_name=name).order_by("-date_created")
        rows = list(runs.values_list("status", "date_created", "date_started", "date_done")[:recent])
        if rows:
            stats[name] = summarise(rows)
    return stats


def summarise(rows: list[tuple[Any, ...]]) -> RunStats:
    finished = [row for row in rows if row[0] in (celery_states.SUCCESS, celery_states.FAILURE)]
    successes = sum(1 for row in finished if row[0] == celery_states.SUCCESS)
    durations = [d for row in finished if (d := duration(row[2], row[3])) is not None]
    return RunStats(
        last_state=rows[0][0],
        last_at=rows[0][3] or rows[0][2] or rows[0][1],
        success_rate=successes / len(finished) if finished else None,
        median_seconds=statistics.median(durations) if durations else None,
        runs=len(rows),
    )


class TriggerOf(Func):
    """The trigger in a run's meta text, as PostgreSQL's index `bk_run_trigger_created` has it
    (a regular expression, not a JSON cast: a row whose meta is not JSON must still insert)."""

    template = 'substring(%(expressions)s from \'"trigger": "([a-z]+)"\')'
    output_field = CharField()


def with_trigger(runs: QuerySet[RunT], trigger: str) -> QuerySet[RunT]:
    """Runs of one trigger: through the expression index of migration 0004 on PostgreSQL,
    a `LIKE` on the meta text elsewhere."""
    if connection.vendor == "postgresql":
        # An alias only filters: the rows stay the caller's runs (the stubs type it as an annotation).
        return cast("QuerySet[RunT]", runs.alias(trigger=TriggerOf("meta")).filter(trigger=trigger))
    return runs.filter(meta__contains=json.dumps({"trigger": trigger})[1:-1])


def recent_runs(name: str, count: int = 10) -> list[TaskResult]:
    return list(TaskResult.objects.filter(periodic_task_name=name).order_by("-date_created")[:count])


# --- Dashboard -------------------------------------------------------------------------


def schedule_counts() -> dict[str, int]:
    totals = PeriodicTask.objects.aggregate(
        n_total=Count("pk"),
        n_enabled=Count("pk", filter=Q(enabled=True)),
        n_paused=Count("pk", filter=Q(enabled=False, policy__paused_at__isnull=False)),
    )
    health = dict(ScheduleHealth.objects.values_list("state").annotate(n=Count("pk")).values_list("state", "n"))
    return {
        **{key.removeprefix("n_"): value for key, value in totals.items()},
        "failing": health.get(ScheduleHealth.FAILING, 0),
        "late": health.get(ScheduleHealth.LATE, 0),
    }


def run_figures(since: dt.datetime | None) -> dict[str, Any]:
    """Runs, successes, failures, error rate, mean and p95 duration, peak concurrency."""
    runs = TaskResult.objects.all() if since is None else TaskResult.objects.filter(date_created__gte=since)
    counts = dict(runs.values_list("status").annotate(n=Count("pk")).values_list("status", "n"))
    successes, failures = counts.get(celery_states.SUCCESS, 0), counts.get(celery_states.FAILURE, 0)
    # The filter leaves only runs with both times.
    spans = cast(
        list[tuple[dt.datetime, dt.datetime]],
        list(
            runs.filter(date_started__isnull=False, date_done__isnull=False)
            .order_by("-date_created")
            .values_list("date_started", "date_done")[:DASHBOARD_RUN_LIMIT]
        ),
    )
    durations = sorted((done - started).total_seconds() for started, done in spans)
    return {
        "runs": sum(counts.values()),
        "successes": successes,
        "failures": failures,
        "error_rate": failures / (successes + failures) if successes + failures else None,
        "mean_seconds": statistics.fmean(durations) if durations else None,
        "p95_seconds": percentile(durations, 0.95),
        "peak_concurrency": peak_concurrency(spans),
        "running": counts.get(celery_states.STARTED, 0) + counts.get("PROGRESS", 0),
    }


def percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def peak_concurrency(spans: list[tuple[dt.datetime, dt.datetime]]) -> int:
    """The most runs that were running at one moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def runs_per_hour(now: dt.datetime) -> list[dict[str, Any]]:
    """The last 24 hours, hour by hour: runs by state (counted by the database)."""
    start = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=23)
    hours: dict[dt.datetime, Counter[str]] = {start + dt.timedelta(hours=i): Counter() for i in range(24)}
    rows = (
        TaskResult.objects.filter(date_created__gte=start, date_created__lt=start + DAY)
        .annotate(hour=TruncHour("date_created", tzinfo=dt.UTC))
        .values("hour", "status")
        .annotate(n=Count("pk"))
        .values_list("hour", "status", "n")
    )
    for hour, status, count in rows:
        if hour in hours:
            hours[hour][bucket(status)] += count
    return [{"hour": hour, "states": dict(counts), "total": sum(counts.values())} for hour, counts in hours.items()]


def bucket(status: str) -> str:
    if status in (celery_states.SUCCESS, celery_states.FAILURE):
        return status
    return "OTHER"


def median_duration_per_task(since: dt.datetime) -> list[tuple[str, float]]:
    spans: defaultdict[str, list[float]] = defaultdict(list)
    rows = TaskResult.objects.filter(date_created__gte=since, status=celery_states.SUCCESS, date_started__isnull=False)
    for name, started, done in rows.values_list("task_name", "date_started", "date_done")[:DASHBOARD_RUN_LIMIT]:
        if done and started:  # started: never NULL here (the filter)
            spans[name or "?"].append((done - started).total_seconds())
    medians = [(name, statistics.median(values)) for name, values in spans.items()]
    return sorted(medians, key=lambda item: item[1], reverse=True)[:15]


def recent_incidents(limit: int = 10) -> list[Incident]:
    return list(Incident.objects.order_by("-at", "-pk")[:limit])


def recent_failures(limit: int = 10) -> list[TaskResult]:
    return list(TaskResult.objects.filter(status=celery_states.FAILURE).order_by("-date_created")[:limit])


def last_health_check() -> dict[str, Any] | None:
    row = (
        TaskResult.objects.filter(task_name=HEALTH_TASK, status=celery_states.SUCCESS).order_by("-date_created").first()
    )
    if row is None:
        return None
    try:
        result = json.loads(row.result or "{}")
    except ValueError:
        result = {}
    result = result if isinstance(result, dict) else {}
    return {
        "at": row.date_done,
        "run": row,
        "status": result.get("status", "?"),
        "problems": result.get("problems", []),
    }


def workers() -> list[dict[str, Any]]:
    """Workers that answered `inspect`, with the queues they consume."""
    try:
        with broker.bounded_connection() as conn:
            queues = current_app.control.inspect(timeout=0.5, connection=conn).active_queues() or {}
    except Exception:  # noqa: BLE001  (no broker: no worker answers)
        return []
    return [{"name": name, "queues": sorted(q["name"] for q in qs)} for name, qs in sorted(queues.items())]


def beat_status() -> dict[str, Any]:
    client = redis_client(broker.bound())
    try:
        return leader.heartbeat(client)
    except Exception as exc:  # noqa: BLE001  (the broker is down: say so)
        return {"leader": None, "beats": [], "error": str(exc)}
    finally:
        client.close()


def ledger_status() -> dict[str, Any]:
    """The run ledger's backlog (`recorder.backlog`), with what the dashboard flags: a lag
    over LEDGER_MAX_LAG_SECONDS, no recorder heard from for `RECORDER_QUIET_SECONDS` while
    changes wait, dead events. `error` instead when Redis does not answer."""
    client = redis_client(broker.bound())
    try:
        found = recorder.backlog(client)
    except redis.RedisError:
        return {"error": "Redis unreachable"}
    except Exception as exc:  # noqa: BLE001  (the dashboard shows the rest anyway)
        return {"error": f"the ledger could not be read: {type(exc).__name__}: {exc}"[:300]}
    finally:
        client.close()
    max_lag = float(settings.LEDGER_MAX_LAG_SECONDS)
    quiet = found.recorder_age is None or found.recorder_age > RECORDER_QUIET_SECONDS
    late = found.lag_seconds > max_lag
    stalled = bool(found.events) and quiet
    flagged = late or stalled or found.over_limit or found.dead > 0
    return {"events": found.events, "lag": found.lag_seconds, "max_lag": max_lag, "dead": found.dead,
            "recorder": found.recorder, "recorder_age": found.recorder_age, "over_limit": found.over_limit,
            "late": late, "stalled": stalled, "flagged": flagged}  # fmt: skip


def redis_figures() -> dict[str, Any]:
    """Workers, queues, beat and the ledger, all read through Redis: after one ping, so a
    Redis that does not answer costs the page one bounded wait (broker.bound()), not one
    per panel; `redis_error` then says what could not be read and why."""
    status = broker.broker_status()
    if status.reachable:
        return {"workers": workers(), "queues": broker.queue_depths(), "beat": beat_status(),
                "ledger": ledger_status(), "redis_error": None}  # fmt: skip
    error = f"Redis did not answer within {broker.bound():g} s ({status.error})"[:300]
    return {"workers": [], "queues": dict.fromkeys(broker.known_queues(), -1),
            "beat": {"leader": None, "beats": [], "error": f"{error}: beat's state could not be read."},
            "ledger": {"error": "Redis unreachable"},  # as ledger_status() says it; the banner says more
            "redis_error": f"{error}: workers, queues, beat and the run ledger could not be read; "
                           "the figures from the database are shown."}  # fmt: skip


def dashboard(now: dt.datetime, *, schedules_too: bool, runs_too: bool,
              slow: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The dashboard's figures, those about schedules and those about runs each only if
    asked (the viewer's permissions). `slow` holds the figures over all kept runs from a
    recent call, if the caller keeps them: they read the whole run table."""
    figures: dict[str, Any] = {"now": now, **redis_figures()}
    if schedules_too:
        figures |= {"schedules": schedule_counts(), "incidents": recent_incidents()}  # upcoming: admin/dashboard.py
    if runs_too:
        figures |= {
            "day": run_figures(now - DAY),
            "all": (slow or {}).get("all") or run_figures(None),
            "failures": recent_failures(),
            "per_hour": runs_per_hour(now),
            "per_task": median_duration_per_task(now - DAY),
            "health": last_health_check(),
        }
    return figures
