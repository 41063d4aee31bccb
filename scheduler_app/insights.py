"""Reads behind the console's failures and trends pages and the long-running flag: failed
runs grouped by task and exception type, each task's throughput, error rate and p50/p95
duration, and how long a task's runs usually take.

Every read is bounded by an indexed time window (`date_created`, or `(status,
date_created)` / `(task_name, date_created)`, migration 0004) and most by a LIMIT, so none
grows with the run history. Percentiles: on PostgreSQL `percentile_cont` in the database;
elsewhere (SQLite) the same linear interpolation in Python over the newest `SAMPLE`
durations of the window, and the figures say when that sample was cut (`sampled`).
Counts are exact on both.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from celery import states as celery_states
from django.core.cache import cache
from django.db import connection
from django.db.models import CharField, Count, Func, Max, Min, Q, QuerySet
from django.db.models.functions import TruncHour
from django_celery_results.models import TaskResult

from scheduler_app.models import SchedulePolicy
from scheduler_app.runs import history
from scheduler_app.runs.policy import task_policy

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models.sql.compiler import SQLCompiler

RunT = TypeVar("RunT", bound=TaskResult)
WINDOWS = {"24h": dt.timedelta(hours=24), "7d": dt.timedelta(days=7)}
BUCKETS = {"24h": dt.timedelta(hours=1), "7d": dt.timedelta(hours=6)}  # a chart's step per window
GROUPS = 100  # failure groups shown
BULK_LIMIT = 100  # runs of a group retried or dismissed at once
SAMPLE = 50_000  # durations read for percentiles where the database has no percentile_cont
LONG_FACTOR = 2.0  # a running run is long when it has run longer than its task's p95 × this
NEAR_LIMIT = 0.9  # ... or has used this share of its time limit
P95_SECONDS = 600  # how long a task's p95 is kept (cache)
P95_SAMPLE = 10_000
UNKNOWN = "(no exception type)"
DISMISSED = '"dismissed_at"'  # in meta: a failure an operator dismissed (services.dismiss_failures)
FINISHED = (celery_states.SUCCESS, celery_states.FAILURE)


def window_start(now: dt.datetime, window: str) -> dt.datetime:
    return now - WINDOWS[window]


def percentile_cont(ordered: Sequence[float], fraction: float) -> float | None:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- Failures grouped -------------------------------------------------------------------


class ExcTypeOf(Func):
    """The `exc_type` of a run's stored result (django-celery-results keeps the exception as
    JSON: exc_type, exc_message, exc_module); NULL when there is none. A regular expression
    on PostgreSQL (no JSON cast: a result that is not JSON must not fail the page)."""

    output_field = CharField()

    def as_postgresql(self, compiler: SQLCompiler, conn: BaseDatabaseWrapper, **extra: Any) -> Any:
        return self.as_sql(compiler, conn, template='substring(%(expressions)s from \'"exc_type": "([^"]*)"\')')

    def as_sqlite(self, compiler: SQLCompiler, conn: BaseDatabaseWrapper,  # type: ignore[override]  # stub: a mixin's
                  **extra: Any) -> Any:  # fmt: skip
        template = "CASE WHEN json_valid(%(expressions)s) THEN json_extract(%(expressions)s, '$.exc_type') END"
        return self.as_sql(compiler, conn, template=template)


@dataclass(frozen=True)
class FailureGroup:
    task_name: str | None
    exc_type: str | None
    count: int
    first_seen: dt.datetime
    last_seen: dt.datetime
    sample_pk: int
    sample_task_id: str = ""
    message: str = ""
    traceback: str = ""

    @property
    def exc_shown(self) -> str:
        return self.exc_type or UNKNOWN


def failed_runs(since: dt.datetime) -> QuerySet[TaskResult]:
    """The window's failures an operator has not dismissed: the `(status, date_created)` range."""
    runs = TaskResult.objects.filter(status=celery_states.FAILURE, date_created__gte=since)
    return runs.exclude(meta__contains=DISMISSED)


def failure_groups(since: dt.datetime, limit: int = GROUPS) -> list[FailureGroup]:
    """The window's failures by task and exception type, most frequent first, each with the
    message and traceback of its latest recorded run (the highest id: one more query)."""
    rows = list(
        failed_runs(since)
        .annotate(exc_type=ExcTypeOf("result"))
        .values("task_name", "exc_type")
        .annotate(count=Count("pk"), first_seen=Min("date_created"), last_seen=Max("date_created"), sample=Max("pk"))
        .order_by("-count", "-last_seen")[:limit]
    )
    samples = {
        pk: (task_id, result, traceback)
        for pk, task_id, result, traceback in TaskResult.objects.filter(
            pk__in=[row["sample"] for row in rows]
        ).values_list("pk", "task_id", "result", "traceback")
    }
    groups = []
    for row in rows:
        task_id, result, traceback = samples.get(row["sample"], ("", None, None))
        groups.append(FailureGroup(row["task_name"], row["exc_type"], row["count"], row["first_seen"],
                                   row["last_seen"], row["sample"], task_id, message_of(result),
                                   traceback or ""))  # fmt: skip
    return groups


