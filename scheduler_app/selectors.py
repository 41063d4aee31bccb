"""Reads shared by the console and the API: run statistics of schedules and the
dashboard's figures, which /api/stats/ gives too (the same functions, so the two never
disagree). Each read is bounded (a page of schedules, a window of runs read through the
`date_created` index, aggregated in the database on PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis
from celery import current_app
from celery import states as celery_states
from django.conf import settings
from django.db import connection
from django.db.models import CharField, Count, Func, Q, QuerySet
from django.db.models.functions import TruncHour
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult

from scheduler_app import broker, schedules
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
DASHBOARD_RUN_LIMIT = 100_000  # runs of a window read for percentiles and concurrency (not on PostgreSQL)
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


def schedule_figures(tasks: list[PeriodicTask], now: dt.datetime) -> list[dict[str, Any]]:
    """What the console's schedule list shows of each schedule: the last run, the next run
    (`schedules.shown_next_run`, beat's own computation), success rate and median duration of
    its last RECENT_RUNS runs (`run_stats`: one bounded query a schedule)."""
    stats = run_stats([task.name for task in tasks])
    found = []
    for task in tasks:
        recent, upcoming = stats.get(task.name), schedules.shown_next_run(task, now)
        local = upcoming.local()
        found.append({
            "id": task.pk, "name": task.name, "task": task.task, "enabled": task.enabled,
            "last_run": {"state": recent.last_state, "at": recent.last_at} if recent else None,
            "next_run": {"at": upcoming.at, "local": local.isoformat() if local else None, "zone": upcoming.zone,
                         "reason": upcoming.reason},
            "success_rate": recent.success_rate if recent else None,
            "median_seconds": recent.median_seconds if recent else None,
            "recent_runs": recent.runs if recent else 0,
        })  # fmt: skip
    return found


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


FINISHED = (celery_states.SUCCESS, celery_states.FAILURE)  # the runs whose durations count
RUNNING = (celery_states.STARTED, "PROGRESS")  # running now: a span up to this moment


def run_figures(since: dt.datetime | None, now: dt.datetime | None = None) -> dict[str, Any]:
    """Runs, successes, failures, error rate, mean / p50 / p95 duration, throughput, peak
    concurrency and running now, of the runs created since `since` (None: all kept runs)."""
    return figures_of(since, now, by_task=False)[None]


def run_figures_by_task(
    since: dt.datetime | None, now: dt.datetime | None = None
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """`run_figures` of all tasks and of each task (by task name, "?" for none), from the
    same queries: what the API's statistics give platform-wide and per task."""
    found = figures_of(since, now, by_task=True)
    return found.pop(None), {str(name): values for name, values in found.items()}


def figures_of(
    since: dt.datetime | None, now: dt.datetime | None, *, by_task: bool
) -> dict[str | None, dict[str, Any]]:
    """Counts by the database (`(status, date_created)` / `date_created` index range). Durations
    (finished runs: SUCCESS, FAILURE) and peak concurrency (each started run from its start to
    its end, a running one's to `now`): on PostgreSQL aggregated in the database
    (`percentile_cont`, a running sum over starts and ends), exact over a window; elsewhere,
    and for all kept runs on PostgreSQL too, over the newest DASHBOARD_RUN_LIMIT started runs
    (`sampled` says when that cut any)."""
    now = now or timezone.now()
    runs = TaskResult.objects.all() if since is None else TaskResult.objects.filter(date_created__gte=since)
    counts: defaultdict[str | None, Counter[str]] = defaultdict(Counter, {None: Counter()})  # None: every task
    grouping = ("task_name", "status") if by_task else ("status",)
    names: set[str | None] = set()
    for *name, status, n in runs.values_list(*grouping).annotate(n=Count("pk")).values_list(*grouping, "n"):
        counts[None][status] += n
        if by_task:
            names.add(name[0])
            counts[name[0] or "?"][status] += n
    if connection.vendor == "postgresql":
        spread = spread_in_database(since, now, sorted(names, key=str) if by_task else None)
    else:
        spread = spread_in_python(runs, now, by_task)
    hours = (now - since).total_seconds() / 3600 if since is not None else None
    empty = Spread(None, None, None, 0, spread[None].sampled if None in spread else False)
    return {key: figures(found, spread.get(key, empty), hours) for key, found in counts.items()}


@dataclass(frozen=True)
class Spread:
    """Durations and concurrency of one task (or of all)."""

    mean: float | None
    p50: float | None
    p95: float | None
    peak: int
    sampled: bool = False


def figures(counts: Counter[str], spread: Spread, hours: float | None) -> dict[str, Any]:
    successes, failures = counts[celery_states.SUCCESS], counts[celery_states.FAILURE]
    runs = sum(counts.values())
    return {
        "runs": runs,
        "successes": successes,
        "failures": failures,
        "error_rate": failures / (successes + failures) if successes + failures else None,
        "mean_seconds": spread.mean,
        "p50_seconds": spread.p50,
        "p95_seconds": spread.p95,
        "throughput_per_hour": runs / hours if hours else None,
        "peak_concurrency": spread.peak,
        "running": sum(counts[state] for state in RUNNING),
        "sampled": spread.sampled,
    }


# One range of the date_created index, read once (MATERIALIZED); a running run ends now. A task
# is its place in %(tasks)s (0: none), so the sorts compare numbers, not text (a quarter faster at
# 7 days of a million runs); never NULL, so the set () (every task) is the row whose task is NULL.
SPREAD_SQL = """
WITH window_runs AS MATERIALIZED (
  SELECT {task} AS task, status, date_started AS started,
         GREATEST(date_started, CASE WHEN status IN ('STARTED', 'PROGRESS') THEN %(now)s ELSE date_done END) AS ended
  FROM django_celery_results_taskresult
  WHERE date_started IS NOT NULL AND date_done IS NOT NULL {since}
  {newest}
), moments AS (
  SELECT task, started AS at, 1 AS step FROM window_runs
  UNION ALL SELECT task, ended AS at, -1 AS step FROM window_runs
)
SELECT 'durations', {task_key}, avg(seconds),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds), percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds),
       NULL, NULL
FROM (SELECT task, extract(epoch FROM ended - started)::float8 AS seconds FROM window_runs
      WHERE status IN ('SUCCESS', 'FAILURE')) AS finished
GROUP BY GROUPING SETS ({task_set}())
UNION ALL
SELECT 'peak', NULL, NULL, NULL, NULL, max(running), (SELECT count(*) FROM window_runs) FROM (
  SELECT sum(step) OVER (ORDER BY at, step ROWS UNBOUNDED PRECEDING) AS running FROM moments) AS everywhere
{per_task_peaks}
"""
PER_TASK_PEAKS = """UNION ALL
SELECT 'peak', task, NULL, NULL, NULL, max(running), NULL FROM (
  SELECT task, sum(step) OVER (PARTITION BY task ORDER BY at, step ROWS UNBOUNDED PRECEDING) AS running FROM moments
) AS of_task GROUP BY task"""


def spread_in_database(
    since: dt.datetime | None, now: dt.datetime, tasks: list[str | None] | None
) -> dict[str | None, Spread]:
    """PostgreSQL: mean, p50, p95 (`percentile_cont`) and peak concurrency of all runs and, given
    the window's `tasks` (their names as stored), of each task. Every run of a window; without
    one (all kept runs: the dashboard's card, a million rows), the newest DASHBOARD_RUN_LIMIT
    started runs, as on SQLite, so that card costs what it did."""
    names = [name for name in tasks or [] if name]  # None and "" are "?", as in the counts
    task = "CASE WHEN coalesce(task_name, '') = '' THEN 0 ELSE coalesce(array_position(%(tasks)s, task_name), -1) END"
    sql = SPREAD_SQL.format(since="" if since is None else "AND date_created >= %(since)s",
                            newest="ORDER BY date_created DESC LIMIT %(limit)s" if since is None else "",
                            task=task if tasks is not None else "0",
                            task_key="task" if tasks is not None else "NULL",
                            task_set="(task), " if tasks is not None else "",
                            per_task_peaks=PER_TASK_PEAKS if tasks is not None else "")  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(sql, {"now": now, "since": since, "tasks": names, "limit": DASHBOARD_RUN_LIMIT})
        rows = cursor.fetchall()
    shown = {0: "?", -1: "(new since the counts)"} | dict(enumerate(names, 1))
    found: defaultdict[str | None, dict[str, Any]] = defaultdict(dict)
    sampled = False
    for kind, place, mean, p50, p95, peak, read in rows:
        values = found[None if place is None else shown[place]]  # None: every task
        if kind == "peak":
            values["peak"] = int(peak or 0)
            sampled = sampled or (since is None and read == DASHBOARD_RUN_LIMIT)
        elif mean is not None:  # the set of every task has a row even when no run finished
            values.update(mean=float(mean), p50=float(p50), p95=float(p95))
    return {key: Spread(v.get("mean"), v.get("p50"), v.get("p95"), v.get("peak", 0), sampled)
            for key, v in found.items()}  # fmt: skip


def spread_in_python(runs: QuerySet[TaskResult], now: dt.datetime, by_task: bool) -> dict[str | None, Spread]:
    """Elsewhere: the same figures over the window's newest DASHBOARD_RUN_LIMIT started runs."""
    started = runs.filter(date_started__isnull=False, date_done__isnull=False).order_by("-date_created")
    rows = list(started.values_list("task_name", "status", "date_started", "date_done")[:DASHBOARD_RUN_LIMIT])
    sampled = len(rows) == DASHBOARD_RUN_LIMIT
    groups: defaultdict[str | None, list[tuple[str, dt.datetime, dt.datetime]]] = defaultdict(list, {None: []})
    for name, status, start, done in rows:
        if start is None or done is None:  # never: the filter (the stubs cannot tell)
            continue
        span = (status, start, max(start, now if status in RUNNING else done))
        groups[None].append(span)
        if by_task:
            groups[name or "?"].append(span)
    return {key: spread_of(spans, sampled) for key, spans in groups.items()}


def spread_of(spans: list[tuple[str, dt.datetime, dt.datetime]], sampled: bool) -> Spread:
    durations = sorted((end - start).total_seconds() for status, start, end in spans if status in FINISHED)
    return Spread(
        mean=statistics.fmean(durations) if durations else None,
        p50=percentile(durations, 0.5),
        p95=percentile(durations, 0.95),
        peak=peak_concurrency([(start, end) for _, start, end in spans]),
        sampled=sampled,
    )


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks (as
    `insights.percentile_cont`, so the dashboard, the API and the trends page agree)."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def peak_concurrency(spans: list[tuple[dt.datetime, dt.datetime]]) -> int:
    """The most runs that were running at one moment (a run ending as another starts: not both)."""
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


def broker_unreachable() -> str | None:
    """None when Redis answers one bounded ping (broker.bound()), else what the pages say."""
    status = broker.broker_status()
    return None if status.reachable else f"Redis did not answer within {broker.bound():g} s ({status.error})"[:300]


def redis_figures() -> dict[str, Any]:
    """Workers, queues, beat and the ledger, all read through Redis: after one ping, so a
    Redis that does not answer costs the page one bounded wait (broker.bound()), not one
    per panel; `redis_error` then says what could not be read and why."""
    error = broker_unreachable()
    if error is None:
        return {"workers": workers(), "queues": broker.queue_depths(), "beat": beat_status(),
                "ledger": ledger_status(), "redis_error": None}  # fmt: skip
    return {"workers": [], "queues": dict.fromkeys(broker.known_queues(), -1),
            "beat": {"leader": None, "beats": [], "error": f"{error}: beat's state could not be read."},
            "ledger": {"error": "Redis unreachable"},  # as ledger_status() says it; the banner says more
            "redis_error": f"{error}: workers, queues, beat and the run ledger could not be read; "
                           "the figures from the database are shown."}  # fmt: skip


def broker_figures() -> dict[str, Any]:
    """Queue depths (`broker.queue_depths`) and the workers that answer (`workers`), as the
    dashboard reads them, after one bounded ping: a Redis that does not answer costs one
    wait of `broker.bound()` and gives None for both with `error` saying why."""
    error = broker_unreachable()
    if error is not None:
        return {"queues": None, "workers": None, "error": error}
    depths = broker.queue_depths()
    unread = sorted(name for name, depth in depths.items() if depth < 0)
    return {
        "queues": {name: (None if depth < 0 else depth) for name, depth in depths.items()},
        "workers": workers(),
        "error": f"the depth of {', '.join(unread)} could not be read" if unread else None,
    }


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
            "day": run_figures(now - DAY, now),
            "all": (slow or {}).get("all") or run_figures(None, now),
            "failures": recent_failures(),
            "per_hour": runs_per_hour(now),
            "per_task": median_duration_per_task(now - DAY),
            "health": last_health_check(),
        }
    return figures
