"""Beat at 10,000 and 100,000 schedules: our `scheduler_app.beat.Scheduler` against
django-celery-beat's stock `DatabaseScheduler`, side by side, on PostgreSQL and Redis.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/9 \\
        python -m bench.beat [--sizes 10000 100000] [--skip-lateness] [--rules]

(`--sizes` with no size runs the lateness part only.) Works in a database of its own
(<name>_beatkeeper_bench) and in the Redis database of REDIS_URL (default DB 9), whose
`celery*` and `beatkeeper:*` keys it deletes between runs.

The schedules (loaded with SQL before each contender, so each starts from the same rows):
- 70% interval schedules over 200 IntervalSchedule rows: every 952-3,500 s, 16-212 minutes,
  3-23 hours or 1-7 days; 30% crontabs over 500 CrontabSchedule rows in UTC, Europe/Berlin,
  America/New_York and Asia/Tokyo (whole-hour offsets), hours `*`, `*/2`, a fixed hour or
  `9-17`, a fifth of them Monday to Friday only, minutes 25-54 minutes ahead of the load;
- task `bench.plain` (registered in the measuring process, as a deployment's tasks are),
  args '[0]' (its one argument: stock checks the arguments of a registered task before
  sending), kwargs '{}', no policy rows, last_run_at within the last minute: nothing
  comes due for 15 minutes unless a measurement makes it so.
Stock loads only the crontab rows whose hour is not a number or lies within 2 h of now
(its own filter), so it holds a few per cent fewer entries; both counts are printed.

Each contender runs each part in a fresh process (peak RSS is ru_maxrss):
- main: start-up (construct + first tick; ours takes the Redis lease there), idle ticks
  (stock: back to back, each with its `schedule_changed()` check; ours: ticks without
  housekeeping back to back, and ticks with it the way beat runs them, sleeping what the
  tick returns: its Redis part and, half a second later, its database part), then reload
  after one edit (`PeriodicTask.save()` of another interval: stock's next tick, which
  rebuilds; ours' `housekeeping()`), peak RSS at the end;
- dispatch: D rows made due (interval 10 min, last_run_at 605 s ago) just before
  construction; the time from the first tick to the D-th publish to Redis, counted with
  `before_task_publish` (stock sends one per tick; a time budget bounds its run);
- lateness: a real `celery -A project beat` on 10,000 schedules, 500 of them every 10 s
  with phases spread over the 10 s, for 60 s; messages are read back from Redis lists.
  Lateness is the publish time (the `queued_at` of the `beatkeeper` header) minus the
  slot: ours stamps it (`scheduled_for`); stock stamps none and sets last_run_at to the
  moment it sends, so its slot is its previous publish + 10 s (the first: last_run_at as
  loaded + 10 s). Only slots inside the window count.
`--rules` runs ours a second time with a third of the schedules under rules (`add_rules`:
jitter, H crontabs, business calendars skipping or moving) and prints it beside ours
without them (target: within 10 %).
Absolute times drift on a shared machine: read the ours/stock ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.common import ROOT, median, setup_django

STOCK_PATH = "django_celery_beat.schedulers:DatabaseScheduler"
OURS_PATH = "scheduler_app.beat:Scheduler"
CONTENDERS = ("stock", "ours")
RULED = "ours+rules"  # ours again, a third of the schedules with jitter, H or a calendar (`--rules`)
LATENESS_INTERVAL_ID = 202  # interval rows 201 (600 s, dispatch) and 202 (10 s, lateness) are the SQL's
DISPATCH_DUE = 2000
LATENESS_SIZE, LATENESS_EVERY = 10_000, 20  # every 20th schedule (500) runs every 10 s
LATENESS_PERIOD, LATENESS_WINDOW, LATENESS_LEAD = 10.0, 60.0, 20.0
CHILD_TIMEOUT = 600

RESET_SQL = """
TRUNCATE scheduler_app_schedulechange, scheduler_app_schedulepolicy, django_celery_beat_periodictask,
         django_celery_beat_intervalschedule, django_celery_beat_crontabschedule RESTART IDENTITY CASCADE
