"""The run-history changelist at 1,000,000 runs: our admin (/admin/scheduler_app/run/) against
the stock django-celery-results TaskResultAdmin on the same rows, side by side, on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/9 \\
        python -m bench.runs_admin [--rows 1000000] [--rounds 20] [--reseed] [--ours run|stock]

Works in a database of its own (<name>_beatkeeper_bench). The rows (TaskResult, loaded with
one INSERT ... SELECT, then VACUUM ANALYZE) are kept for the next run when their count
matches and they are less than a day old (the "last 24 h" question needs fresh dates);
--reseed forces a load:
- 2,000 schedules (periodic_task_name), run counts skewed (the busiest runs every 2 minutes,
  the quietest every 3 hours); each schedule runs one of 30 tasks; API runs (1%) have none;
- status ~92% SUCCESS, 4% FAILURE, 1% each RETRY, STARTED, SKIPPED, REVOKED; a traceback
  on failures only; a small JSON result;
- dates over the last 30 days, inserted in time order as a live table grows; durations
  0.05-30 s (most short); workers celery@host-1..16;
- meta as Celery writes it (json.dumps of the run context), trigger ~96% beat, 2% manual,
  1% api, 1% retry.

Both admins are requested in-process with Django's test Client as a logged-in superuser
(DEBUG off), through bench/admin_urls.py: the project's URLs plus the stock admin on an
AdminSite of its own at /stock-admin/. Each round requests every question from both sides,
ours first in even rounds and stock first in odd ones, so drift cancels; p50/p95 per URL.
Then one request per URL under CaptureQueriesContext gives the number of SQL queries and
the slowest, and queries slower than --explain-ms are shown with EXPLAIN ANALYZE.

`--ours stock` points "ours" at the stock admin too (an A/A run: ratios near 1 show the
harness is fair); `--ours-base` moves ours to another changelist path.
Absolute times drift on a shared machine: read the ours/stock ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from bench.common import setup_django

SEED_VERSION = 3
MARKER_TABLE = "bench_runs_admin_seed"  # one row: what the benchmark loaded, so a re-run can keep it
MAX_SEED_AGE = dt.timedelta(days=1)
STOCK_BASE = "/stock-admin/django_celery_results/taskresult/"
OURS_BASE = "/admin/scheduler_app/run/"
TARGET_P95_MS = 300.0

SCHEDULE_PREFIXES = (
    "sync-orders", "send-digest", "refresh-cache", "import-feed", "export-report", "rebuild-index",
    "check-inventory", "notify-users", "archive-logs", "compute-stats", "poll-payments", "renew-tokens",
    "purge-sessions", "warm-search", "reconcile-ledger", "fetch-rates", "crawl-sitemap", "resize-images",
    "score-leads", "backup-db",
)  # fmt: skip
TASK_NAMES = (
    "billing.tasks.charge_due_invoices", "billing.tasks.reconcile_ledger", "billing.tasks.fetch_exchange_rates",
    "billing.tasks.poll_payment_provider", "catalog.tasks.import_supplier_feed", "catalog.tasks.rebuild_search_index",
    "catalog.tasks.resize_product_images", "catalog.tasks.check_inventory", "catalog.tasks.warm_search_cache",
    "crm.tasks.score_leads", "crm.tasks.sync_contacts", "crm.tasks.send_followups",
    "mail.tasks.send_daily_digest", "mail.tasks.send_weekly_digest", "mail.tasks.process_bounces",
    "notify.tasks.push_notifications", "notify.tasks.sms_reminders", "orders.tasks.sync_orders",
    "orders.tasks.expire_carts", "orders.tasks.export_report", "reports.tasks.compute_statistics",
    "reports.tasks.export_csv", "seo.tasks.crawl_sitemap", "seo.tasks.ping_search_engines",
    "ops.tasks.archive_logs", "ops.tasks.backup_database", "ops.tasks.purge_sessions",
    "ops.tasks.renew_tokens", "ops.tasks.refresh_cache", "maintenance.cleanup_old_runs",
)  # fmt: skip

SEED_SQL = """
TRUNCATE django_celery_results_taskresult;
WITH draws AS MATERIALIZED (
  SELECT floor(2000 * power(random(), 2))::int AS s, random() AS r_status, random() AS r_trigger,
         date_trunc('second', now() - random() * interval '30 days') AS slot, random() AS r_wait,
         0.05 + 29.95 * power(random(), 4) AS duration, 1 + floor(random() * 16)::int AS host,
         floor(random() * 30)::int AS t, gen_random_uuid()::text AS task_id
  FROM generate_series(1, %(rows)s)
), runs AS MATERIALIZED (
  SELECT *,
         CASE WHEN r_status < 0.92 THEN 'SUCCESS' WHEN r_status < 0.96 THEN 'FAILURE'
              WHEN r_status < 0.97 THEN 'RETRY' WHEN r_status < 0.98 THEN 'STARTED'
              WHEN r_status < 0.99 THEN 'SKIPPED' ELSE 'REVOKED' END AS status,
         CASE WHEN r_trigger < 0.96 THEN 'beat' WHEN r_trigger < 0.98 THEN 'manual'
              WHEN r_trigger < 0.99 THEN 'api' ELSE 'retry' END AS trigger,
         slot + (5 + 45 * r_wait) * interval '1 millisecond' AS queued,
         slot + (15 + 1000 * r_wait) * interval '1 millisecond' AS started,
         'celery@host-' || host AS worker
  FROM draws
), named AS MATERIALIZED (
  SELECT *,
         CASE WHEN trigger <> 'api'
              THEN (%(prefixes)s::text[])[1 + s %% 20] || '-' || lpad(s::text, 4, '0') END AS schedule,
         (%(tasks)s::text[])[1 + CASE WHEN trigger = 'api' THEN t ELSE (s * 7) %% 30 END] AS task,
         CASE WHEN trigger IN ('beat', 'retry') THEN slot END AS scheduled_for,
         CASE WHEN status = 'STARTED' THEN started
              ELSE started + duration * interval '1 second' END AS done
  FROM runs
)
INSERT INTO django_celery_results_taskresult
  (task_id, status, content_type, content_encoding, result, date_done, date_created, date_started,
   traceback, meta, task_args, task_kwargs, task_name, worker, periodic_task_name)
