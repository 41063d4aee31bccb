"""The change log written by the database itself: row triggers on every table beat reads.

Each inserted, deleted or changed row writes one `ScheduleChange` (its kind and the id beat
reloads by; an update that moves a row to another id logs both), whatever wrote it:
`save()`, a `QuerySet.update()` of 10,000 rows (django-celery-beat's admin actions), raw
SQL, another application. An update that changes nothing but beat's own columns of a
schedule (`last_run_at`, `total_run_count`, written once a second), or nothing at all,
writes no row. `TRUNCATE` is not logged: restart beat after one.

- PostgreSQL: the triggers name no column (the rows are compared as jsonb minus beat's
  columns), so a later migration may alter or drop any column; migration 0011 installs them,
  and after a `migrate` they are installed again only if one is missing, in one transaction
  (`CREATE OR REPLACE`: no moment without them, no lock taken when nothing is missing).
- SQLite names the columns, refuses to drop a column a trigger names and drops a table's
  triggers when it rebuilds the table; so they are dropped before every `migrate`
  (pre_migrate) and made again, from the models as migrated, after it (post_migrate), once
  migration 0011 is applied. Edits made while a migrate runs are not logged: restart beat
  after migrating an embedded (SQLite) installation.
`missing()` lists what is not there; beat refuses to start without them.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.apps import apps as django_apps
from django.core.exceptions import ImproperlyConfigured
from django.db import NotSupportedError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations.recorder import MigrationRecorder

from scheduler_app.models import ScheduleChange

MIGRATION = ("scheduler_app", "0011_change_log_triggers")
SCHEDULES = "django_celery_beat_periodictask"
BEATS_OWN = ("last_run_at", "total_run_count")  # a schedule's columns only beat writes
PREFIX = "beatkeeper_log"
VENDORS = ("postgresql", "sqlite")


def logged_tables(apps: Any = None) -> list[tuple[Any, str, str]]:
    """(model, the kind logged, the column holding the id beat reloads by); `apps`: a
    migration's models as they were then (default: as they are now)."""

    def model(label: str) -> Any:
        return apps.get_model(label) if apps is not None else django_apps.get_model(label)

    policy = model("scheduler_app.SchedulePolicy")
    return [
        (model("django_celery_beat.PeriodicTask"), ScheduleChange.TASK, "id"),
        (policy, ScheduleChange.TASK, "periodic_task_id"),  # its pk is the schedule's
        (policy._meta.get_field("calendars").remote_field.through, ScheduleChange.TASK, "schedulepolicy_id"),
        (model("django_celery_beat.IntervalSchedule"), ScheduleChange.INTERVAL, "id"),
        (model("django_celery_beat.CrontabSchedule"), ScheduleChange.CRONTAB, "id"),
        (model("django_celery_beat.SolarSchedule"), ScheduleChange.SOLAR, "id"),
        (model("django_celery_beat.ClockedSchedule"), ScheduleChange.CLOCKED, "id"),
        (model("scheduler_app.BusinessCalendar"), ScheduleChange.CALENDAR, "id"),
        (model("scheduler_app.CalendarExclusion"), ScheduleChange.CALENDAR, "calendar_id"),
    ]


