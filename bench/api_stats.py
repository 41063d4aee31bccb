"""GET /api/stats/ at 1,000,000 runs on PostgreSQL, each window (1h, 24h, 7d) against the
runs list's default page (GET /api/runs/, the baseline), side by side in the same rounds.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/9 \\
        python -m bench.api_stats [--runs 1000000] [--rounds 20] [--reseed]

The rows are bench/runs_admin.py's (its loader and its database, <name>_beatkeeper_bench,
kept between runs of either benchmark while their count matches and they are less than a day
old): 30 days of runs, so the 7-day window holds about a quarter of them. The 2,000 schedule
names the runs carry are made schedules here (hourly intervals), so the page of schedules
reads real run statistics. A smaller --runs gives a quick try.

Requests are in-process (Django's test Client, a superuser's session, DEBUG off), each round
asking every URL once, the order rotated round by round so drift spreads evenly; p50/p95 per
URL, its ratio to the baseline, and the queries of one captured request. Each window is asked
in two phases (the baseline in both): as served (its run figures shared for 5 s, 60 s for 7d,
the queues and workers for 5 s), then "fresh", those caches dropped before each request: the
cost of computing the figures, the workers' inspect (0.5 s) included.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from typing import Any

from bench import runs_admin
from bench.common import setup_django

WINDOWS = ("1h", "24h", "7d")
SPANS = {"1h": dt.timedelta(hours=1), "24h": dt.timedelta(hours=24), "7d": dt.timedelta(days=7)}
BASELINE = "/api/runs/"
TARGET_P95_MS = 1000.0
SCHEDULES = 2000  # as many as runs_admin's rows name


def ensure_schedules() -> int:
    """A schedule for each schedule name the runs carry (created once, hourly)."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    names = [name for (name,) in runs_admin.execute(
        "SELECT DISTINCT periodic_task_name FROM django_celery_results_taskresult WHERE periodic_task_name IS NOT NULL"
    )]  # fmt: skip
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    have = set(PeriodicTask.objects.filter(name__in=names).values_list("name", flat=True))
    PeriodicTask.objects.bulk_create(  # bulk: one query per 1,000 (the triggers log each row; no beat runs here)
        [PeriodicTask(name=name, task=runs_admin.TASK_NAMES[0], interval=every) for name in names if name not in have],
        batch_size=1000,
    )
    return int(PeriodicTask.objects.count())


FRESH = "#fresh"  # a path's tail: drop the shared figures first (not sent)


def urls() -> dict[str, str]:
    paths = {"runs list (baseline)": BASELINE}
    for window in WINDOWS:
        paths[f"stats {window}"] = f"/api/stats/?window={window}"
        paths[f"stats {window} fresh"] = f"/api/stats/?window={window}{FRESH}"
    return paths


def measure(client: Any, paths: dict[str, str], rounds: int) -> dict[str, runs_admin.Figures]:
    from django.core.cache import cache

    from scheduler_app.api import stats

    def ask(path: str) -> float:
        if path.endswith(FRESH):
            cache.delete_many([stats.BROKER_KEY, *(f"beatkeeper:api:stats:runs:{window}" for window in WINDOWS)])
            path = path.removesuffix(FRESH)
        return runs_admin.get(client, path)

    labels = list(paths)
    for label in labels:  # warm-up, untimed
        ask(paths[label])
    times: dict[str, list[float]] = {label: [] for label in labels}
    # As served first, then fresh: a fresh request would drop what the served ones share.
    for phase in ([label for label in labels if not paths[label].endswith(FRESH)],
                  [label for label in labels if paths[label].endswith(FRESH) or paths[label] == BASELINE]):  # fmt: skip
        print("rounds:", end="", flush=True)
        for number in range(rounds):
            shift = number % len(phase)
            for label in phase[shift:] + phase[:shift]:
                times[label].append(ask(paths[label]))
            print(f" {number + 1}", end="", flush=True)
        print()
    cache.clear()  # the captured request computes everything
    return {label: runs_admin.Figures(paths[label], times[label], captured(client, paths[label]))
            for label in labels}  # fmt: skip


def captured(client: Any, path: str) -> list[dict[str, str]]:
    from django.core.cache import cache

    cache.clear()
    return runs_admin.captured(client, path.removesuffix(FRESH))


def report(results: dict[str, runs_admin.Figures]) -> None:
    base = results["runs list (baseline)"]
    print(f"\n{'':<22}{'p50':>8}{'p95':>8}{'SQL':>5}{'p50 ratio':>11}{'p95 ratio':>11}   target")
    for label, figures in results.items():
        p50, p95 = figures.p(0.5), figures.p(0.95)
        verdict = "" if figures is base else f"p95 < {TARGET_P95_MS:.0f} ms: " + (
            "met" if p95 < TARGET_P95_MS else "MISSED")  # fmt: skip
        print(f"{label:<22}{p50:>8,.0f}{p95:>8,.0f}{len(figures.queries):>5}"
              f"{p50 / base.p(0.5):>11.2f}{p95 / base.p(0.95):>11.2f}   {verdict}")  # fmt: skip
    print("(ms; SQL = queries per request; ratio = this URL / the runs list's default page)")
    print("\nslowest query per URL:")
    for label, figures in results.items():
        slowest = figures.slowest
        total = sum(float(query["time"]) for query in figures.queries)
        print(f"  {label}: {len(figures.queries)} queries, {total * 1000:.0f} ms in SQL; "
              f"slowest {float(slowest['time']) * 1000:.0f} ms: {runs_admin.shorten(slowest['sql'], 200)}")  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="rows of run history (smaller: a quick try)")
    parser.add_argument("--reseed", action="store_true", help="load the rows even if they are there")
    parser.add_argument("--rounds", type=int, default=20)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/9")
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("this benchmark measures PostgreSQL: set DATABASE_URL=postgres://...")
    setup_django(keep_var_dir=True)
    from django.conf import settings
    from django.test.utils import override_settings

    print(f"database: {settings.DATABASES['default']['NAME']}", flush=True)
    started = time.perf_counter()
    runs_admin.ensure_rows(args.runs, args.reseed)
    print(f"schedules: {ensure_schedules():,} (rows ready in {time.perf_counter() - started:.1f} s)", flush=True)
    for window in WINDOWS:
        (count,) = runs_admin.execute(
            "SELECT count(*) FROM django_celery_results_taskresult WHERE date_created >= now() - %(span)s",
            {"span": SPANS[window]},
        )[0]
        print(f"window {window}: {count:,} runs", flush=True)
    with override_settings(DEBUG=False, ALLOWED_HOSTS=["testserver"]):
        results = measure(runs_admin.superuser_client(), urls(), args.rounds)
    report(results)


if __name__ == "__main__":
    main()