SELECT task_id, status, 'application/json', 'utf-8',
       CASE status
         WHEN 'SUCCESS' THEN '{"processed": ' || (s * 13 + host) %% 500 || '}'
         WHEN 'FAILURE' THEN '{"exc_type": "ConnectionError", "exc_message": ["upstream timed out"], '
                             '"exc_module": "builtins"}'
         WHEN 'RETRY' THEN '{"exc_type": "Retry", "exc_message": ["Retry in 60s"], '
                           '"exc_module": "celery.exceptions"}'
         WHEN 'STARTED' THEN '{"pid": ' || (1000 + s) || ', "hostname": "' || worker || '"}'
         WHEN 'SKIPPED' THEN '{"reason": "the previous run still holds the lock"}'
         ELSE '{"exc_type": "TaskRevokedError", "exc_message": ["revoked"], "exc_module": "celery.exceptions"}'
       END,
       done, started, started,
       CASE WHEN status = 'FAILURE' THEN replace(%(traceback)s, '{module}', replace(task, '.', '/')) END,
       '{"trigger": "' || trigger || '", "schedule": ' || coalesce(to_json(schedule)::text, 'null')
         || ', "scheduled_for": '
         || coalesce('"' || to_char(scheduled_for AT TIME ZONE 'UTC', %(iso_seconds)s) || '"', 'null')
         || ', "queued_at": "' || to_char(queued AT TIME ZONE 'UTC', %(iso)s) || '", "attempt": 1, "attempts": []'
         || CASE WHEN trigger = 'retry' THEN ', "retry_of": "' || gen_random_uuid() || '"' ELSE '' END
         || ', "children": []}',
       '[]', '{}', task, worker, schedule
FROM named
ORDER BY started;
"""
TRACEBACK = """Traceback (most recent call last):
  File "/app/{module}.py", line 42, in run
    response = client.fetch(url, timeout=30)
  File "/app/lib/http.py", line 118, in fetch
    raise ConnectionError("upstream timed out")
