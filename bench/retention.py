"""Deleting 1,000,000 expired runs: cleanup_old_runs against django-celery-results' own
`TaskResult.objects.delete_expired`, side by side, on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test python -m bench.retention [--rows 1000000]

Works in a database of its own (<name>_beatkeeper_bench). Each contender runs in a fresh
process on the same freshly loaded table (plus 10,000 recent rows that must survive), and
reports its wall time, its peak RSS, and the longest single statement it ran (a DELETE
holds its row locks until it ends).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from bench.common import ROOT, setup_django

LOAD_SQL = """
TRUNCATE django_celery_results_taskresult;
INSERT INTO django_celery_results_taskresult
  (task_id, status, content_type, content_encoding, result, date_done, date_created, date_started,
   traceback, meta, task_args, task_kwargs, task_name, worker, periodic_task_name)
SELECT md5(g::text) || g, CASE WHEN g % 10 = 0 THEN 'FAILURE' ELSE 'SUCCESS' END,
       'application/json', 'utf-8', '{"deleted": 0}', now() - interval '3 days' - g * interval '1 ms',
       now() - interval '3 days', now() - interval '3 days', NULL, '{"children": []}', '[]', '{}',
       'maintenance.cleanup_old_runs', 'worker@bench', 'sched-' || (g % 50)
FROM generate_series(1, %(old)s) AS g;
INSERT INTO django_celery_results_taskresult
  (task_id, status, content_type, content_encoding, result, date_done, date_created, date_started,
   meta, task_args, task_kwargs, task_name, worker, periodic_task_name)
SELECT 'recent-' || g, 'SUCCESS', 'application/json', 'utf-8', '{}', now(), now(), now(),
       '{"children": []}', '[]', '{}', 'maintenance.cleanup_old_runs', 'worker@bench', 'sched-' || (g % 50)
FROM generate_series(1, 10000) AS g;
ANALYZE django_celery_results_taskresult;
"""


def contender(name: str) -> dict[str, Any]:
    import datetime as dt

    from django.conf import settings
    from django.db import connection
    from django_celery_results.models import TaskResult

    from maintenance.runs import cleanup_old_runs

    longest = 0.0

    def timed(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        nonlocal longest
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            longest = max(longest, time.perf_counter() - started)

    started = time.perf_counter()
    with connection.execute_wrapper(timed):
        if name == "stock":
            TaskResult.objects.delete_expired(dt.timedelta(hours=24))
        else:
            # as the hourly task runs it: keeping the newest runs of each of the 50 schedules
            cleanup_old_runs(dt.timedelta(hours=24), keep_last=settings.RUN_RETENTION_KEEP_LAST, batch_size=5000)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_mb,
        "longest_statement_s": longest,
        "left": TaskResult.objects.count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--contender", choices=["stock", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    env = setup_django()
    if args.contender:
        print(json.dumps(contender(args.contender)))
        return
    from django.db import connection

    if connection.vendor != "postgresql":
        raise SystemExit("this benchmark measures PostgreSQL: set DATABASE_URL=postgres://...")
    results: dict[str, list[dict[str, Any]]] = {}
    for name in ("stock", "ours", "stock", "ours"):
        with connection.cursor() as cursor:
            cursor.execute(LOAD_SQL.replace("%(old)s", str(args.rows)))
        child = subprocess.run(
            [sys.executable, "-m", "bench.retention", "--contender", name],
            cwd=ROOT,
            env={**env, **os.environ},
            capture_output=True,
            text=True,
            check=True,
        )
        figures = json.loads(child.stdout.strip().splitlines()[-1])
        assert figures["left"] == 10000, figures
        results.setdefault(name, []).append(figures)
        print(f"{name:<6} {json.dumps(figures)}")
    best = {name: min(runs, key=lambda f: f["seconds"]) for name, runs in results.items()}
    print(f"time ours/stock: {best['ours']['seconds'] / best['stock']['seconds']:.2f} (below 1 is faster)")
    print(
        f"peak RSS ours: {best['ours']['peak_rss_mb']:.0f} MB (target < 100); "
        f"stock: {best['stock']['peak_rss_mb']:.0f} MB"
    )
    print(
        f"longest statement ours: {best['ours']['longest_statement_s']:.3f} s (target < 1); "
        f"stock: {best['stock']['longest_statement_s']:.3f} s"
    )


if __name__ == "__main__":
    main()