def postgresql(table: str, kind: str, key: str, watched_out: tuple[str, ...], log: str) -> list[str]:
    function = f"{PREFIX}_{table}"
    out = " - '{" + ",".join(watched_out) + "}'::text[]" if watched_out else ""
    changed = f"(to_jsonb(OLD){out}) IS DISTINCT FROM (to_jsonb(NEW){out})"  # jsonb: every column type compares
    insert = f"INSERT INTO {log} (kind, object_id, at) VALUES ('{kind}', ROW.{key}, clock_timestamp());"  # noqa: S608
    return [
        f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    {insert.replace("ROW", "OLD")}
  ELSE
    {insert.replace("ROW", "NEW")}
  END IF;
  IF TG_OP = 'UPDATE' AND OLD.{key} IS DISTINCT FROM NEW.{key} THEN
    {insert.replace("ROW", "OLD")}
  END IF;
  RETURN NULL;
END $$""",  # noqa: S608  (names from the models, no input)
        f"CREATE OR REPLACE TRIGGER {PREFIX} AFTER INSERT OR DELETE ON {table} FOR EACH ROW "
        f"EXECUTE FUNCTION {function}()",
        f"CREATE OR REPLACE TRIGGER {PREFIX}_update AFTER UPDATE ON {table} FOR EACH ROW WHEN ({changed}) "
        f"EXECUTE FUNCTION {function}()",
    ]


def sqlite(table: str, kind: str, key: str, columns: list[str], log: str) -> list[str]:
    now = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    changed = " OR ".join(f'OLD."{column}" IS NOT NEW."{column}"' for column in columns)
    insert = f"INSERT INTO {log} (kind, object_id, at) SELECT '{kind}', ROW.{key}, {now}"  # noqa: S608  (names)
    new, old = insert.replace("ROW", "NEW"), insert.replace("ROW", "OLD")
    body = {"INSERT": new, "DELETE": old, "UPDATE": f"{new}; {old} WHERE OLD.{key} IS NOT NEW.{key}"}
    statements = []
    for event, statement in body.items():
        name = f"{PREFIX}_{table}_{event.lower()}"
        when = f" WHEN {changed}" if event == "UPDATE" else ""
        statements += [
            f"DROP TRIGGER IF EXISTS {name}",
            f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW{when} BEGIN {statement}; END",
        ]
    return statements


def statements(vendor: str, apps: Any = None) -> list[str]:
    log = ScheduleChange._meta.db_table
    found = []
    for model, kind, key in logged_tables(apps):
        table = model._meta.db_table
        watched_out = BEATS_OWN if table == SCHEDULES else ()
        if vendor == "postgresql":
            found += postgresql(table, kind, key, watched_out, log)
        else:
            columns = [field.column for field in model._meta.concrete_fields if field.column not in watched_out]
            found += sqlite(table, kind, key, columns, log)
    return found


def expected(vendor: str, apps: Any = None) -> set[tuple[str, str]]:
    """(table, trigger name) of every trigger the change log needs."""
    tables = [model._meta.db_table for model, _, _ in logged_tables(apps)]
    if vendor == "postgresql":
        return {(table, name) for table in tables for name in (PREFIX, f"{PREFIX}_update")}
    return {(table, f"{PREFIX}_{table}_{event}") for table in tables for event in ("insert", "delete", "update")}


def fingerprint(apps: Any = None) -> str:
    """Of the PostgreSQL definitions: a function whose comment differs is out of date."""
    return f"{PREFIX} " + hashlib.sha256("\n".join(statements("postgresql", apps)).encode()).hexdigest()[:16]


def missing(connection: BaseDatabaseWrapper, apps: Any = None) -> set[tuple[str, str]]:
    """The triggers the change log needs that the database does not have, enabled and as
    defined here (PostgreSQL: a function out of date counts its triggers as missing)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "JOIN pg_proc p ON p.oid = t.tgfoid WHERE t.tgname LIKE %s AND pg_table_is_visible(c.oid) "
                "AND t.tgenabled <> 'D' AND obj_description(p.oid, 'pg_proc') = %s",
                [f"{PREFIX}%", fingerprint(apps)],
            )
        else:
            cursor.execute("SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger' AND name LIKE %s",
                           [f"{PREFIX}%"])  # fmt: skip
        present = {(table, name) for table, name in cursor.fetchall()}
    return expected(connection.vendor, apps) - present


def install(connection: BaseDatabaseWrapper, apps: Any = None) -> None:
    if connection.vendor not in VENDORS:
        raise NotSupportedError(f"Beatkeeper's change log needs PostgreSQL or SQLite, not {connection.vendor}")
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        for statement in statements(connection.vendor, apps):
            cursor.execute(statement)
        if connection.vendor == "postgresql":
            for model, _, _ in logged_tables(apps):
                cursor.execute(f"COMMENT ON FUNCTION {PREFIX}_{model._meta.db_table}() IS %s", [fingerprint(apps)])


def uninstall(connection: BaseDatabaseWrapper, apps: Any = None) -> None:
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        for model, _, _ in logged_tables(apps):
            table = model._meta.db_table
            if connection.vendor == "postgresql":
                cursor.execute(f"DROP TRIGGER IF EXISTS {PREFIX} ON {table}")
                cursor.execute(f"DROP TRIGGER IF EXISTS {PREFIX}_update ON {table}")
                cursor.execute(f"DROP FUNCTION IF EXISTS {PREFIX}_{table}()")
            else:
                for event in ("insert", "delete", "update"):
                    cursor.execute(f"DROP TRIGGER IF EXISTS {PREFIX}_{table}_{event}")


def applied(connection: BaseDatabaseWrapper) -> bool:
    recorder = MigrationRecorder(connection)
    return recorder.has_table() and MIGRATION in recorder.applied_migrations()


def before_migrate(using: str = "default", **kwargs: Any) -> None:
    """pre_migrate, SQLite: off while migrations run (it would refuse to drop a column a
    trigger names, and a rebuilt table loses them anyway); post_migrate makes them again."""
    connection = connections[using]
    if connection.vendor == "sqlite" and kwargs.get("plan") and applied(connection):  # (nothing to apply: kept)
        uninstall(connection, kwargs.get("apps"))


def after_migrate(using: str = "default", **kwargs: Any) -> None:
    """post_migrate: the triggers, from the models as migrated, where any is missing, once
    migration 0011 is applied on this database."""
    connection = connections[using]
    if connection.vendor not in VENDORS or not applied(connection):
        return  # another database: the migration refused it
    apps = kwargs.get("apps")
    if missing(connection, apps):
        install(connection, apps)


def require(connection: BaseDatabaseWrapper) -> None:
    """Beat's start: without its triggers it would miss every edit."""
    if connection.vendor in VENDORS and (gone := missing(connection)):
        names = ", ".join(sorted(name for _, name in gone))
        raise ImproperlyConfigured(
            f"the schedule change log's triggers are missing ({names}): run `manage.py migrate`, "
            "which puts them back (or apply scheduler_app's migration 0011_change_log_triggers)"
        )