ConnectionError: upstream timed out
"""
ISO_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'  # datetime.isoformat() of an aware UTC time
ISO_SECONDS = 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"'  # the same for a whole second (a beat slot)


@dataclass(frozen=True)
class Question:
    """One changelist question, as each admin spells it (None: that admin cannot ask it)."""

    label: str
    ours: dict[str, str] | None
    stock: dict[str, str] | None


Key = tuple[str, str]  # (question label, "ours" or "stock")

QUESTIONS = (
    Question("default page", {}, {}),
    Question("failures", {"state": "FAILURE"}, {"status__exact": "FAILURE"}),
    Question("one schedule", {"schedule": "{schedule}"}, {"periodic_task_name": "{schedule}"}),
    Question("one task", {"task": "{task}"}, {"task_name": "{task}"}),
    Question("page 51", {"p": "50"}, {"p": "50"}),
    Question("last 24 h", {"since": "24h"}, {"date_done__gte": "{since}"}),
    Question("manual runs", {"trigger": "manual"}, None),
    Question("search args", {"q": "invoice-42"}, {"q": "invoice-42"}),  # no run has it: the whole window is read
)


@dataclass
class Figures:
    """What one URL gave: request times, then one captured request's queries."""

    url: str
    times: list[float]
    queries: list[dict[str, str]]

    def p(self, share: float) -> float:
        """Nearest-rank percentile, in ms."""
        ordered = sorted(self.times)
        return ordered[max(0, math.ceil(share * len(ordered)) - 1)] * 1000

    @property
    def slowest(self) -> dict[str, str]:
        return max(self.queries, key=lambda query: float(query["time"]))


# --- the rows ------------------------------------------------------------------------------------


