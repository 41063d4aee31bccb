"""Benchmark data for anyone to reproduce bench/beat.py's figures, or to run a beat, the
console or the API against: the schedules of bench/beat.py (`populate`), in the
benchmark's own database (<name>_beatkeeper_bench on DATABASE_URL's server).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \\
        python -m bench.generate --size 1000000 [--due-every-10s 5000] [--rules]

`--due-every-10s N` makes N of them run every 10 s from a beat's start-up time after the
command ends (20 s, and 40 s more per million; the lateness load: 5,000 at 1,000,000). It
replaces every schedule of that database (and its change log); it never touches
DATABASE_URL's own database. Then, for example:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test_beatkeeper_bench REDIS_URL=... \\
        celery -A project beat
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time

from bench.common import setup_django


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="schedules (default 1,000,000)")
    parser.add_argument("--due-every-10s", type=int, default=0, metavar="N", help="of them, run every 10 s")
    parser.add_argument("--rules", action="store_true", help="a third with jitter, H crontabs or calendars")
    args = parser.parse_args()
    if args.size < 10 or not 0 <= args.due_every_10s <= args.size:
        parser.error("--size must be at least 10, and --due-every-10s between 0 and --size")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/9")
    setup_django()
    from django.conf import settings
    from django.db import connection

    from bench.beat import LATENESS_SQL, Load, execute, populate

    if connection.vendor != "postgresql":
        raise SystemExit("the generator writes with PostgreSQL's SQL: set DATABASE_URL=postgres://...")
    started = time.perf_counter()
    populate(args.size, ruled=args.rules)
    if args.due_every_10s:
        start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=Load(args.size, args.due_every_10s, 0).lead)
        execute(LATENESS_SQL, {"start": start, "every": args.size // args.due_every_10s})
    execute("TRUNCATE scheduler_app_schedulechange RESTART IDENTITY")  # a load, not a change: no beat reads it
    name = settings.DATABASES["default"]["NAME"]
    print(f"{args.size:,} schedules in {name} in {time.perf_counter() - started:.1f}s", flush=True)


if __name__ == "__main__":
    main()
