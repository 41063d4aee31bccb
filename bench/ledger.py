"""Throughput with complete run history against bare Celery, side by side (issue 13).

    python -m bench.ledger [--runs 3000] [--rounds 2] [--concurrency 2] [--settings] [--backlog 100000]

Variants, all draining the same queued backlog of a trivial task with a real worker:
- bare: Celery alone (bench/bare.py): no Django, no result backend, Celery's defaults;
- nobackend: the platform's Celery settings, no result backend;
- stock: Celery's defaults + django-celery-results' database backend with result_extended;
- plain: Beatkeeper as shipped (the ledger + a recorder), a plain @shared_task;
- platform: Beatkeeper as shipped, a PlatformTask (its policy, context and attempts);
- platform-recorder-after: the same, with the recorder started once the worker is done:
  the worker's own cost, as on a deployment where the recorder and the database do not
  share the worker's cores (on this 2-core machine they do in "platform").
With --settings, also the platform's settings without a result backend and one setting
changed (prefetch 4, no task events), to show what each costs.

Every body does one Redis round trip (a count and its end time), so that the bench sees
when runs end whatever the backend; throughput is runs over the span from the first end
to the last. For plain and platform it also reports when each run's finished row became
visible in TaskResult (p50/p99 after the run ended) and the recorded throughput (runs over
the span from the first end until every row is final). Rounds alternate the variants;
figures are medians and ratios to bare Celery from the same run, because absolute speed
drifts on a shared machine. --backlog N queues the states of N runs with no recorder
running, then starts one and reports its peak RSS and how fast it drains them.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.common import ROOT, median, setup_django

VARIANTS = ("bare", "nobackend", "stock", "plain", "platform", "platform-recorder-after")
SETTINGS_VARIANTS = ("nobackend-prefetch4", "nobackend-noevents", "nobackend-prefetch4-noevents")
TASK = {"platform": "bench.counted_platform", "platform-recorder-after": "bench.counted_platform"}
RECORDED = ("plain", "platform", "platform-recorder-after")  # the variants whose history is the ledger's
RECORDER_AFTER = "platform-recorder-after"  # the worker alone (the recorder elsewhere), then the recorder
DEADLINE = 900.0


@dataclass
class Round:
    rate: float
    recorded_rate: float | None = None
    visible: list[float] = field(default_factory=list)


def child_env(env: dict[str, str], variant: str) -> dict[str, str]:
    from django.conf import settings

    return {
        **env,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "BENCH_VARIANT": "platform" if variant in RECORDED else variant,
        "BENCH_BROKER": settings.CELERY_BROKER_URL,
        "BENCH_COUNTER": settings.REDIS_URL,
    }


def send(variant: str, runs: int) -> None:
    """In a child process configured as the variant's worker is (same queues and options)."""
    if variant == "bare":
        from bench.bare import app
    else:
        import django

        django.setup()
        from celery import current_app as app
    task = TASK.get(variant, "bench.counted")
    with app.producer_or_acquire() as producer:
        for n in range(runs):
            app.send_task(task, args=[n], producer=producer, task_id=run_id(n))


def run_id(n: int) -> str:
    return str(uuid.UUID(int=n + 1))


SAMPLE_EVERY = 10  # one run in ten is watched for when its row shows


def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def worker_argv(variant: str, concurrency: int) -> list[str]:
    app, include = ("bench.bare", []) if variant == "bare" else ("project", ["--include", "bench.tasks"])
    argv = [sys.executable, "-m", "celery", "-A", app, "worker", *include, "--concurrency", str(concurrency)]
    return argv + ["--loglevel", "WARNING", "--without-mingle", "--without-gossip"]


def drain(env: dict[str, str], variant: str, runs: int, concurrency: int) -> Round:
    from django_celery_results.models import TaskResult

    from bench.counting import DONE, FIRST, LAST
    from scheduler_app.connection import redis_client

    client = redis_client()
    client.flushdb()
    TaskResult.objects.all().delete()
    children = child_env(env, variant)
    subprocess.run([sys.executable, "-m", "bench.ledger", "--send", variant, str(runs)], cwd=ROOT, env=children,
                   check=True)  # fmt: skip
    record = [sys.executable, "manage.py", "record_runs"]
    recorder = start(record, children) if variant in RECORDED and variant != RECORDER_AFTER else None
    seen: dict[str, float] = {}
    sampling = threading.Event()
    sample = {run_id(n) for n in range(0, runs, SAMPLE_EVERY)}
    sampler = threading.Thread(target=sample_visible, args=(sample, seen, sampling), daemon=True)
    if recorder is not None:
        sampler.start()
    worker = start(worker_argv(variant, concurrency), children)
    deadline = time.monotonic() + DEADLINE
    try:
        while int(client.get(DONE) or 0) < runs:
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit(f"{variant}: the worker did not finish {runs} runs")
            time.sleep(0.2)
        first, last = float(client.get(FIRST) or 0), float(client.get(LAST) or 0)
        found = Round(runs / (last - first))
        if variant == RECORDER_AFTER:
            stop(worker)
            first = time.time()  # its recorded rate: the recorder alone, catching up
            recorder = start(record, children)
            sampler.start()
        if recorder is not None:
            while TaskResult.objects.filter(status="SUCCESS").count() < runs:
                if time.monotonic() > deadline or recorder.poll() is not None:
                    raise SystemExit(f"{variant}: the recorder did not write {runs} runs")
                time.sleep(0.1)
            all_written = time.time()
            wait_until(lambda: len(seen) == len(sample), deadline)
            sampling.set()
            sampler.join()
            done = dict(TaskResult.objects.filter(task_id__in=sample).values_list("task_id", "date_done"))
            found.visible = sorted(max(0.0, seen[task_id] - done[task_id].timestamp()) for task_id in seen)
            found.recorded_rate = runs / (all_written - first)
            if variant == RECORDER_AFTER:
                found.visible = []  # written after the worker stopped: no latency to speak of
        return found
    finally:
        stop(worker)
        if recorder is not None:
            sampling.set()
            stop(recorder)