def execute(sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def seeded(rows: int) -> bool:
    """The table holds what this benchmark loaded last (the other benchmarks share the database)."""
    marker = execute(f"SELECT version, rows, max_id, at FROM {MARKER_TABLE}")  # noqa: S608
    if not marker:
        return False
    version, marked_rows, max_id, at = marker[0]
    if version != SEED_VERSION or marked_rows != rows or at < dt.datetime.now(dt.UTC) - MAX_SEED_AGE:
        return False
    count, top = execute("SELECT count(*), max(id) FROM django_celery_results_taskresult")[0]
    return bool(count == rows and top == max_id)


INDEXES_SQL = """
SELECT 'DROP INDEX ' || quote_ident(indexname), indexdef FROM pg_indexes
WHERE schemaname = current_schema() AND tablename = 'django_celery_results_taskresult'
  AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = 'django_celery_results_taskresult'::regclass)
UNION ALL
SELECT format('ALTER TABLE django_celery_results_taskresult DROP CONSTRAINT %I', conname),
       format('ALTER TABLE django_celery_results_taskresult ADD CONSTRAINT %I %s', conname, pg_get_constraintdef(oid))
FROM pg_constraint WHERE conrelid = 'django_celery_results_taskresult'::regclass AND contype = 'u'
"""


def seed(rows: int) -> None:
    """Load the rows with the table's secondary indexes (and unique constraints) dropped and
    built again afterwards, as they were and under the same names, all in one transaction."""
    from django.db import transaction

    execute(f"DELETE FROM {MARKER_TABLE}")  # noqa: S608
    params = {"rows": rows, "prefixes": list(SCHEDULE_PREFIXES), "tasks": list(TASK_NAMES), "iso": ISO_FORMAT}
    params.update(iso_seconds=ISO_SECONDS, traceback=TRACEBACK)
    with transaction.atomic():
        indexes = execute(INDEXES_SQL)
        execute("SET LOCAL maintenance_work_mem = '256MB'")
        execute("SET LOCAL work_mem = '256MB'")  # the load's sort by date, in memory
        for drop, _ in indexes:
            execute(drop)
        execute(SEED_SQL, params)
        for _, create in indexes:
            execute(create)
    execute("VACUUM (ANALYZE) django_celery_results_taskresult")  # as autovacuum leaves a table: visibility map set
    execute(
        f"INSERT INTO {MARKER_TABLE} SELECT %(version)s, %(rows)s, max(id), now() "  # noqa: S608
        "FROM django_celery_results_taskresult",
        {"version": SEED_VERSION, "rows": rows},
    )


def ensure_rows(rows: int, reseed: bool) -> None:
    execute(f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (version int, rows bigint, max_id bigint, at timestamptz)")
    if not reseed and seeded(rows):
        print(f"rows: {rows:,} kept from an earlier run (--reseed to load them again)", flush=True)
        return
    print(f"rows: loading {rows:,} ...", flush=True)
    started = time.perf_counter()
    seed(rows)
    print(f"rows: {rows:,} loaded, indexed and vacuumed in {time.perf_counter() - started:.1f} s", flush=True)


def median_value(column: str) -> tuple[str, int]:
    """A typical value of `column`: the one with the median number of runs, and that number."""
    counts = execute(
        f"SELECT {column}, count(*) FROM django_celery_results_taskresult "  # noqa: S608
        f"WHERE {column} IS NOT NULL GROUP BY 1 ORDER BY 2, 1"
    )
    return counts[len(counts) // 2]


def parameters() -> dict[str, str]:
    schedule, schedule_runs = median_value("periodic_task_name")
    task, task_runs = median_value("task_name")
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=24)).replace(microsecond=0)
    print(f"schedule: {schedule} ({schedule_runs:,} runs); task: {task} ({task_runs:,} runs); since: {since}")
    return {"schedule": schedule, "task": task, "since": str(since)}


# --- the requests --------------------------------------------------------------------------------


def url(base: str, query: dict[str, str], params: dict[str, str]) -> str:
    filled = {key: value.format(**params) for key, value in query.items()}
    return f"{base}?{urlencode(filled)}" if filled else base


@dataclass(frozen=True)
class Pair:
    """One question's URLs (None: that side cannot ask it)."""

    label: str
    ours: str | None
    stock: str | None

    def sides(self, stock_first: bool = False) -> list[tuple[str, str]]:
        sides = [("ours", self.ours), ("stock", self.stock)]
        return [(side, path) for side, path in (sides[::-1] if stock_first else sides) if path]


def url_pairs(ours: str, ours_base: str, params: dict[str, str]) -> list[Pair]:
    """Each question's URLs; with --ours stock, ours asks stock's way."""
    pairs = []
    for question in QUESTIONS:
        ours_query = question.stock if ours == "stock" else question.ours
        ours_url = None if ours_query is None else url(ours_base, ours_query, params)
        stock_url = None if question.stock is None else url(STOCK_BASE, question.stock, params)
        if ours_url or stock_url:
            pairs.append(Pair(question.label, ours_url, stock_url))
    return pairs


def superuser_client() -> Any:
    from django.contrib.auth import get_user_model
    from django.test import Client

    user, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    return client


def get(client: Any, path: str) -> float:
    started = time.perf_counter()
    response = client.get(path)
    spent = time.perf_counter() - started
    if response.status_code != 200:
        body = response.content[:500].decode(errors="replace")
        location = response.get("Location", "")
        raise SystemExit(f"GET {path}: {response.status_code} {location}\n{body}")
    return spent


def timed_rounds(client: Any, pairs: list[Pair], rounds: int) -> dict[Key, list[float]]:
    """Every URL once per round, ours first in even rounds and stock first in odd ones."""
    times: dict[Key, list[float]] = {}
    print("rounds:", end="", flush=True)
    for number in range(rounds):
        for pair in pairs:
            for side, path in pair.sides(stock_first=number % 2 == 1):
                times.setdefault((pair.label, side), []).append(get(client, path))
        print(f" {number + 1}", end="", flush=True)
    print()
    return times


def captured(client: Any, path: str) -> list[dict[str, str]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as context:  # sets connection.force_debug_cursor
        get(client, path)
    return list(context.captured_queries)


def measure(client: Any, pairs: list[Pair], rounds: int, warmup: int) -> dict[Key, Figures]:
    for _ in range(warmup):
        for pair in pairs:
            for _, path in pair.sides():
                get(client, path)
    times = timed_rounds(client, pairs, rounds)
    return {
        (pair.label, side): Figures(path, times[(pair.label, side)], captured(client, path))
        for pair in pairs
        for side, path in pair.sides()
    }


# --- the report ----------------------------------------------------------------------------------


def cell(figures: Figures | None) -> str:
    return f"{figures.p(0.5):>9,.0f}{figures.p(0.95):>9,.0f}{len(figures.queries):>5}" if figures else f"{'-':>23}"


def print_table(pairs: list[Pair], results: dict[Key, Figures]) -> None:
    header = f"{'ours p50':>9}{'p95':>9}{'SQL':>5}{'stock p50':>10}{'p95':>9}{'SQL':>5}{'p95 ratio':>10}"
    print(f"\n{'':<14}{header}   target")
    for pair in pairs:
        ours, stock = results.get((pair.label, "ours")), results.get((pair.label, "stock"))
        ratio = f"{ours.p(0.95) / stock.p(0.95):.3f}" if ours and stock else "-"
        print(f"{pair.label:<14}{cell(ours)} {cell(stock)}{ratio:>10}   {verdict(ours)}")
    print("(ms; SQL = queries per request; ratio = ours/stock)")


def verdict(ours: Figures | None) -> str:
    if ours is None:
        return ""
    return f"p95 < {TARGET_P95_MS:.0f} ms: " + ("met" if ours.p(0.95) < TARGET_P95_MS else "MISSED")


def print_queries(pairs: list[Pair], results: dict[Key, Figures], every: bool) -> None:
    print("\nevery query per URL:" if every else "\nslowest query per URL:")
    for pair in pairs:
        for side, path in pair.sides():
            figures = results[(pair.label, side)]
            slowest = figures.slowest
            total, worst = sum(float(query["time"]) for query in figures.queries), float(slowest["time"])
            print(f"  {pair.label} / {side}: {path}")
            print(f"    {len(figures.queries)} queries, {total * 1000:.0f} ms in SQL; slowest {worst * 1000:.0f} ms:")
            for query in figures.queries if every else [slowest]:
                prefix = f"{float(query['time']) * 1000:>6.0f} ms  " if every else ""
                print(f"    {prefix}{shorten(query['sql'])}")


def shorten(sql: str, width: int = 400) -> str:
    return sql if len(sql) <= width else sql[: width - 5] + " ..."


def explain_slow(results: dict[Key, Figures], threshold_ms: float) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of each distinct query that took longer than threshold_ms."""
    slow: dict[str, float] = {}
    for figures in results.values():
        for query in figures.queries:
            if float(query["time"]) * 1000 >= threshold_ms:
                slow[query["sql"]] = max(slow.get(query["sql"], 0.0), float(query["time"]) * 1000)
    for sql, ms in sorted(slow.items(), key=lambda item: -item[1]):
        plan = "\n".join(f"    {line}" for (line,) in execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}"))
        print(f"\nEXPLAIN ANALYZE ({ms:.0f} ms in the captured request): {shorten(sql)}\n{plan}")


# --- entry point ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reseed", action="store_true", help="load the rows even if they are there")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=1, help="untimed requests per URL first")
    parser.add_argument("--ours", choices=["run", "stock"], default="run", help="ours' parameters (stock: A/A run)")
    parser.add_argument("--ours-base", help=f"ours' changelist path (default {OURS_BASE}; stock's with --ours stock)")
    parser.add_argument("--all-queries", action="store_true", help="print every query of each URL, not the slowest")
    parser.add_argument("--explain-ms", type=float, default=100.0, help="EXPLAIN ANALYZE queries slower (<0: none)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/9")
    setup_django()
    from django.conf import settings
    from django.db import connection
    from django.test.utils import override_settings

    if connection.vendor != "postgresql":
        raise SystemExit("this benchmark measures PostgreSQL: set DATABASE_URL=postgres://...")
    print(f"database: {settings.DATABASES['default']['NAME']}", flush=True)
    ensure_rows(args.rows, args.reseed)
    ours_base = args.ours_base or (STOCK_BASE if args.ours == "stock" else OURS_BASE)
    pairs = url_pairs(args.ours, ours_base, parameters())
    with override_settings(ROOT_URLCONF="bench.admin_urls", DEBUG=False, ALLOWED_HOSTS=["testserver"]):
        results = measure(superuser_client(), pairs, args.rounds, args.warmup)
    print_table(pairs, results)
    print_queries(pairs, results, args.all_queries)
    if args.explain_ms >= 0:
        explain_slow(results, args.explain_ms)


if __name__ == "__main__":
    main()
