"""Beat at 10,000, 100,000 and 1,000,000 schedules: our `scheduler_app.beat.Scheduler`
against django-celery-beat's stock `DatabaseScheduler`, side by side, on PostgreSQL and Redis.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/9 \\
        python -m bench.beat [--sizes 10000 100000 1000000] [--skip-lateness] [--rules]

Stock runs up to 100,000 (`STOCK_MAX`): beyond, it never finishes loading in the time
budget (django-celery-beat #445), so a larger size prints ours against stock's figure at
100,000 and ours' growth from 100,000. `python -m bench.generate` writes the same rows
for anyone to run a beat, the console or the API against.

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
from dataclasses import dataclass
from typing import Any

from bench.common import ROOT, median, setup_django

STOCK_PATH = "django_celery_beat.schedulers:DatabaseScheduler"
OURS_PATH = "scheduler_app.beat:Scheduler"
CONTENDERS = ("stock", "ours")
RULED = "ours+rules"  # ours again, a third of the schedules with jitter, H or a calendar (`--rules`)
LATENESS_INTERVAL_ID = 202  # interval rows 201 (600 s, dispatch) and 202 (10 s, lateness) are the SQL's
DISPATCH_DUE = 2000
LATENESS_SIZE, LATENESS_DUE = 10_000, 500  # defaults: 500 of 10,000 schedules run every 10 s
LATENESS_PERIOD, LATENESS_WINDOW = 10.0, 60.0
FAILOVER_WINDOW = 120.0  # `--failover`: the leader is SIGKILLed half-way
CHILD_TIMEOUT = 1800
STOCK_MAX = 100_000  # stock is measured up to this size
BULK_EDIT = 10_000  # rows changed by one bulk edit (`bulk_edit`)
STANDBY_DUE, STANDBY_RUN = 5_000, 20.0  # the standby phase: 5,000 due every 10 s, followed for 20 s

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
MILLION_TARGETS: dict[str, tuple[str, Callable[[float], bool]]] = {  # metric -> (text, check(ours)) at 1,000,000
    "start-up s": ("<= 15 s", lambda ours: ours <= 15),
    "peak RSS MB": ("<= 1,024 MB", lambda ours: ours <= 1024),
    "idle tick ms": ("< 2 ms", lambda ours: ours < 2),
    "idle tick ms (housekeeping)": ("< 2 ms", lambda ours: ours < 2),
    "reload after edit ms": ("< 50 ms", lambda ours: ours < 50),
    "bulk edit picked up s": ("<= 5 s", lambda ours: ours <= 5),
    "dispatch tasks/s": ("> 1000/s", lambda ours: ours > 1000),
}
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
    ("bulk edit picked up s", "main.bulk_edit_s"),
    ("  by a full reload (1 = yes)", "main.bulk_edit_full_reload"),
    ("standby takes over ms", "standby.takeover_ms"),
    ("  marks it read", "standby.takeover_marks"),
    ("  then its first send ms", "standby.first_send_ms"),
    ("  slots sent twice", "standby.sent_twice"),
    ("dispatch tasks/s", "dispatch.dispatch_rate"),
    ("  dispatch: sent", "dispatch.sent"),
    ("  dispatch: first publish s", "dispatch.first_publish_s"),
    ("  dispatch: steady tasks/s", "dispatch.steady_rate"),
    ("  dispatch: peak RSS MB", "dispatch.peak_rss_mb"),
)

LATENESS_ROWS = (  # label, figure
    ("messages due in the window", "messages"),
    ("  slots in the window at 10 s", "expected"),
    ("  slots sent twice", "sent_twice"),
    ("  slots never sent", "never_sent"),
    ("lateness p50 s", "p50_s"),
    ("lateness p99 s", "p99_s"),
    ("lateness max s", "max_s"),
    ("messages of other schedules", "unexpected"),
    ("database: transactions/s", "db_commits_per_s"),
    ("database: rows written/s", "db_rows_written_per_s"),
    ("database: rows read/s", "db_rows_read_per_s"),
    ("Redis: commands/s", "redis_commands_per_s"),
)
FAILOVER_ROWS = (  # label, figure
    ("leader SIGKILLed after s", "killed_after_s"),
    ("standby's first send after the kill s", "first_send_after_kill_s"),
    ("  target: 2 leases + 2 s", "target_s"),
    ("slots due in the window", "expected"),
    ("  sent", "messages"),
    ("  sent twice", "sent_twice"),
    ("  never sent", "never_sent"),
    ("lateness p99 s, slots due before the kill", "p99_before_s"),
    ("lateness max s, slots due during the takeover", "max_during_s"),
    ("lateness p99 s, slots due after the takeover", "p99_after_s"),
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


def published_headers() -> list[dict[str, Any]]:
    """The Beatkeeper header of each publish, from celery's before_task_publish."""
    from celery.signals import before_task_publish

    from scheduler_app.runs.context import HEADER

    published: list[dict[str, Any]] = []

    def keep(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
        published.append((headers or {}).get(HEADER) or {})

    before_task_publish.connect(keep, weak=False)
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


def bulk_edit(name: str, scheduler: Any, size: int) -> dict[str, float]:
    """One `QuerySet.update()` of BULK_EDIT rows (a tenth of a smaller size; the stock admin's bulk actions are one,
    followed by `PeriodicTasks.update_changed()`): the seconds until the scheduler holds
    every row as changed, and whether it reloaded everything to get there."""
    from django_celery_beat.models import PeriodicTask, PeriodicTasks

    pks = range(11, 11 + min(BULK_EDIT, size // 10))
    started = time.perf_counter()
    PeriodicTask.objects.filter(pk__in=pks).update(interval_id=2, crontab_id=None)
    PeriodicTasks.update_changed()
    before = scheduler.store.entries if name != "stock" else None
    deadline = time.monotonic() + CHILD_TIMEOUT / 3
    while time.monotonic() < deadline:
        if name == "stock":
            scheduler.tick()
            held = scheduler._schedule
            if all(held[f"bench-{pk}"].model.interval_id == 2 for pk in (pks[0], pks[-1])):
                break
        else:
            scheduler.housekeeping()
            if all(scheduler.store.entries[pk].table_key == ("interval", 2) for pk in pks):
                break
        time.sleep(0.05)
    else:
        raise SystemExit(f"{name} did not pick up the bulk edit")
    full = name == "stock" or scheduler.store.entries is not before  # stock always reloads everything
    return {"bulk_edit_s": time.perf_counter() - started, "bulk_edit_full_reload": float(full)}


def measure_main(name: str, size: int) -> dict[str, Any]:
    published = publish_counter()
    baseline = rss_mb()
    scheduler, figures = start_up(name)
    idle = idle_ticks_stock if name == "stock" else idle_ticks_ours
    figures.update(idle(scheduler))
    assert not published, f"{name} sent {len(published)} tasks while nothing was due"
    figures.update(reload_after_edit(name, scheduler))
    figures["peak_rss_mb"] = peak_rss_mb()  # before the bulk edit: stock's full reload holds two schedules at once
    figures.update(bulk_edit(name, scheduler, size))
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


STANDBY_SQL = """
UPDATE django_celery_beat_periodictask
SET interval_id = 202, crontab_id = NULL,
    last_run_at = now() - interval '8 seconds' + ((id / %(every)s) %% 500) * interval '20 milliseconds'
WHERE id %% %(every)s = 0
"""


def measure_standby(size: int) -> dict[str, Any]:
    """A leader and a standby in one process, ticking in turn for STANDBY_RUN seconds while
    STANDBY_DUE schedules come due every 10 s; then the leader dies (its lease runs out,
    nothing written): how long the standby takes to lead, how many marks it reads to do
    it, and how soon it sends the next due slot. A slot sent twice would be a message
    with a (schedule, slot) already seen."""
    headers = published_headers()
    heir, _ = construct("ours")  # the standby first, so that the leader is the second
    dead, _ = construct("ours")
    dead.tick()
    assert dead.lease.is_leader, "the second beat did not take the lease"
    heir.tick()
    assert not heir.lease.is_leader
    execute(STANDBY_SQL, {"every": max(1, size // STANDBY_DUE)})  # now both run: first due 2 s from now
    dead.housekeeping()  # both read the edits from the change log
    heir.housekeeping()
    deadline = time.monotonic() + STANDBY_RUN
    while time.monotonic() < deadline:
        pause = min(dead.tick(), heir.tick())
        time.sleep(min(max(pause, 0.0), 0.05))
    sent_before = len(headers)
    read: list[int] = []
    marks = heir.ledger.marks

    def counted(pks: Any) -> dict[int, dt.datetime]:
        found = list(pks)
        read.extend(found)
        result: dict[int, dt.datetime] = marks(found)
        return result

    heir.ledger.marks = counted
    redis_client().delete("beatkeeper:beat:leader")  # the leader died: its lease ran out
    dead.lease._lock = None
    started = time.perf_counter()
    heir.redis_housekeeping()
    took = time.perf_counter() - started
    assert heir.lease.is_leader, "the standby did not take over"
    while len(headers) == sent_before and time.perf_counter() - started < 30:
        time.sleep(min(max(heir.tick(), 0.0), 0.05))
    first = time.perf_counter() - started
    slots = [(h["schedule"], h.get("slot") or h["scheduled_for"]) for h in headers]
    figures = {"takeover_ms": took * 1000, "takeover_marks": len(read), "first_send_ms": first * 1000,
               "sent": len(slots), "sent_twice": len(slots) - len(set(slots))}  # fmt: skip
    heir.close()
    return figures


def child(args: argparse.Namespace) -> dict[str, Any]:
    import bench.tasks  # noqa: F401  (registers bench.plain)

    if args.phase == "main":
        return measure_main(args.contender, args.size)
    if args.phase == "standby":
        return measure_standby(args.size)
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
    contenders = CONTENDERS if size <= STOCK_MAX else ("ours",)
    for phase in ("main", "dispatch", "standby"):
        names = ("ours",) if phase == "standby" else (*contenders, RULED) if ruled else contenders
        for name in names:
            populate(size, ruled=name == RULED)
            clear_redis()
            figures = run_child(env, name, phase, size, budget)
            clear_redis()
            print(f"  {size:>7,} {phase:<8} {name:<5} {json.dumps(figures)}", flush=True)
            results.setdefault(name, {}).update({f"{phase}.{key}": value for key, value in figures.items()})
    return results


def table_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, float | None, float | None]]:
    stock, ours = results.get("stock", {}), results["ours"]
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


def print_table(size: int, results: dict[str, dict[str, Any]], at_stock_max: dict[str, dict[str, Any]]) -> None:
    if RULED in results:
        print_rules_table(size, results)
    if size > STOCK_MAX:
        print_large_table(size, results, at_stock_max)
        return
    print(f"\nN = {size:,}   (ratio = ours/stock)")
    print(f"{'':<30}{'stock':>12}{'ours':>12}{'ratio':>9}   target")
    for label, stock, ours in table_rows(results):
        ratio = f"{ours / stock:.3f}" if stock and ours is not None else "-"
        print(f"{label:<30}{fmt(stock):>12}{fmt(ours):>12}{ratio:>9}   {verdict(label, size, ours, stock)}")


def print_large_table(size: int, results: dict[str, dict[str, Any]], smaller: dict[str, dict[str, Any]]) -> None:
    """Beyond STOCK_MAX: ours, stock's figure at STOCK_MAX, and ours' growth from STOCK_MAX."""
    print(f"\nN = {size:,}   (stock at {STOCK_MAX:,}: it does not load {size:,} in the budget; "
          f"growth = ours at {size:,} / ours at {STOCK_MAX:,})")  # fmt: skip
    print(f"{'':<30}{'stock@100k':>12}{'ours':>12}{'growth':>9}   target")
    for label, key in ROWS:
        stock, ours = smaller.get("stock", {}).get(key), results["ours"].get(key)
        before = smaller.get("ours", {}).get(key)
        growth = f"{ours / before:.2f}" if before and ours is not None else "-"
        target = ""
        if label in MILLION_TARGETS:
            text, check = MILLION_TARGETS[label]
            target = f"{text}: " + ("no figure" if ours is None else "met" if check(ours) else "MISSED")
        print(f"{label:<30}{fmt(stock):>12}{fmt(ours):>12}{growth:>9}   {target}")


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


@dataclass(frozen=True)
class Load:
    """The lateness load: `due` of `size` schedules every 10 s, phases spread over the 10 s,
    watched for `window` seconds."""

    size: int
    due: int
    window: float

    @property
    def every(self) -> int:
        return max(1, self.size // self.due)

    @property
    def lead(self) -> float:
        """Seconds from the load to its first slot: a beat's start-up at this size, and more."""
        return 20.0 + 40.0 * self.size / 1_000_000


def populate_lateness(load: Load) -> tuple[dt.datetime, dict[str, list[dt.datetime]]]:
    """The schedules of `load`, and each due one's slots inside the window from `start`."""
    from django_celery_beat.models import PeriodicTask

    populate(load.size)
    start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=load.lead)
    execute(LATENESS_SQL, {"start": start, "every": load.every})
    execute("TRUNCATE scheduler_app_schedulechange RESTART IDENTITY")  # before any beat: a load, not a change
    period, end = dt.timedelta(seconds=LATENESS_PERIOD), start + dt.timedelta(seconds=load.window)
    slots = {}
    for name, last_run_at in PeriodicTask.objects.filter(interval_id=LATENESS_INTERVAL_ID).values_list(
        "name", "last_run_at"
    ):
        due, found = last_run_at + period, []
        while due < end:
            found.append(due)
            due += period
        slots[name] = found
    return start, slots


def start_beat(env: dict[str, str], name: str, label: str) -> tuple[subprocess.Popen[bytes], Any]:
    argv = [sys.executable, "-m", "celery", "-A", "project", "beat", "--loglevel", "WARNING"]
    argv += ["--schedule", str(ROOT / "var" / "bench" / f"celerybeat-schedule-{label}")]
    argv += ["--scheduler", STOCK_PATH] if name == "stock" else []
    log = (ROOT / "var" / "bench" / f"beat-{label}.log").open("w")
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log


def wait_until(moment: dt.datetime, beats: list[subprocess.Popen[bytes]]) -> None:
    while dt.datetime.now(dt.UTC) < moment:
        for beat in beats:
            if beat.poll() is not None:
                raise SystemExit(f"a beat stopped (exit {beat.returncode}); see var/bench/beat-*.log")
        time.sleep(0.2)


def stop_beats(beats: list[tuple[subprocess.Popen[bytes], Any]]) -> None:
    for beat, log in beats:
        if beat.poll() is None:
            beat.send_signal(signal.SIGTERM)
            beat.wait(60)
        log.close()


def beats_alive() -> list[dict[str, Any]]:
    from scheduler_app.beat import leader

    found: list[dict[str, Any]] = leader.heartbeat(redis_client())["beats"]
    return found


def wait_for_beats(count: int, beats: list[subprocess.Popen[bytes]], size: int, timeout: float = 300.0) -> None:
    """Until `count` beats say, in their heartbeat, that they hold every schedule."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        loaded = [beat for beat in beats_alive() if beat.get("schedules", 0) >= size]
        if len(loaded) >= count:
            return
        wait_until(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.5), beats)
    raise SystemExit(f"{count} beat(s) did not load {size:,} schedules within {timeout:.0f} s")


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


def sent_slots(
    by_name: dict[str, list[dict[str, Any]]], slots: dict[str, list[dt.datetime]]
) -> tuple[list[tuple[dt.datetime, float]], int, int]:
    """Ours stamps each message with its slot: the (slot, lateness) of each slot in the
    window, and how many slots were sent twice and never."""
    sent: dict[tuple[str, dt.datetime], list[float]] = {}
    for name, stamps in by_name.items():
        for stamp in stamps:
            due = dt.datetime.fromisoformat(stamp["scheduled_for"])
            late = (dt.datetime.fromisoformat(stamp["queued_at"]) - due).total_seconds()
            sent.setdefault((name, due), []).append(late)
    wanted = {(name, due) for name, dues in slots.items() for due in dues}
    found = [(due, min(lates)) for (name, due), lates in sent.items() if (name, due) in wanted]
    twice = sum(len(lates) - 1 for key, lates in sent.items() if key in wanted)
    return found, twice, len(wanted - set(sent))


Window = tuple[dt.datetime, dt.datetime]


def lateness_stock(
    by_name: dict[str, list[dict[str, Any]]], slots: dict[str, list[dt.datetime]], window: Window
) -> list[float]:
    """Stock sets last_run_at to the moment it sends: each next run is due 10 s after the
    previous publish, the first 10 s after last_run_at as loaded."""
    late = []
    for name, stamps in by_name.items():
        due = slots[name][0]
        for stamp in stamps:
            queued = dt.datetime.fromisoformat(stamp["queued_at"])
            if window[0] <= due < window[1]:
                late.append((queued - due).total_seconds())
            due = queued + dt.timedelta(seconds=LATENESS_PERIOD)
    return late


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def load_counters() -> dict[str, float]:
    """The bench database's transactions and rows, and Redis's commands, so far."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted, tup_returned + tup_fetched"
            " FROM pg_stat_database WHERE datname = current_database()"
        )
        commits, written, read = cursor.fetchone()
    commands = redis_client().info("stats")["total_commands_processed"]
    return {"db_commits": commits, "db_rows_written": written, "db_rows_read": read, "redis_commands": commands}


def per_second(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """PostgreSQL's statistics reach pg_stat_database a moment late: read `after` once they did."""
    return {f"{key}_per_s": (after[key] - before[key]) / seconds for key in before}


def measure_lateness(env: dict[str, str], name: str, load: Load) -> dict[str, Any]:
    start, slots = populate_lateness(load)
    clear_redis()
    window = (start, start + dt.timedelta(seconds=load.window))
    beats = [start_beat(env, name, name)]
    try:
        wait_until(start, [beat for beat, _ in beats])
        before = load_counters()
        wait_until(window[1], [beat for beat, _ in beats])
        time.sleep(1.0)  # PostgreSQL statistics reach pg_stat_database a moment late
        load_figures = per_second(before, load_counters(), load.window + 1.0)
        wait_until(window[1] + dt.timedelta(seconds=5), [beat for beat, _ in beats])
    finally:
        stop_beats(beats)
    by_name = beat_messages()
    clear_redis()
    unexpected = sum(len(stamps) for key, stamps in by_name.items() if key not in slots)
    by_name = {key: stamps for key, stamps in by_name.items() if key in slots}
    figures: dict[str, Any] = {"expected": sum(map(len, slots.values())), "unexpected": unexpected, **load_figures}
    if name == "ours":
        found, figures["sent_twice"], figures["never_sent"] = sent_slots(by_name, slots)
        late = [lateness for _, lateness in found]
    else:
        late = lateness_stock(by_name, slots, window)
    if late:
        figures.update(messages=len(late), p50_s=percentile(late, 0.50), p99_s=percentile(late, 0.99), max_s=max(late))
    return figures


def measure_failover(env: dict[str, str], load: Load) -> dict[str, Any]:
    """Two of our beats; the leader is SIGKILLed half-way through the window. The standby
    must send the next due slot within 2 lease periods + 2 s, and every slot once."""
    from django.conf import settings

    start, slots = populate_lateness(load)
    clear_redis()
    window = (start, start + dt.timedelta(seconds=load.window))
    beats = [start_beat(env, "ours", "leader")]
    try:
        wait_for_beats(1, [beats[0][0]], load.size)  # the first to load leads
        beats.append(start_beat(env, "ours", "standby"))
        wait_for_beats(2, [beat for beat, _ in beats], load.size)
        leaders = [beat for beat in beats_alive() if beat.get("role") == "leader"]
        assert len(leaders) == 1, f"not one leader: {leaders}"
        kill_at = start + dt.timedelta(seconds=load.window / 2)
        wait_until(kill_at, [beat for beat, _ in beats])
        beats[0][0].send_signal(signal.SIGKILL)
        killed = dt.datetime.now(dt.UTC)
        beats[0][0].wait(10)
        wait_until(window[1] + dt.timedelta(seconds=10), [beats[1][0]])
    finally:
        stop_beats(beats)
    by_name = {key: stamps for key, stamps in beat_messages().items() if key in slots}
    clear_redis()
    after_kill = [
        dt.datetime.fromisoformat(stamp["queued_at"])
        for stamps in by_name.values() for stamp in stamps
        if dt.datetime.fromisoformat(stamp["queued_at"]) > killed
    ]  # fmt: skip
    first = (min(after_kill) - killed).total_seconds() if after_kill else float("nan")
    target = 2 * float(settings.BEAT_LEASE_SECONDS) + 2
    found, twice, never = sent_slots(by_name, slots)
    took_over = killed + dt.timedelta(seconds=first if after_kill else target)
    return {
        "killed_after_s": (killed - start).total_seconds(),
        "first_send_after_kill_s": first,
        "target_s": target,
        "expected": sum(map(len, slots.values())),
        "messages": len(found),
        "sent_twice": twice,
        "never_sent": never,
        "p99_before_s": percentile([late for due, late in found if due < killed], 0.99),
        "max_during_s": max([late for due, late in found if killed <= due < took_over] or [float("nan")]),
        "p99_after_s": percentile([late for due, late in found if due >= took_over + dt.timedelta(seconds=1)], 0.99),
    }


def print_lateness(load: Load, results: dict[str, dict[str, Any]]) -> None:
    print(f"\nlateness, real beat, {load.size:,} schedules, {load.due:,} every 10 s, {load.window:.0f} s window")
    print(f"{'':<36}{'stock':>10}{'ours':>10}{'ratio':>9}   target")
    for label, key in LATENESS_ROWS:
        stock, ours = results.get("stock", {}).get(key), results["ours"].get(key)
        ratio = f"{ours / stock:.3f}" if stock and ours is not None else "-"
        target = ""
        if key == "p99_s":
            target = "< 1 s: " + ("met" if ours is not None and ours < 1 else "MISSED")
        if key in ("sent_twice", "never_sent"):
            target = "0: " + ("met" if ours == 0 else "MISSED")
        print(f"{label:<36}{fmt(stock):>10}{fmt(ours):>10}{ratio:>9}   {target}")


def print_failover(load: Load, figures: dict[str, Any]) -> None:
    print(f"\nfailover, two real beats, {load.size:,} schedules, {load.due:,} every 10 s, {load.window:.0f} s window")
    for label, key in FAILOVER_ROWS:
        value, target = figures.get(key), ""
        if key == "first_send_after_kill_s":
            target = f"<= {figures['target_s']:.0f} s: " + ("met" if value <= figures["target_s"] else "MISSED")
        if key in ("sent_twice", "never_sent"):
            target = "0: " + ("met" if value == 0 else "MISSED")
        print(f"{label:<48}{fmt(value):>10}   {target}")


# --- entry point ----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--skip-lateness", action="store_true")
    parser.add_argument("--lateness-size", type=int, default=LATENESS_SIZE, help="schedules of the lateness part")
    parser.add_argument("--lateness-due", type=int, default=LATENESS_DUE, help="of them, every 10 s")
    parser.add_argument("--lateness-window", type=float, default=LATENESS_WINDOW, help="seconds watched")
    parser.add_argument("--failover", action="store_true", help="also two of ours, the leader SIGKILLed")
    parser.add_argument("--budget", type=float, default=90.0, help="seconds stock may spend dispatching")
    parser.add_argument("--rules", action="store_true", help="also ours with a third of the schedules under rules")
    parser.add_argument("--contender", choices=(*CONTENDERS, RULED), help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=["main", "dispatch", "standby"], help=argparse.SUPPRESS)
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
    load = Load(args.lateness_size, args.lateness_due, args.lateness_window)
    contenders = CONTENDERS if load.size <= STOCK_MAX else ("ours",)
    lateness = {} if args.skip_lateness else {name: measure_lateness(env, name, load) for name in contenders}
    failover = measure_failover(env, Load(load.size, load.due, FAILOVER_WINDOW)) if args.failover else None
    for size, results in tables.items():
        print_table(size, results, tables.get(STOCK_MAX, {}))
    if lateness:
        print_lateness(load, lateness)
    if failover:
        print_failover(Load(load.size, load.due, FAILOVER_WINDOW), failover)


if __name__ == "__main__":
    main()