def group_runs(since: dt.datetime, task_name: str | None, exc_type: str | None,
               limit: int = BULK_LIMIT) -> list[TaskResult]:  # fmt: skip
    """The newest `limit` undismissed failures of one group."""
    runs = failed_runs(since).annotate(exc_type=ExcTypeOf("result"))
    # None stands for "none recorded": NULL or "" (the page's links carry both as "")
    none_task, none_type = Q(task_name__isnull=True) | Q(task_name=""), Q(exc_type__isnull=True) | Q(exc_type="")
    runs = runs.filter(task_name=task_name) if task_name is not None else runs.filter(none_task)
    runs = runs.filter(exc_type=exc_type) if exc_type is not None else runs.filter(none_type)
    return list(runs.order_by("-date_created")[:limit])


def message_of(result: str | None) -> str:
    try:
        stored = json.loads(result or "null")
    except ValueError:
        return ""
    if not isinstance(stored, dict):
        return ""
    message = stored.get("exc_message") or []
    return " ".join(map(str, message)) if isinstance(message, list | tuple) else str(message)


# --- Trends -----------------------------------------------------------------------------


@dataclass
class Figures:
    """Runs, failures, error rate and p50/p95 duration of one task (or one bucket)."""

    runs: int = 0
    successes: int = 0
    failures: int = 0
    p50: float | None = None
    p95: float | None = None

    @property
    def error_rate(self) -> float | None:
        finished = self.successes + self.failures
        return self.failures / finished if finished else None


@dataclass
class Trends:
    window: str
    start: dt.datetime
    end: dt.datetime
    step: dt.timedelta
    task: str | None  # the series' task (None: all tasks)
    per_task: dict[str, Figures] = field(default_factory=dict)
    buckets: list[dt.datetime] = field(default_factory=list)
    series: list[Figures] = field(default_factory=list)
    by_task: dict[str, list[Figures]] = field(default_factory=dict)  # each task's series
    sampled: bool = False  # percentiles from the newest SAMPLE durations only (not PostgreSQL)

    def of(self, task: str | None) -> Trends:
        """The same figures with the series of `task` (one of per_task) or of all tasks."""
        if task is None:
            return replace(self, task=None)
        return replace(self, task=task, series=self.by_task.get(task) or [Figures() for _ in self.buckets])

    def per_hour(self, figures: Figures, hours: float | None = None) -> float:
        return figures.runs / (hours or (self.end - self.start).total_seconds() / 3600)

    def chart_data(self) -> dict[str, Any]:
        """What the charts draw (passed to the page with json_script)."""
        hours = self.step.total_seconds() / 3600
        return {
            "labels": [bucket.isoformat() for bucket in self.buckets],
            "step_hours": hours,
            "per_hour": [round(self.per_hour(f, hours), 3) for f in self.series],
            "error_rate": [None if f.error_rate is None else round(100 * f.error_rate, 2) for f in self.series],
            "p50": [None if f.p50 is None else round(f.p50, 3) for f in self.series],
            "p95": [None if f.p95 is None else round(f.p95, 3) for f in self.series],
        }


def trends(now: dt.datetime, window: str, task: str | None = None) -> Trends:
    """Per task over the window, all tasks' series by bucket and each task's (`by_task`);
    the chosen task's series (`Trends.of`) is derived from those, with no other query."""
    step = BUCKETS[window]
    end = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    start = end - WINDOWS[window]
    found = Trends(window, start, end, step, None)
    found.buckets = [start + step * i for i in range(int(WINDOWS[window] / step))]
    runs = TaskResult.objects.filter(date_created__gte=start, date_created__lt=end)
    count_runs(found, runs)
    if connection.vendor == "postgresql":
        percentiles_in_database(found)
    else:
        percentiles_in_python(found, runs)
    return found.of(task)


def bucket_of(found: Trends, moment: dt.datetime) -> int:
    return int((moment - found.start) / found.step)