"""
INTERVALS_SQL = """
INSERT INTO django_celery_beat_intervalschedule (id, every, period)
SELECT g, CASE g % 4 WHEN 0 THEN 900 + 13 * g WHEN 1 THEN 15 + g WHEN 2 THEN 1 + g % 24 ELSE 1 + g % 7 END,
          CASE g % 4 WHEN 0 THEN 'seconds' WHEN 1 THEN 'minutes' WHEN 2 THEN 'hours' ELSE 'days' END
FROM generate_series(1, 200) AS g
UNION ALL SELECT 201, 600, 'seconds'
UNION ALL SELECT 202, 10, 'seconds'
"""
CRONTABS_SQL = """
INSERT INTO django_celery_beat_crontabschedule (id, minute, hour, day_of_month, month_of_year, day_of_week, timezone)
SELECT g, ((%(minute)s + 25 + g %% 30) %% 60)::text,
       CASE g %% 4 WHEN 0 THEN '*' WHEN 1 THEN '*/2' WHEN 2 THEN ((g * 7) %% 24)::text ELSE '9-17' END,
       '*', '*', CASE WHEN g %% 5 = 0 THEN '1-5' ELSE '*' END,
       (ARRAY['UTC', 'Europe/Berlin', 'America/New_York', 'Asia/Tokyo'])[1 + g %% 4]
FROM generate_series(1, 500) AS g
"""
TASKS_SQL = """
INSERT INTO django_celery_beat_periodictask
  (id, name, task, args, kwargs, headers, enabled, one_off, total_run_count, date_changed, description,
   last_run_at, interval_id, crontab_id)
SELECT g, 'bench-' || g, 'bench.plain', '[0]', '{}', '{}', true, false, 0, now(), '',
       now() - random() * interval '60 seconds',
       CASE WHEN g %% 10 < 7 THEN 1 + (g::bigint * 7919) %% 200 END,
       CASE WHEN g %% 10 >= 7 THEN 1 + (g::bigint * 104729) %% 500 END
FROM generate_series(1, %(size)s) AS g
"""
LATENESS_SQL = """
UPDATE django_celery_beat_periodictask
SET interval_id = 202, crontab_id = NULL,
    last_run_at = %(start)s - interval '10 seconds' + ((id / %(every)s) %% 500) * interval '20 milliseconds'
