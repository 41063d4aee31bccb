"""An I/O-bound fan-out as an `async def` task against the same work done synchronously,
side by side on the same worker (issue 20).

    python -m bench.async_tasks [--runs 10] [--requests 50] [--delay 0.05] [--rounds 2] [--concurrency 2]
                                [--empty-runs 300]

Each run makes `--requests` GETs of a local HTTP server whose endpoint answers after
`--delay` seconds: the async task awaits them all at once (an aiohttp session kept on the
worker's loop), the sync task makes them one after the other (a requests session kept in
the process). A real worker (prefork, `--concurrency`) and recorder drain `--runs` runs of each
variant in turn; rounds alternate the variants. Reported: the median wall time to drain
(queued to every row SUCCESS), runs/s, the median run duration (date_started to
date_done), and the async/sync ratios, from the same script because absolute speed drifts.
Then the cost of the loop itself: `--empty-runs` runs of an empty async body against an
empty sync one (runs/s through worker and recorder, ratio).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.common import median, setup_django, start_recorder, start_worker

VARIANTS = {"sync": "bench.fan_out_sync", "async": "bench.fan_out_async"}
EMPTY = {"sync": "bench.empty_sync", "async": "bench.empty_async"}
DEADLINE = 900.0


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # listen()'s backlog: every GET of a fan-out connects at once


def slow_server(delay: float) -> ThreadingHTTPServer:
    class Slow(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the clients reuse their connections, as in production
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms wait for an ACK between them

        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (http.server's signature)
            pass

    server = Server(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def drain(task: str, args: list[Any], runs: int) -> tuple[float, float]:
    """Queue `runs` runs of `task`; the wall time until all are SUCCESS, and their median duration."""
    from celery import current_app
    from django_celery_results.models import TaskResult

    TaskResult.objects.all().delete()
    started = time.monotonic()
    ids = [str(current_app.send_task(task, args=args).id) for _ in range(runs)]
    deadline = started + DEADLINE
    while TaskResult.objects.filter(task_id__in=ids, status="SUCCESS").count() < runs:
        failed = TaskResult.objects.filter(task_id__in=ids, status="FAILURE").first()
        if failed is not None:
            raise SystemExit(f"{task} failed: {failed.traceback}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{task}: {runs} runs did not finish in {DEADLINE:.0f}s")
        time.sleep(0.05)
    wall = time.monotonic() - started
    rows = TaskResult.objects.filter(task_id__in=ids)
    durations = [(r.date_done - r.date_started).total_seconds() for r in rows if r.date_done and r.date_started]
    return wall, statistics.median(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--empty-runs", type=int, default=300)
    args = parser.parse_args()
    env = setup_django()
    server = slow_server(args.delay)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    worker = start_worker(env, args.concurrency)
    recorder = start_recorder(env)
    walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
    durations: dict[str, list[float]] = {v: [] for v in VARIANTS}
    empty: dict[str, list[float]] = {v: [] for v in EMPTY}
    try:
        drain(VARIANTS["async"], [url, 2], 2)  # the worker is up and each pool process has its loop
        for _ in range(args.rounds):
            for variant, task in VARIANTS.items():
                wall, duration = drain(task, [url, args.requests], args.runs)
                walls[variant].append(wall)
                durations[variant].append(duration)
                print(f"  {variant:5} {wall:7.2f} s to drain, run median {duration * 1000:8.1f} ms", flush=True)
            for variant, task in EMPTY.items():
                wall, _ = drain(task, [0], args.empty_runs)
                empty[variant].append(args.empty_runs / wall)
                print(f"  empty {variant:5} {args.empty_runs / wall:7.1f} runs/s", flush=True)
    finally:
        for proc in (worker, recorder):
            proc.terminate()
            proc.wait(60)
        server.shutdown()
    print(f"{args.runs} runs x {args.requests} GETs of a {args.delay * 1000:.0f} ms endpoint, "
          f"concurrency {args.concurrency}, {args.rounds} rounds (medians):")  # fmt: skip
    for variant in VARIANTS:
        wall = median(walls[variant])
        print(f"  {variant:5} drain {wall:7.2f} s ({args.runs / wall:6.2f} runs/s), "
              f"run {median(durations[variant]) * 1000:8.1f} ms")  # fmt: skip
    print(f"  async/sync: drain time {median(walls['async']) / median(walls['sync']):.3f}, "
          f"run duration {median(durations['async']) / median(durations['sync']):.3f}, "
          f"throughput x{median(walls['sync']) / median(walls['async']):.1f}")  # fmt: skip
    sync_rate, async_rate = median(empty["sync"]), median(empty["async"])
    print(f"  empty bodies, {args.empty_runs} runs: sync {sync_rate:.1f} runs/s, async {async_rate:.1f} runs/s, "
          f"async/sync {async_rate / sync_rate:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