def count_runs(found: Trends, runs: QuerySet[TaskResult]) -> None:
    """Exact counts by task, hour and state (counted by the database), summed into buckets."""
    found.series = [Figures() for _ in found.buckets]
    rows = (
        runs.annotate(hour=TruncHour("date_created", tzinfo=dt.UTC))
        .values("task_name", "hour", "status")
        .annotate(n=Count("pk"))
        .values_list("task_name", "hour", "status", "n")
    )
    for name, hour, status, n in rows:
        targets = [found.per_task.setdefault(name or "?", Figures())]
        index = bucket_of(found, hour)
        if 0 <= index < len(found.series):
            targets += [found.series[index], series_of(found, name or "?")[index]]
        for figures in targets:
            add(figures, status, n)


def series_of(found: Trends, name: str) -> list[Figures]:
    return found.by_task.setdefault(name, [Figures() for _ in found.buckets])


def add(figures: Figures, status: str, n: int) -> None:
    figures.runs += n
    figures.successes += n if status == celery_states.SUCCESS else 0
    figures.failures += n if status == celery_states.FAILURE else 0


PERCENTILES_SQL = """
SELECT {key}, percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM date_done - date_started)),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM date_done - date_started))
FROM django_celery_results_taskresult
WHERE date_created >= %(start)s AND date_created < %(end)s AND status IN ('SUCCESS', 'FAILURE')
  AND date_started IS NOT NULL AND date_done IS NOT NULL
GROUP BY {group}
"""


def percentiles_in_database(found: Trends) -> None:
    """PostgreSQL: p50/p95 per task, per bucket (`date_bin`) of all tasks and of each task."""
    params: dict[str, Any] = {"start": found.start, "end": found.end, "step": found.step}
    for name, p50, p95 in query(PERCENTILES_SQL.format(key="task_name", group="1"), params):
        figures = found.per_task.setdefault(name or "?", Figures())
        figures.p50, figures.p95 = float(p50), float(p95)
    key = "date_bin(%(step)s, date_created, %(start)s)"
    for bucket, p50, p95 in query(PERCENTILES_SQL.format(key=key, group="1"), params):
        index = bucket_of(found, bucket)
        if 0 <= index < len(found.series):
            found.series[index].p50, found.series[index].p95 = float(p50), float(p95)
    for name, bucket, p50, p95 in query(PERCENTILES_SQL.format(key=f"task_name, {key}", group="1, 2"), params):
        index = bucket_of(found, bucket)
        if 0 <= index < len(found.series):
            figures = series_of(found, name or "?")[index]
            figures.p50, figures.p95 = float(p50), float(p95)


def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def percentiles_in_python(found: Trends, runs: QuerySet[TaskResult]) -> None:
    """Elsewhere: the same interpolation over the window's newest SAMPLE finished runs."""
    finished = runs.filter(status__in=FINISHED, date_started__isnull=False, date_done__isnull=False)
    newest = finished.order_by("-date_created").values_list("task_name", "date_created", "date_started", "date_done")
    rows = [(name, created, started, done) for name, created, started, done in newest[:SAMPLE] if started and done]
    found.sampled = len(rows) == SAMPLE
    by_task: defaultdict[str, list[float]] = defaultdict(list)
    by_bucket: defaultdict[int, list[float]] = defaultdict(list)
    by_task_bucket: defaultdict[tuple[str, int], list[float]] = defaultdict(list)
    for name, created, started, done in rows:
        seconds = (done - started).total_seconds()  # both set: the filter, and the check above
        by_task[name or "?"].append(seconds)
        by_bucket[bucket_of(found, created)].append(seconds)
        by_task_bucket[name or "?", bucket_of(found, created)].append(seconds)
    for name, values in by_task.items():
        set_percentiles(found.per_task.setdefault(name, Figures()), values)
    for index, values in by_bucket.items():
        if 0 <= index < len(found.series):
            set_percentiles(found.series[index], values)
    for (name, index), values in by_task_bucket.items():
        if 0 <= index < len(found.series):
            set_percentiles(series_of(found, name)[index], values)


def set_percentiles(figures: Figures, values: list[float]) -> None:
    ordered = sorted(values)
    figures.p50, figures.p95 = percentile_cont(ordered, 0.5), percentile_cont(ordered, 0.95)


# --- Runs running longer than usual -----------------------------------------------------


RUNNING = frozenset(history.RUNNING)


def usual_p95(task_name: str, now: dt.datetime) -> float | None:
    """The p95 duration of the task's successful runs of the last 7 days (cached for
    P95_SECONDS): the `(task_name, date_created)` index range, at most P95_SAMPLE runs."""
    key = "beatkeeper:p95:" + hashlib.sha256(task_name.encode()).hexdigest()[:32]
    cached = cache.get(key)
    if cached is not None:
        return None if cached == "none" else float(cached)
    value = _p95(task_name, now - WINDOWS["7d"])
    cache.set(key, "none" if value is None else value, P95_SECONDS)
    return value


