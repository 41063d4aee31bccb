"""Throughput of the platform task against a plain @shared_task, side by side.

    python -m bench.platform_overhead [--runs 5000] [--rounds 2] [--concurrency 2]

Same broker, same result backend (django-db with result_extended and track_started),
same trivial body. ("platform+lock" takes the overlap lock on every run; with two
processes some runs find it held and are recorded as SKIPPED, which counts as done;
"platform+rate" counts every start against a fleet-wide rate it never reaches, so the
cost of the rate limiter's Redis round trip shows against "platform"; "platform+pool" takes
and gives back a slot of a concurrency pool that is never full, its lease renewed by a
thread, so the cost of the pool's two Redis calls and the thread shows.)
Each round queues `runs` messages with no worker running, then starts a real worker and the
recorder (`manage.py record_runs`) and times the drain from the first start to the last
finish, as recorded in TaskResult. Rounds alternate the variants, and the figures are ratios
of medians, because absolute speed drifts on a shared machine.
"""

from __future__ import annotations

import argparse
import signal
import time

from bench.common import median, setup_django, start_recorder, start_worker

VARIANTS = {
    "plain": "bench.plain",
    "platform": "bench.platform",
    "platform+lock": "bench.platform_locked",
    "platform+rate": "bench.platform_rated",
    "platform+pool": "bench.platform_pooled",
}
POOL_SIZE = 10_000  # the most a pool may hold: never full here


def drain(env: dict[str, str], task: str, runs: int, concurrency: int) -> float:
    from celery import current_app
    from django.db.models import Max, Min
    from django_celery_results.models import TaskResult

    from scheduler_app.models import Pool
    from scheduler_app.runs.states import TERMINAL_STATES

    Pool.objects.update_or_create(name="bench", defaults={"size": POOL_SIZE})
    TaskResult.objects.all().delete()
    with current_app.producer_or_acquire() as producer:
        for n in range(runs):
            current_app.send_task(task, args=[n], producer=producer)
    worker = start_worker(env, concurrency)
    recorder = start_recorder(env)  # the runs' states reach TaskResult through it, as deployed
    deadline = time.monotonic() + 600
    while TaskResult.objects.filter(status__in=TERMINAL_STATES).count() < runs:
        if time.monotonic() > deadline or worker.poll() is not None or recorder.poll() is not None:
            raise SystemExit(f"{task}: the worker and recorder did not finish {runs} runs")
        time.sleep(0.5)
    for proc in (worker, recorder):
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    span = TaskResult.objects.aggregate(first=Min("date_started"), last=Max("date_done"))
    seconds: float = (span["last"] - span["first"]).total_seconds()
    return runs / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    env = setup_django()
    from django.conf import settings

    print(f"database: {settings.DATABASES['default']['ENGINE']}, broker: {settings.REDIS_URL}")
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_no in range(1, args.rounds + 1):
        for name, task in VARIANTS.items():
            rate = drain(env, task, args.runs, args.concurrency)
            rates[name].append(rate)
            print(f"round {round_no}: {name:<14} {rate:8.1f} runs/s")
    plain = median(rates["plain"])
    for name in ("platform", "platform+lock", "platform+rate", "platform+pool"):
        print(f"{name} / plain throughput: {median(rates[name]) / plain:.3f} (target >= 0.85)")
    for name in ("platform+rate", "platform+pool"):
        print(f"{name} / platform throughput: {median(rates[name]) / median(rates['platform']):.3f}")


if __name__ == "__main__":
    main()