def wait_until(probe: Callable[[], bool], deadline: float) -> None:
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.05)


def sample_visible(sample: set[str], seen: dict[str, float], stop_event: threading.Event) -> None:
    """When each sampled run's finished row first shows in TaskResult (polled every 50 ms)."""
    from django.db import connection
    from django_celery_results.models import TaskResult

    waiting = set(sample)
    try:
        while waiting and not stop_event.is_set():
            now = time.time()
            shown = TaskResult.objects.filter(task_id__in=waiting, status="SUCCESS").values_list("task_id", flat=True)
            for task_id in list(shown):
                seen[task_id] = now
                waiting.discard(task_id)
            stop_event.wait(0.05)
    finally:
        connection.close()


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def backlog(env: dict[str, str], runs: int) -> None:
    """Queue the state changes of `runs` runs (STARTED, then SUCCESS) with no recorder,
    then time one recorder draining them and watch its memory."""
    import psutil
    from celery import current_app, states
    from celery.app.task import Context
    from django.conf import settings
    from django_celery_results.models import TaskResult

    from scheduler_app.connection import redis_client
    from scheduler_app.runs import ledger

    settings.LEDGER_STARTED_DELAY = 0  # two changes per run, as a run longer than the delay writes
    client = redis_client()
    client.flushdb()
    TaskResult.objects.all().delete()
    backend = current_app.backend
    started = time.monotonic()
    for _ in range(runs):
        task_id = str(uuid.uuid4())
        request = Context(id=task_id, task="bench.counted_platform", args=[1], kwargs={}, hostname="bench@host",
                          meta={"trigger": "beat", "schedule": "bench", "attempt": 1, "attempts": []})  # fmt: skip
        backend.store_result(task_id, None, states.STARTED, request=request)
        backend.store_result(task_id, {"n": 1}, states.SUCCESS, request=request)
    queued = client.xlen(ledger.STREAM)
    print(f"backlog: {queued} state changes queued in {time.monotonic() - started:.1f}s")
    recorder = start([sys.executable, "manage.py", "record_runs"], child_env(env, "platform"))
    process = psutil.Process(recorder.pid)
    peak = 0
    began = time.monotonic()
    try:
        while client.xlen(ledger.STREAM) > 0:
            peak = max(peak, process.memory_info().rss)
            if recorder.poll() is not None or time.monotonic() - began > DEADLINE:
                raise SystemExit("the recorder did not drain the backlog")
            time.sleep(0.1)
        seconds = time.monotonic() - began
    finally:
        stop(recorder)
    rows = TaskResult.objects.filter(status="SUCCESS").count()
    rates = f"{queued / seconds:,.0f} state changes/s, {rows / seconds:,.0f} runs/s"
    print(f"backlog: drained in {seconds:.1f}s ({rates}); {rows} rows; recorder peak RSS {peak / 2**20:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--settings", action="store_true", help="also measure the settings one by one")
    parser.add_argument("--only", nargs="*", help="run only these variants")
    parser.add_argument("--backlog", type=int, default=0, help="runs queued (unrecorded) for the recorder's drain")
    parser.add_argument("--send", nargs=2, metavar=("VARIANT", "RUNS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        send(args.send[0], int(args.send[1]))
        return
    env = setup_django()
    from django.conf import settings

    print(f"database: {settings.DATABASES['default']['ENGINE']}, broker: {settings.REDIS_URL}")
    variants = list(args.only or (VARIANTS + (SETTINGS_VARIANTS if args.settings else ())))
    found: dict[str, list[Round]] = {name: [] for name in variants}
    for round_no in range(1, args.rounds + 1):
        for name in variants:
            result = drain(env, name, args.runs, args.concurrency)
            found[name].append(result)
            extra = ""
            if result.recorded_rate is not None:
                p50, p99 = percentile(result.visible, 0.5), percentile(result.visible, 0.99)
                extra = f", recorded {result.recorded_rate:7.1f} runs/s, visible p50 {p50:.3f}s p99 {p99:.3f}s"
            print(f"round {round_no}: {name:<28} {result.rate:8.1f} runs/s{extra}", flush=True)
    bare = median([r.rate for r in found["bare"]]) if "bare" in found else None
    print("\nmedians (ratio to bare Celery):")
    for name, rounds in found.items():
        rate = median([r.rate for r in rounds])
        ratio = f"{rate / bare:.3f}" if bare else "-"
        line = f"  {name:<28} {rate:8.1f} runs/s  {ratio}"
        if rounds[0].recorded_rate is not None:
            recorded = median([r.recorded_rate or 0 for r in rounds])
            visible = sorted(v for r in rounds for v in r.visible)
            line += (f"   recorded {recorded:7.1f} runs/s ({recorded / bare:.3f})" if bare else "") + (
                f"   visible p99 {percentile(visible, 0.99):.3f}s"
            )
        print(line)
    if args.backlog:
        backlog(env, args.backlog)
    os.environ.pop("BENCH_VARIANT", None)


if __name__ == "__main__":
    main()