P95_SQL = """
SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds) FROM (
  SELECT extract(epoch FROM date_done - date_started) AS seconds FROM django_celery_results_taskresult
  WHERE task_name = %(task)s AND date_created >= %(since)s AND status = 'SUCCESS'
    AND date_started IS NOT NULL AND date_done IS NOT NULL
  ORDER BY date_created DESC LIMIT %(limit)s) AS recent
"""


def _p95(task_name: str, since: dt.datetime) -> float | None:
    if connection.vendor == "postgresql":
        value = query(P95_SQL, {"task": task_name, "since": since, "limit": P95_SAMPLE})[0][0]
        return None if value is None else float(value)
    runs = TaskResult.objects.filter(task_name=task_name, date_created__gte=since, status=celery_states.SUCCESS)
    spans = runs.filter(date_started__isnull=False, date_done__isnull=False).order_by("-date_created")
    values = sorted((done - started).total_seconds() for started, done in
                    spans.values_list("date_started", "date_done")[:P95_SAMPLE] if started and done)  # fmt: skip
    return percentile_cont(values, 0.95)


def time_limits(runs: Iterable[TaskResult]) -> dict[str, int | None]:
    """Each running run's hard time limit: its schedule's policy over its task's (one query)."""
    running = [run for run in runs if run.status in RUNNING and run.task_name]
    names = {run.periodic_task_name for run in running if run.periodic_task_name}
    policies = {p.periodic_task.name: p for p in SchedulePolicy.objects.filter(periodic_task__name__in=names)
                .select_related("periodic_task")}  # fmt: skip
    limits = {}
    for run in running:
        policy = policies.get(run.periodic_task_name or "")
        try:
            limits[run.task_id] = (
                task_policy(run.task_name or "").with_overrides(policy.overrides() if policy else None).time_limit
            )
        except ValueError:
            limits[run.task_id] = None
    return limits


def running_long(runs: Iterable[TaskResult], now: dt.datetime) -> dict[str, str]:
    """For each running run that has run longer than usual (over its task's p95 × LONG_FACTOR)
    or is within 10 % of its time limit: why, in words. Keyed by run id."""
    runs = [run for run in runs if run.status in RUNNING and run.date_started is not None]
    limits = time_limits(runs)
    flagged = {}
    for run in runs:
        elapsed = (now - run.date_started).total_seconds()  # type: ignore[operator]  # filtered above
        reason = long_reason(elapsed, usual_p95(run.task_name or "", now), limits.get(run.task_id))
        if reason:
            flagged[run.task_id] = reason
    return flagged


def long_reason(elapsed: float, p95: float | None, limit: int | None) -> str:
    if limit and elapsed >= NEAR_LIMIT * limit:
        return f"running {words(elapsed)}, within 10 % of its {words(limit)} time limit"
    if p95 is not None and elapsed > LONG_FACTOR * p95:
        return f"running {words(elapsed)}, over {LONG_FACTOR:g} × its task's p95 ({words(p95)}, last 7 days)"
    return ""


def words(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --- Runs searched by their arguments ---------------------------------------------------


ARGUMENTS_WINDOW = dt.timedelta(hours=24)  # how far back the arguments are searched by default
ARGUMENTS_WINDOW_MAX = dt.timedelta(days=7)  # ... and at most (the list's date filter widens it)
ID_CHARACTERS = frozenset("0123456789abcdef-")
ID_PREFIX_MIN = 8  # a run id is looked up by its first 8 characters or more: "42" or "cafe" is an argument


def search_runs(runs: QuerySet[RunT], term: str, since: dt.datetime) -> QuerySet[RunT]:
    """Runs whose id is or starts with `term` (the unique index; 8 characters or more), if
    there are any; else the runs created since `since` whose recorded arguments contain it,
    in any case. The date index bounds the scan the text match needs (an OR of the two would
    scan the table). A shorter term is always an argument: at a million runs, "42" starts
    some run's id."""
    if len(term) >= ID_PREFIX_MIN and set(term.lower()) <= ID_CHARACTERS:
        by_id = runs.filter(task_id=term) if len(term) >= 36 else runs.filter(task_id__startswith=term)
        if by_id.exists():
            return by_id
    in_arguments = Q(task_args__icontains=term) | Q(task_kwargs__icontains=term)
    return runs.filter(in_arguments, date_created__gte=since)


def arguments_since(now: dt.datetime, chosen: dt.timedelta | None) -> dt.datetime:
    """The search's window: the list's date filter if one is chosen, at most 7 days; else 24 hours."""
    return now - min(chosen or ARGUMENTS_WINDOW, ARGUMENTS_WINDOW_MAX)
