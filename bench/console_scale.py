"""The console's schedule pages and the every-minute passes at N schedules (default
1,000,000), on PostgreSQL: the schedules list (ours against django-celery-beat's stock
`PeriodicTaskAdmin`, side by side, with the same filters where stock has them), the
health pass (`check_schedules`, twice: the first pass stores every schedule's health, the
next ones what changed), `/metrics`, and `seed_default_tasks`.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/9 \\
        python -m bench.console_scale [--size 1000000] [--rounds 5] [--no-passes]

The schedules are bench/beat.py's (`populate`), in the benchmark's own database; they have
no runs (each page's per-row statistics are still read). Budgets: a page within 1 s (p95),
the health pass well inside its minute (30 s), `/metrics` within a scrape (Prometheus'
default timeout, 10 s).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

from bench.common import median, setup_django

PAGES = (  # label, ours' query, stock's query (None: stock has no such filter)
    ("default page", "", ""),
    ("enabled", "state=enabled", "enabled__exact=1"),
    ("one task", "task=bench.plain", "q=bench.plain"),  # stock has no task filter: its search
    ("search a name", "q=bench-424242", "q=bench-424242"),
    ("a middle page", "p={middle}", "p={middle}"),  # of 100 rows: page size / 200
    ("never ran", "outcome=none", None),
)
OURS = "/admin/django_celery_beat/periodictask/"
STOCK = "/stock-admin/django_celery_beat/periodictask/"
PAGE_BUDGET, HEALTH_BUDGET, METRICS_BUDGET = 1.0, 30.0, 10.0


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def page(client: Any, path: str) -> float:
    started = time.perf_counter()
    response = client.get(path)
    spent = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"GET {path}: {response.status_code}\n{response.content[:400]!r}")
    return spent


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def measure_pages(size: int, rounds: int) -> list[tuple[str, float, float | None]]:
    from bench.runs_admin import superuser_client

    client = superuser_client()
    found = []
    middle = max(1, size // 200)
    for label, ours_query, stock_query in PAGES:
        ours = ours_query.format(middle=middle)
        stock_path = None if stock_query is None else f"{STOCK}?{stock_query.format(middle=middle)}"
        page(client, f"{OURS}?{ours}")  # warm-up
        ours_times, stock_times = [], []
        for number in range(rounds):
            for side in ("ours", "stock") if number % 2 == 0 else ("stock", "ours"):
                if side == "ours":
                    ours_times.append(page(client, f"{OURS}?{ours}"))
                elif stock_path is not None:
                    stock_times.append(page(client, stock_path))
        found.append((label, p95(ours_times), p95(stock_times) if stock_times else None))
        print(f"  {label}: ours {found[-1][1]:.3f}s, stock {found[-1][2] or float('nan'):.3f}s", flush=True)
    return found


def measure_passes() -> dict[str, float]:
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client

    from scheduler_app.models import ScheduleHealth
    from scheduler_app.monitoring.health import check_schedules

    ScheduleHealth.objects.all().delete()
    figures = {"health first pass s": timed(check_schedules), "health next pass s": timed(check_schedules)}
    client = Client()
    token = settings.METRICS_TOKEN
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if client.get("/metrics", headers=headers).status_code != 200:
        raise SystemExit("/metrics refused the benchmark's token")
    metrics = [timed(lambda: client.get("/metrics", headers=headers)) for _ in range(3)]
    figures["/metrics s"] = median(metrics)
    figures["seed_default_tasks s"] = timed(lambda: call_command("seed_default_tasks", verbosity=0))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-passes", action="store_true", help="the pages only (not the health pass and the rest)")
    args = parser.parse_args()
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/9")
    os.environ.setdefault("METRICS_TOKEN", "bench-metrics-token")
    setup_django()
    from django.db import connection
    from django.test.utils import override_settings

    from bench.beat import populate

    if connection.vendor != "postgresql":
        raise SystemExit("this benchmark measures PostgreSQL: set DATABASE_URL=postgres://...")
    populate(args.size)
    with override_settings(ROOT_URLCONF="bench.admin_urls", DEBUG=False, ALLOWED_HOSTS=["testserver"]):
        pages = measure_pages(args.size, args.rounds)
        passes = {} if args.no_passes else measure_passes()
    print(f"\nthe console at {args.size:,} schedules (p95 of {args.rounds} rounds)")
    print(f"{'':<24}{'stock s':>10}{'ours s':>10}{'ratio':>8}   budget")
    for label, ours, stock in pages:
        ratio = f"{ours / stock:.2f}" if stock else "-"
        verdict = "met" if ours <= PAGE_BUDGET else "MISSED"
        stock_text = f"{stock:.3f}" if stock is not None else "-"
        print(f"{label:<24}{stock_text:>10}{ours:>10.3f}{ratio:>8}   <= {PAGE_BUDGET:.0f} s: {verdict}")
    budgets = {"health first pass s": HEALTH_BUDGET, "health next pass s": HEALTH_BUDGET, "/metrics s": METRICS_BUDGET}
    for label, value in passes.items():
        budget = budgets.get(label)
        verdict = "" if budget is None else f"<= {budget:.0f} s: " + ("met" if value <= budget else "MISSED")
        print(f"{label:<24}{'':>10}{value:>10.3f}{'':>8}   {verdict}")


if __name__ == "__main__":
    main()
