"""Prometheus metrics, read from the platform's state at scrape time.

No counter lives in the web process: gunicorn runs several workers and each would count
only what it saw, from its own start. Instead a custom collector reads the database and
Redis when scraped, so every web process answers the same figures:

- runs created in the last 24 hours by task, schedule and state (a gauge over a window:
  cleanup deletes runs, so a total would go down; more than `MAX_SCHEDULES` schedule names
  are folded into `schedule="_other"`, so 100,000 schedules do not make 100,000 series);
- durations and lateness (start minus the slot beat sent the run for) of the runs of the
  last 15 minutes, by task, as gauge histograms (a window, not a cumulative count: use
  `histogram_quantile()` on the buckets directly, without `rate()`);
- enabled schedules by health, and the late and failing ones by name (at most 200);
- the broker, queue depths, workers answering a ping, and each beat's tick, lag and lead;
- the run ledger (scheduler_app/runs/recorder.py): the state changes waiting in Redis to
  be written to TaskResult and the age of the oldest, the events set aside as dead, the
  seconds since a recorder last reported (absent when none ever did), whether the backlog
  is over LEDGER_BACKLOG_LIMIT, and `beatkeeper_ledger_recorded_total`: a counter (a
  total, not a window) of the runs the recorders wrote, kept in Redis, so it survives
  recorder restarts and goes back to 0 only when Redis loses its keys (`rate()` reads
  that as a reset);
- the dead letters: messages workers set aside instead of running (runs/poison.py);
- each concurrency pool's size, slots in use and runs waiting (runs/pools.py; at most
  `MAX_POOLS` pools).

Every query reads an index range (`date_created` or `date_done`) and at most `ROW_LIMIT`
rows. The text is cached for `CACHE_SECONDS` in Django's cache, so several Prometheus
servers (or a dashboard refreshing) cost one collection per process per period. A part
that fails (Redis down) is left out and `beatkeeper_collector_success{part}` says 0;
the rest is still served.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import redis
from django.core.cache import cache
from django.db.models import Count, Max
from django.utils import timezone
from django_celery_results.models import TaskResult
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from scheduler_app import broker
from scheduler_app.beat import leader
from scheduler_app.connection import redis_client
from scheduler_app.models import Pool, ScheduleHealth
from scheduler_app.runs import dead_letters, ledger, pools, recorder, states

logger = logging.getLogger(__name__)
COUNT_WINDOW = dt.timedelta(hours=24)
HISTOGRAM_WINDOW = dt.timedelta(minutes=15)
ROW_LIMIT = 20_000  # newest runs of the window read for each histogram (about 1 s at 50,000)
MAX_SCHEDULES = 500  # schedule label values of the run counts; the rest are "_other"
MAX_UNHEALTHY = 200  # late or failing schedules listed by name
CACHE_SECONDS = 5
CACHE_KEY = "beatkeeper:metrics:text"
WORKER_PING_TIMEOUT = 1.0
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LATENESS_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)
OTHER = "_other"

Part = Callable[[dt.datetime], list[Metric]]


# --- runs -----------------------------------------------------------------------------


def run_counts(now: dt.datetime) -> list[Metric]:
    """One grouped query over the `date_created` index range of the last day."""
    rows = (
        TaskResult.objects.filter(date_created__gte=now - COUNT_WINDOW)
        .order_by()
        .values_list("task_name", "periodic_task_name", "status")
        .annotate(n=Count("pk"))
    )
    counts: Counter[tuple[str, str, str]] = Counter()
    for task, schedule, status, n in rows:
        counts[(task or "", schedule or "", status)] += n
    family = GaugeMetricFamily(
        "beatkeeper_runs_last_24h",
        "Runs created in the last 24 hours, by task, schedule (periodic task name) and state.",
        labels=["task", "schedule", "state"],
    )
    for labels, n in sorted(fold_schedules(counts).items()):
        family.add_metric(list(labels), n)
    return [family]


def fold_schedules(counts: Counter[tuple[str, str, str]]) -> Counter[tuple[str, str, str]]:
    """Keep the `MAX_SCHEDULES` busiest schedule names; fold the others into `_other`."""
    per_schedule: Counter[str] = Counter()
    for (_, schedule, _), n in counts.items():
        per_schedule[schedule] += n
    if len(per_schedule) <= MAX_SCHEDULES:
        return counts
    kept = {name for name, _ in per_schedule.most_common(MAX_SCHEDULES)}
    folded: Counter[tuple[str, str, str]] = Counter()
    for (task, schedule, state), n in counts.items():
        folded[(task, schedule if schedule in kept else OTHER, state)] += n
    return folded


def histogram(name: str, documentation: str, buckets: Iterable[float],
              values: dict[str, list[float]]) -> GaugeHistogramMetricFamily:  # fmt: skip
    """A gauge histogram per task from the raw values (cumulative buckets, then +Inf)."""
    bounds = list(buckets)
    family = GaugeHistogramMetricFamily(name, documentation, labels=["task"])
    for task, observed in sorted(values.items()):
        ordered = sorted(observed)
        cumulative = [
            (
                floatToGoString(bound),  # type: ignore[no-untyped-call]  # prometheus_client: unannotated
                float(bisect.bisect_right(ordered, bound)),
            )
            for bound in bounds
        ]
        family.add_metric([task], [*cumulative, ("+Inf", float(len(observed)))], gsum_value=sum(observed))
    return family


def run_durations(now: dt.datetime) -> list[Metric]:
    """Runs finished in the window: the newest `ROW_LIMIT` of the `date_done` index range."""
    rows = (
        TaskResult.objects.filter(date_done__gte=now - HISTOGRAM_WINDOW, date_started__isnull=False)
        .filter(status__in=states.TERMINAL_STATES)  # date_done moves with every state write: a running run is not done
        .order_by("-date_done")
        .values_list("task_name", "date_started", "date_done")[:ROW_LIMIT]
    )
    values: defaultdict[str, list[float]] = defaultdict(list)
    for task, started, done in rows:
        if started is not None:  # always, by the filter
            values[task or ""].append(max(0.0, (done - started).total_seconds()))
    doc = f"Durations of the runs finished in the last {minutes(HISTOGRAM_WINDOW)} minutes, by task."
    return [histogram("beatkeeper_run_duration_seconds", doc, DURATION_BUCKETS, values)]


def run_lateness(now: dt.datetime) -> list[Metric]:
    """Start minus `scheduled_for` (beat's slot, in the run's meta) of the runs created in
    the window; runs without a slot (manual, API, direct) are left out."""
    rows = (
        TaskResult.objects.filter(date_created__gte=now - HISTOGRAM_WINDOW, date_started__isnull=False)
        .filter(meta__contains='"scheduled_for": "')
        .order_by("-date_created")
        .values_list("task_name", "date_started", "meta")[:ROW_LIMIT]
    )
    values: defaultdict[str, list[float]] = defaultdict(list)
    for task, started, meta in rows:
        slot = scheduled_for(meta)
        if slot is not None and started is not None:  # started: never None (date_started__isnull=False)
            values[task or ""].append(max(0.0, (started - slot).total_seconds()))
    doc = f"Start minus scheduled slot of the beat runs created in the last {minutes(HISTOGRAM_WINDOW)} minutes."
    return [histogram("beatkeeper_run_lateness_seconds", doc, LATENESS_BUCKETS, values)]


def scheduled_for(meta: str | None) -> dt.datetime | None:
    """The slot a run was sent for, from its meta JSON; None when absent or unreadable."""
    try:
        value = json.loads(meta or "{}").get("scheduled_for")
        slot = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except (ValueError, AttributeError):
        return None
    if slot is not None and slot.tzinfo is None:
        slot = slot.replace(tzinfo=dt.UTC)
    return slot


def minutes(window: dt.timedelta) -> int:
    return int(window.total_seconds() // 60)


# --- schedules ------------------------------------------------------------------------


def schedule_health(now: dt.datetime) -> list[Metric]:
    """What the last `check_schedules` pass stored: counts by state, the unhealthy ones by
    name, and when it last ran (it is the dead man's switch; this watches the switch)."""
    counts = dict(ScheduleHealth.objects.order_by().values_list("state").annotate(n=Count("pk")))
    by_state = GaugeMetricFamily(
        "beatkeeper_schedules", "Enabled schedules by health, as last checked.", labels=["health"]
    )
    for state in ScheduleHealth.STATES:
        by_state.add_metric([state], counts.get(state, 0))
    unhealthy = GaugeMetricFamily(
        "beatkeeper_schedule_unhealthy",
        f"1 for each late or failing schedule, by name (at most {MAX_UNHEALTHY}).",
        labels=["schedule", "health"],
    )
    failures = GaugeMetricFamily("beatkeeper_schedule_failures", "Failed runs in a row.", labels=["schedule"])
    rows = (
        ScheduleHealth.objects.exclude(state=ScheduleHealth.OK)
        .order_by("periodic_task__name")
        .values_list("periodic_task__name", "state", "failures")[:MAX_UNHEALTHY]
    )
    for name, state, failed in rows:
        unhealthy.add_metric([name, state], 1)
        failures.add_metric([name], failed)
    last = ScheduleHealth.objects.aggregate(at=Max("checked_at"))["at"]
    checked = GaugeMetricFamily(
        "beatkeeper_schedule_check_timestamp_seconds", "When schedule health was last checked (Unix time)."
    )
    if last is not None:
        checked.add_metric([], last.timestamp())
    return [by_state, unhealthy, failures, checked]


# --- broker, workers, beat --------------------------------------------------------------


def broker_state(now: dt.datetime) -> list[Metric]:
    """Queue depths and workers, only when the broker answers (kombu would retry for seconds)."""
    status = broker.broker_status()
    up = GaugeMetricFamily("beatkeeper_broker_up", "1 when the broker (Redis) answers a ping.")
    up.add_metric([], 1 if status.reachable else 0)
    if not status.reachable:
        return [up]
    depths = GaugeMetricFamily("beatkeeper_queue_depth", "Messages waiting per queue.", labels=["queue"])
    for queue, depth in broker.queue_depths().items():
        if depth >= 0:
            depths.add_metric([queue], depth)
    workers = GaugeMetricFamily(
        "beatkeeper_workers_online", f"Workers that answered a ping within {WORKER_PING_TIMEOUT:g}s."
    )
    workers.add_metric([], len(broker.workers_online(timeout=WORKER_PING_TIMEOUT)))
    return [up, depths, workers]


@contextmanager
def probe_client() -> Iterator[redis.Redis]:
    """A client of its own for one part of a scrape, waiting like a web request (a scrape's
    collectors run in a thread of their own, where the request's bound is not set)."""
    client = redis_client(broker.bound())
    try:
        yield client
    finally:
        client.close()


def beat_state(now: dt.datetime) -> list[Metric]:
    """Each beat's last tick (as `leader.heartbeat()` reads it) and who leads."""
    with probe_client() as client:
        facts = leader.heartbeat(client)
    since = GaugeMetricFamily(
        "beatkeeper_beat_seconds_since_tick", "Seconds since each beat last ticked.", labels=["node"]
    )
    lag = GaugeMetricFamily(
        "beatkeeper_beat_lag_seconds", "How late the beat's last dispatched runs were.", labels=["node"]
    )
    leads = GaugeMetricFamily("beatkeeper_beat_leader", "1 for the beat holding the leader lease.", labels=["node"])
    sent = CounterMetricFamily("beatkeeper_beat_sent", "Runs each beat sent since it started.", labels=["node"])
    for beat in facts["beats"]:
        node = str(beat["node"])
        since.add_metric([node], beat["age"])
        lag.add_metric([node], float(beat.get("lag") or 0))
        leads.add_metric([node], 1 if node == facts["leader"] else 0)
        sent.add_metric([node], float(beat.get("sent") or 0))
    has_leader = GaugeMetricFamily("beatkeeper_beat_has_leader", "1 when a beat holds the leader lease.")
    has_leader.add_metric([], 0 if facts["leader"] is None else 1)
    return [since, lag, leads, sent, has_leader]


def ledger_state(now: dt.datetime) -> list[Metric]:
    """The recorder's backlog, read in one Redis round trip (`recorder.backlog`)."""
    with probe_client() as client:
        found = recorder.backlog(client)
    events = GaugeMetricFamily(
        "beatkeeper_ledger_backlog_events", "Run state changes in Redis not yet written to TaskResult."
    )
    events.add_metric([], found.events)
    lag = GaugeMetricFamily(
        "beatkeeper_ledger_lag_seconds", "Age of the oldest run state change not yet written (0 when none)."
    )
    lag.add_metric([], found.lag_seconds)
    dead = GaugeMetricFamily(
        "beatkeeper_ledger_dead_events", f"Run state changes set aside in {ledger.DEAD} (refused or unreadable)."
    )
    dead.add_metric([], found.dead)
    age = GaugeMetricFamily(
        "beatkeeper_ledger_recorder_last_report_age_seconds",
        "Seconds since the recorder last reported: it does every batch, and about every 0.25 s when idle.",
    )
    if found.recorder_age is not None:
        age.add_metric([], found.recorder_age)
    over = GaugeMetricFamily(
        "beatkeeper_ledger_backlog_over_limit", "1 when the backlog holds more than LEDGER_BACKLOG_LIMIT changes."
    )
    over.add_metric([], 1 if found.over_limit else 0)
    recorded = CounterMetricFamily("beatkeeper_ledger_recorded", "Runs the recorders wrote to TaskResult.")
    recorded.add_metric([], found.recorded)
    return [events, lag, dead, age, over, recorded]


def dead_letter_state(now: dt.datetime) -> list[Metric]:
    """Messages workers set aside instead of running (scheduler_app/runs/poison.py)."""
    with probe_client() as client:
        count = dead_letters.count(client)
    family = GaugeMetricFamily(
        "beatkeeper_dead_letters", "Messages workers set aside in the dead letters (retry or discard them)."
    )
    family.add_metric([], count)
    return [family]


MAX_POOLS = 500


def pool_state(now: dt.datetime) -> list[Metric]:
    """Each pool's size, the slots held now (leases not ended) and the runs waiting in line."""
    size = GaugeMetricFamily("beatkeeper_pool_size", "Runs a concurrency pool allows at once.", labels=["pool"])
    in_use = GaugeMetricFamily("beatkeeper_pool_slots_in_use", "Slots of the pool held by runs now.", labels=["pool"])
    waiting = GaugeMetricFamily("beatkeeper_pool_waiting", "Runs waiting in line for a slot.", labels=["pool"])
    with probe_client() as client:
        for name, limit in Pool.objects.order_by("name").values_list("name", "size")[:MAX_POOLS]:
            found = pools.occupancy(name, client)
            size.add_metric([name], limit)
            in_use.add_metric([name], len(found.holders))
            waiting.add_metric([name], len(found.waiting))
    return [size, in_use, waiting]


# --- the collector ----------------------------------------------------------------------

DATABASE_PARTS: dict[str, Part] = {
    "runs": run_counts,
    "durations": run_durations,
    "lateness": run_lateness,
    "schedules": schedule_health,
    "pools": pool_state,  # the pools' rows, then their slots in Redis (a bounded probe)
}
REDIS_PARTS: dict[str, Part] = {
    "broker": broker_state,
    "beat": beat_state,
    "ledger": ledger_state,
    "dead_letters": dead_letter_state,
}


def collect_parts(parts: dict[str, Part], now: dt.datetime) -> tuple[list[Metric], dict[str, tuple[bool, float]]]:
    """Each part on its own: a failing one is reported in the outcomes and left out."""
    families: list[Metric] = []
    outcomes: dict[str, tuple[bool, float]] = {}
    for name, part in parts.items():
        started = time.monotonic()
        try:
            families += part(now)
            ok = True
        except Exception as exc:  # noqa: BLE001  (one part down must not blank the whole scrape)
            logger.warning("metrics: the %s part failed: %s: %s", name, type(exc).__name__, exc)
            ok = False
        outcomes[name] = (ok, time.monotonic() - started)
    return families, outcomes


def collect_redis_parts(now: dt.datetime) -> tuple[list[Metric], dict[str, tuple[bool, float]]]:
    """The broker first: when it does not answer, beat and the ledger are reported not
    collected at once, so a hung Redis costs a scrape one bounded wait, not three."""
    families, outcomes = collect_parts({"broker": broker_state}, now)
    if any(family.name == "beatkeeper_broker_up" and family.samples[0].value == 1 for family in families):
        more, more_outcomes = collect_parts({k: v for k, v in REDIS_PARTS.items() if k != "broker"}, now)
        return families + more, {**outcomes, **more_outcomes}
    return families, {**outcomes, **{name: (False, 0.0) for name in REDIS_PARTS if name != "broker"}}


class BeatkeeperCollector(Collector):
    def describe(self) -> list[Metric]:
        return []  # nothing to collect at registration

    def collect(self) -> Iterator[Metric]:
        """Redis parts in a thread beside the database parts: the worker ping takes a second."""
        now = timezone.now()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-redis") as pool:
            redis_side = pool.submit(collect_redis_parts, now)
            families, outcomes = collect_parts(DATABASE_PARTS, now)
            more, more_outcomes = redis_side.result()
        yield from families + more
        yield from outcome_families({**outcomes, **more_outcomes})


def outcome_families(outcomes: dict[str, tuple[bool, float]]) -> list[Metric]:
    success = GaugeMetricFamily(
        "beatkeeper_collector_success", "1 when this part of the metrics was collected.", labels=["part"]
    )
    seconds = GaugeMetricFamily(
        "beatkeeper_collector_duration_seconds", "Seconds spent collecting this part.", labels=["part"]
    )
    for part, (ok, took) in sorted(outcomes.items()):
        success.add_metric([part], 1 if ok else 0)
        seconds.add_metric([part], took)
    return [success, seconds]


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(BeatkeeperCollector())


def exposition() -> bytes:
    """The metrics text, shared for `CACHE_SECONDS` through Django's cache."""
    text: Any = cache.get(CACHE_KEY)
    if text is None:
        text = generate_latest(REGISTRY)
        cache.set(CACHE_KEY, text, CACHE_SECONDS)
    return bytes(text)