WHERE id %% %(every)s = 0
"""
DUE_SQL = """
UPDATE django_celery_beat_periodictask
SET interval_id = 201, crontab_id = NULL, last_run_at = now() - interval '605 seconds'
WHERE id %% %(step)s = 0
"""
# Stock misses the first change after start-up when this row did not exist before it (its
# `schedule_changed()` compares against None): any earlier edit creates it in real life.
CHANGED_SQL = """
INSERT INTO django_celery_beat_periodictasks (ident, last_update) VALUES (1, now())
ON CONFLICT (ident) DO UPDATE SET last_update = now()
"""
SEQUENCES = {
    "django_celery_beat_intervalschedule": 202,
    "django_celery_beat_crontabschedule": 500,
}

TARGETS: dict[str, tuple[str, Callable[[float, float], bool]]] = {  # metric -> (text, check(ours, stock) at 100k)
    "start-up s": ("<= stock/3", lambda ours, stock: ours <= stock / 3),
    "peak RSS MB": ("<= stock/2", lambda ours, stock: ours <= stock / 2),
    "idle tick ms": ("< 2 ms", lambda ours, stock: ours < 2),
    "idle tick ms (housekeeping)": ("< 2 ms", lambda ours, stock: ours < 2),
    "reload after edit ms": ("< 50 ms", lambda ours, stock: ours < 50),
    "dispatch tasks/s": ("> 1000/s", lambda ours, stock: ours > 1000),
}
ALWAYS = {"dispatch tasks/s"}  # targets that hold at any size; the others at 100,000
ROWS = (  # label, figure
    ("entries held", "main.entries"),
    ("start-up s", "main.startup_s"),
    ("  of which construct s", "main.construct_s"),
    ("peak RSS MB", "main.peak_rss_mb"),
    ("  RSS before start-up MB", "main.baseline_rss_mb"),
    ("idle tick ms", "main.idle_tick_ms"),
    ("idle tick ms (housekeeping)", "main.idle_tick_housekeeping_ms"),
    ("  its Redis part, median ms", "main.idle_tick_redis_part_ms"),
    ("  its database part, median ms", "main.idle_tick_database_part_ms"),
    ("  slowest housekeeping tick ms", "main.idle_tick_housekeeping_max_ms"),
    ("reload after edit ms", "main.reload_ms"),
    ("dispatch tasks/s", "dispatch.dispatch_rate"),
    ("  dispatch: sent", "dispatch.sent"),
    ("  dispatch: first publish s", "dispatch.first_publish_s"),
    ("  dispatch: steady tasks/s", "dispatch.steady_rate"),
    ("  dispatch: peak RSS MB", "dispatch.peak_rss_mb"),
)

LATENESS_ROWS = (  # label, figure
    ("messages due in the window", "messages"),
    ("  slots in the window at 10 s", "expected"),
    ("lateness p50 s", "p50_s"),
    ("lateness p99 s", "p99_s"),
    ("lateness max s", "max_s"),
    ("messages of other schedules", "unexpected"),
)

# --- the database and Redis ----------------------------------------------------------------------


def execute(sql: str, params: dict[str, Any] | None = None) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def populate(size: int, ruled: bool = False) -> None:
    """The mix of the module docstring: `size` enabled schedules, none due for 15 minutes
    (`ruled`: a third of them with rules, `add_rules`)."""
    execute(RESET_SQL)
    execute(INTERVALS_SQL)
    execute(CRONTABS_SQL, {"minute": dt.datetime.now(dt.UTC).minute})
    execute(TASKS_SQL, {"size": size})
    for table, top in {**SEQUENCES, "django_celery_beat_periodictask": size}.items():
        execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {top})")  # noqa: S608
    if ruled:
        add_rules(size)
    execute(CHANGED_SQL)
    execute("ANALYZE django_celery_beat_periodictask")


H_CRONTABS = 20  # crontab rows with H (ids 501-520)


def add_rules(size: int) -> None:
    """A third of the schedules (ids above 10: the reload edits 1-5) get rules, a third each:
    jitter (60-600 s), a crontab with H (minute `H(a-b)` 25-54 minutes ahead, hours `*`,
    `H(9-17)`, `H/2`, some Monday to Friday), or business calendars (DE-BY holidays with
    exclusion ranges; Monday to Friday in Berlin; 07:00-20:00 in New York), half skip, half
    move. Nothing comes due sooner than before (`due_rules` for the dispatch phase)."""
    from django_celery_beat.models import CrontabSchedule

    from scheduler_app.models import BusinessCalendar, CalendarExclusion, SchedulePolicy

    execute("TRUNCATE scheduler_app_businesscalendar RESTART IDENTITY CASCADE")
    minute = dt.datetime.now(dt.UTC).minute
    low, high = (minute + 25) % 60, (minute + 54) % 60
    field = f"H({low}-{high})" if low <= high else f"H({low}-59),H(0-{high})"
    for n in range(H_CRONTABS):
        CrontabSchedule.objects.create(
            id=501 + n, minute=field, hour=("*", "H(9-17)", "H/2", "*")[n % 4],
            day_of_week="1-5" if n % 5 == 0 else "*",
            timezone=("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo")[n % 4],
        )  # fmt: skip
    execute(f"SELECT setval(pg_get_serial_sequence('django_celery_beat_crontabschedule', 'id'), {500 + H_CRONTABS})")
    holidays = BusinessCalendar.objects.create(name="Bench DE-BY", timezone="Europe/Berlin", holiday_country="DE",
                                               holiday_subdivision="BY")  # fmt: skip
    today = dt.datetime.now(dt.UTC).date()
    CalendarExclusion.objects.bulk_create(
        CalendarExclusion(calendar=holidays, first_day=today + dt.timedelta(days=40 + 9 * n),
                          last_day=today + dt.timedelta(days=42 + 9 * n), label=f"freeze {n}") for n in range(20)
    )  # fmt: skip
    weekdays = BusinessCalendar.objects.create(name="Bench weekdays", timezone="Europe/Berlin",
                                               weekdays="mon,tue,wed,thu,fri")  # fmt: skip
    hours = BusinessCalendar.objects.create(name="Bench hours", timezone="America/New_York",
                                            day_starts=dt.time(7), day_ends=dt.time(20))  # fmt: skip
    ruled = [pk for pk in range(11, size + 1) if pk % 3 == 0]
    execute(
        "UPDATE django_celery_beat_periodictask SET crontab_id = 501 + id %% %(h)s, interval_id = NULL "
        "WHERE id > 10 AND id %% 9 = 3",
        {"h": H_CRONTABS},
    )
    SchedulePolicy.objects.bulk_create(
        (SchedulePolicy(periodic_task_id=pk, jitter=60 + pk % 541 if pk % 9 == 0 else None,
                        calendar_rule=("skip", "move")[pk % 2] if pk % 9 == 6 else "") for pk in ruled),
        batch_size=5000,
    )  # fmt: skip
    links = SchedulePolicy.calendars.through
    chosen = [(pk, calendar.pk) for pk in ruled if pk % 9 == 6
              for calendar in ((holidays,), (holidays, weekdays), (hours,))[pk % 3]]  # fmt: skip
    links.objects.bulk_create(
        (links(schedulepolicy_id=pk, businesscalendar_id=calendar) for pk, calendar in chosen), batch_size=5000
    )
    execute("TRUNCATE scheduler_app_schedulechange")  # written by the signals: not edits beat must read


def due_rules(step: int) -> None:
    """The dispatch phase's due rows keep their calendars that allow now (the holidays one)
    and no jitter: they are due at once, as the rows without rules."""
    execute("UPDATE scheduler_app_schedulepolicy SET jitter = NULL WHERE periodic_task_id %% %(step)s = 0",
            {"step": step})  # fmt: skip
    execute(
        "DELETE FROM scheduler_app_schedulepolicy_calendars WHERE schedulepolicy_id %% %(step)s = 0 "
        "AND businesscalendar_id <> (SELECT id FROM scheduler_app_businesscalendar WHERE name = 'Bench DE-BY')",
        {"step": step},
    )


def redis_client() -> Any:
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.REDIS_URL)


def clear_redis() -> None:
    """Our queues and beat keys, in the benchmark's own Redis database only."""
    client = redis_client()
    for pattern in ("celery*", "beatkeeper:*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)


def queued_messages() -> list[dict[str, Any]]:
    """Every message waiting in the Redis lists of the default queue (all priority steps)."""
    client = redis_client()
    messages = []
    for key in client.scan_iter(match="celery*", count=1000):
        if client.type(key) == b"list":
            messages += [json.loads(raw) for raw in client.lrange(key, 0, -1)]
    return messages


# --- a contender, in a child process ---------------------------------------------------------------


def scheduler_class(name: str) -> type[Any]:
    from celery.utils.imports import symbol_by_name

    found: type[Any] = symbol_by_name(STOCK_PATH if name == "stock" else OURS_PATH)  # RULED: ours
    return found


def publish_counter() -> list[float]:
    """perf_counter() of each publish, from celery's before_task_publish."""
    from celery.signals import before_task_publish

    published: list[float] = []

    def count(**kwargs: Any) -> None:
        published.append(time.perf_counter())

    before_task_publish.connect(count, weak=False)
    return published


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def entries_held(scheduler: Any) -> int:
    return len(scheduler.store.entries) if hasattr(scheduler, "store") else len(scheduler._schedule)


def construct(name: str) -> tuple[Any, dict[str, Any]]:
    from project.celery import app

    started = time.perf_counter()
    scheduler = scheduler_class(name)(app=app)
    return scheduler, {"construct_s": time.perf_counter() - started, "entries": entries_held(scheduler)}


def start_up(name: str) -> tuple[Any, dict[str, Any]]:
    """Construction until the first tick has returned."""
    scheduler, figures = construct(name)
    figures["startup_s"] = figures["construct_s"] + timed(scheduler.tick)
    if name != "stock":
        assert scheduler.lease.is_leader, "ours did not take the lease in its first tick"
    return scheduler, figures


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def idle_ticks_stock(scheduler: Any, count: int = 30, budget: float = 20.0) -> dict[str, float]:
    deadline = time.monotonic() + budget
    times: list[float] = []
    while len(times) < count and (len(times) < 3 or time.monotonic() < deadline):
        times.append(timed(scheduler.tick))
    return {"idle_tick_ms": median(times) * 1000, "idle_ticks": len(times)}


def idle_ticks_ours(scheduler: Any, plain_count: int = 2000, housekeeping_count: int = 20) -> dict[str, float]:
    """Ours spreads its once-a-second housekeeping over two ticks (Redis, then the database
    half a second later): a tick that ran either part counts as a housekeeping tick."""
    plain: list[float] = []
    housekeeping: dict[str, list[float]] = {"redis": [], "database": []}

    def one_tick() -> float:
        before = (scheduler._next_housekeeping, scheduler._next_database)
        started = time.perf_counter()
        pause = scheduler.tick()
        spent = time.perf_counter() - started
        if scheduler._next_housekeeping != before[0]:
            housekeeping["redis"].append(spent)
        elif scheduler._next_database != before[1]:
            housekeeping["database"].append(spent)
        else:
            plain.append(spent)
        return float(pause)

    for _ in range(plain_count):  # back to back: only a tick that crosses a deadline housekeeps
        one_tick()
    pause = 0.0
    while min(map(len, housekeeping.values())) < housekeeping_count:  # as beat runs: sleep what it asks
        time.sleep(pause)
        pause = one_tick()
    both = housekeeping["redis"] + housekeeping["database"]
    return {
        "idle_tick_ms": median(plain) * 1000,
        "idle_tick_housekeeping_ms": median(both) * 1000,
        "idle_tick_housekeeping_max_ms": max(both) * 1000,
        "idle_tick_redis_part_ms": median(housekeeping["redis"]) * 1000,
        "idle_tick_database_part_ms": median(housekeeping["database"]) * 1000,
        "idle_ticks": len(plain),
    }


def edit_one(pk: int) -> tuple[str, int]:
    """Move schedule `pk` to another (long) interval with `save()`, so the signals fire."""
    from django_celery_beat.models import PeriodicTask

    task = PeriodicTask.objects.get(pk=pk)
    task.interval_id = 1 if task.interval_id != 1 else 2
    task.save()
    return task.name, task.interval_id


def reload_after_edit(name: str, scheduler: Any, count: int = 5, budget: float = 90.0) -> dict[str, float]:
    deadline = time.monotonic() + budget
    times = []
    for pk in range(1, 1 + count):  # ids 1-5 are interval schedules (g % 10 < 7)
        task_name, interval_id = edit_one(pk)
        if name == "stock":
            times.append(timed(scheduler.tick))
            assert scheduler._schedule[task_name].model.interval_id == interval_id, "stock missed the edit"
        else:
            times.append(timed(scheduler.housekeeping))
            assert scheduler.store.entries[pk].table_key == ("interval", interval_id), "ours missed the edit"
        if len(times) >= 2 and time.monotonic() > deadline:
            break
    return {"reload_ms": median(times) * 1000, "reloads": len(times)}


def measure_main(name: str) -> dict[str, Any]:
    published = publish_counter()
    baseline = rss_mb()
    scheduler, figures = start_up(name)
    idle = idle_ticks_stock if name == "stock" else idle_ticks_ours
    figures.update(idle(scheduler))
    assert not published, f"{name} sent {len(published)} tasks while nothing was due"
    figures.update(reload_after_edit(name, scheduler))
    figures["peak_rss_mb"] = peak_rss_mb()
    figures["baseline_rss_mb"] = baseline
    scheduler.close()
    return figures


def measure_dispatch(name: str, size: int, due: int, budget: float) -> dict[str, Any]:
    execute(DUE_SQL, {"step": size // due})  # before start-up, without signals: both load it
    if name == RULED:
        due_rules(size // due)
    published = publish_counter()
    scheduler, figures = construct(name)
    started = time.perf_counter()
    deadline = time.monotonic() + budget
    pause = 0.0
    while len(published) < due and time.monotonic() < deadline:
        time.sleep(min(max(pause, 0.0), 0.1))
        pause = scheduler.tick()
    ended = time.perf_counter()
    sent = len(published)
    figures.update(
        sent=sent,
        dispatch_s=ended - started,
        dispatch_rate=sent / (ended - started),
        first_publish_s=published[0] - started if published else None,
        steady_rate=(sent - 1) / (published[-1] - published[0]) if sent > 1 else None,
        peak_rss_mb=peak_rss_mb(),
    )
    scheduler.close()
    return figures


def child(args: argparse.Namespace) -> dict[str, Any]:
    import bench.tasks  # noqa: F401  (registers bench.plain)

    if args.phase == "main":
        return measure_main(args.contender)
    return measure_dispatch(args.contender, args.size, DISPATCH_DUE, args.budget)


# --- the parent ----------------------------------------------------------------------------------


def run_child(env: dict[str, str], name: str, phase: str, size: int, budget: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.beat", "--contender", name, "--phase", phase]
    argv += ["--size", str(size), "--budget", str(budget)]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"{name} {phase} at {size} failed (exit {done.returncode})")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def measure_size(env: dict[str, str], size: int, budget: float, ruled: bool = False) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for phase in ("main", "dispatch"):
        for name in (*CONTENDERS, RULED) if ruled else CONTENDERS:
            populate(size, ruled=name == RULED)
            clear_redis()
            figures = run_child(env, name, phase, size, budget)
            clear_redis()
            print(f"  {size:>7,} {phase:<8} {name:<5} {json.dumps(figures)}", flush=True)
            results.setdefault(name, {}).update({f"{phase}.{key}": value for key, value in figures.items()})
    return results


def table_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, float | None, float | None]]:
    stock, ours = results["stock"], results["ours"]
    return [(label, stock.get(key), ours.get(key)) for label, key in ROWS]


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def print_rules_table(size: int, results: dict[str, dict[str, Any]]) -> None:
    """Ours with a third of the schedules under rules against ours without (target: within 10 %)."""
    plain, ruled = results["ours"], results[RULED]
    print(f"\nN = {size:,}, a third with jitter, H or calendars   (ratio = with rules/without; target within 10 %)")
    print(f"{'':<30}{'ours':>12}{'+rules':>12}{'ratio':>9}")
    for label, key in ROWS:
        before, after = plain.get(key), ruled.get(key)
        ratio = f"{after / before:.3f}" if before and after is not None else "-"
        print(f"{label:<30}{fmt(before):>12}{fmt(after):>12}{ratio:>9}")


def print_table(size: int, results: dict[str, dict[str, Any]]) -> None:
    if RULED in results:
        print_rules_table(size, results)
    print(f"\nN = {size:,}   (ratio = ours/stock)")
    print(f"{'':<30}{'stock':>12}{'ours':>12}{'ratio':>9}   target")
    for label, stock, ours in table_rows(results):
        ratio = f"{ours / stock:.3f}" if stock and ours is not None else "-"
        print(f"{label:<30}{fmt(stock):>12}{fmt(ours):>12}{ratio:>9}   {verdict(label, size, ours, stock)}")


def verdict(label: str, size: int, ours: float | None, stock: float | None) -> str:
    if label not in TARGETS:
        return ""
    text, check = TARGETS[label]
    if size < 100_000 and label not in ALWAYS:
        return f"({text} at 100,000)"
    if ours is None or (stock is None and "stock" in text):
        return f"{text}: no figure"
    return f"{text}: {'met' if check(ours, stock or 0.0) else 'MISSED'}"  # a check without stock ignores it


# --- lateness with a real beat -------------------------------------------------------------------------


def populate_lateness() -> tuple[dt.datetime, dict[str, dt.datetime]]:
    """10,000 schedules, 500 of them every 10 s from `start` on; their first due times."""
    from django_celery_beat.models import PeriodicTask

    populate(LATENESS_SIZE)
    start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=LATENESS_LEAD)
    execute(LATENESS_SQL, {"start": start, "every": LATENESS_EVERY})
    period = dt.timedelta(seconds=LATENESS_PERIOD)
    rows = PeriodicTask.objects.filter(interval_id=LATENESS_INTERVAL_ID).values_list("name", "last_run_at")
    return start, {name: last_run_at + period for name, last_run_at in rows}


def run_beat(env: dict[str, str], name: str, until: dt.datetime) -> None:
    argv = [sys.executable, "-m", "celery", "-A", "project", "beat", "--loglevel", "WARNING"]
    argv += ["--schedule", str(ROOT / "var" / "bench" / "celerybeat-schedule")]
    argv += ["--scheduler", STOCK_PATH] if name == "stock" else []
    log = ROOT / "var" / "bench" / f"beat-{name}.log"
    with log.open("w") as output:
        beat = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            while dt.datetime.now(dt.UTC) < until:
                if beat.poll() is not None:
                    raise SystemExit(f"the {name} beat stopped (exit {beat.returncode}); see {log}")
                time.sleep(0.5)
        finally:
            beat.send_signal(signal.SIGTERM)
            beat.wait(60)


def beat_messages() -> dict[str, list[dict[str, Any]]]:
    """The beat headers of the queued messages, by schedule, oldest first."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for message in queued_messages():
        headers = message.get("headers") or {}
        name = headers.get("periodic_task_name")
        if name:
            by_name.setdefault(name, []).append(headers.get("beatkeeper") or {})
    for stamps in by_name.values():
        stamps.sort(key=lambda stamp: stamp["queued_at"])
    return by_name


def lateness_ours(by_name: dict[str, list[dict[str, Any]]], window: tuple[dt.datetime, dt.datetime]) -> list[float]:
    late = []
    for stamps in by_name.values():
        for stamp in stamps:
            due = dt.datetime.fromisoformat(stamp["scheduled_for"])
            if window[0] <= due < window[1]:
                late.append((dt.datetime.fromisoformat(stamp["queued_at"]) - due).total_seconds())
    return late


def lateness_stock(
    by_name: dict[str, list[dict[str, Any]]], first_due: dict[str, dt.datetime], window: tuple[dt.datetime, dt.datetime]
) -> list[float]:
    """Stock sets last_run_at to the moment it sends: each next run is due 10 s after the
    previous publish, the first 10 s after last_run_at as loaded."""
    late = []
    for name, stamps in by_name.items():
        due = first_due[name]
        for stamp in stamps:
            queued = dt.datetime.fromisoformat(stamp["queued_at"])
            if window[0] <= due < window[1]:
                late.append((queued - due).total_seconds())
            due = queued + dt.timedelta(seconds=LATENESS_PERIOD)
    return late


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure_lateness(env: dict[str, str], name: str) -> dict[str, Any]:
    start, first_due = populate_lateness()
    clear_redis()
    window = (start, start + dt.timedelta(seconds=LATENESS_WINDOW))
    run_beat(env, name, until=window[1] + dt.timedelta(seconds=5))
    by_name = beat_messages()
    clear_redis()
    unexpected = sum(len(stamps) for key, stamps in by_name.items() if key not in first_due)
    by_name = {key: stamps for key, stamps in by_name.items() if key in first_due}
    late = lateness_ours(by_name, window) if name == "ours" else lateness_stock(by_name, first_due, window)
    if not late:
        return {"messages": 0, "unexpected": unexpected}
    return {
        "messages": len(late),
        "expected": len(first_due) * int(LATENESS_WINDOW / LATENESS_PERIOD),
        "p50_s": percentile(late, 0.50),
        "p99_s": percentile(late, 0.99),
        "max_s": max(late),
        "unexpected": unexpected,
    }


def print_lateness(results: dict[str, dict[str, Any]]) -> None:
    print(f"\nlateness, real beat, {LATENESS_SIZE:,} schedules, 500 every 10 s, {LATENESS_WINDOW:.0f} s window")
    print(f"{'':<36}{'stock':>10}{'ours':>10}{'ratio':>9}   target")
    for label, key in LATENESS_ROWS:
        stock, ours = results["stock"].get(key), results["ours"].get(key)
        ratio = f"{ours / stock:.3f}" if stock and ours is not None else "-"
        target = ""
        if key == "p99_s":
            target = "< 1 s: " + ("met" if ours is not None and ours < 1 else "MISSED")
        print(f"{label:<36}{fmt(stock):>10}{fmt(ours):>10}{ratio:>9}   {target}")


# --- entry point ----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--skip-lateness", action="store_true")
    parser.add_argument("--budget", type=float, default=90.0, help="seconds stock may spend dispatching")
    parser.add_argument("--rules", action="store_true", help="also ours with a third of the schedules under rules")
    parser.add_argument("--contender", choices=(*CONTENDERS, RULED), help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=["main", "dispatch"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/9")
    env = setup_django()
    if args.contender:
        print(json.dumps(child(args)))
        return
    from django.conf import settings
    from django.db import connection

    if connection.vendor != "postgresql":
        raise SystemExit("this benchmark measures PostgreSQL: set DATABASE_URL=postgres://...")
    print(f"database: {settings.DATABASES['default']['NAME']}, redis: {settings.REDIS_URL}", flush=True)
    tables = {size: measure_size(env, size, args.budget, args.rules) for size in args.sizes}
    lateness = {} if args.skip_lateness else {name: measure_lateness(env, name) for name in CONTENDERS}
    for size, results in tables.items():
        print_table(size, results)
    if lateness:
        print_lateness(lateness)


if __name__ == "__main__":
    main()
