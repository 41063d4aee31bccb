"""The change log written by the database itself: row triggers on every table beat reads.

Each inserted, deleted or changed row writes one `ScheduleChange` (its kind and the id beat
reloads by), whatever wrote it: `save()`, a `QuerySet.update()` of 10,000 rows (django-
celery-beat's admin actions), raw SQL, another application. An update that changes nothing
but beat's own columns of a schedule (`last_run_at`, `total_run_count`, `date_changed`,
written once a second) or nothing at all writes no row.

The triggers name no column of the row they watch: PostgreSQL compares the rows as JSON
minus beat's columns, so a later migration can alter or drop any column; SQLite lists the
columns of the models as they are now. `install()` is idempotent and runs after every
`migrate` (SQLite drops a table's triggers when a migration rebuilds the table), once
migration `0011_change_log_triggers` is applied; that migration's reverse drops them.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as django_apps
from django.db import NotSupportedError
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations.recorder import MigrationRecorder
from django_celery_beat.models import PeriodicTask

from scheduler_app.models import ScheduleChange

MIGRATION = ("scheduler_app", "0011_change_log_triggers")
BEATS_OWN = ("last_run_at", "total_run_count", "date_changed")  # a schedule's columns only beat writes
PREFIX = "beatkeeper_log"


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
    return [
        f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO {log} (kind, object_id, at) VALUES ('{kind}', OLD.{key}, clock_timestamp());
  ELSE
    INSERT INTO {log} (kind, object_id, at) VALUES ('{kind}', NEW.{key}, clock_timestamp());
  END IF;
  RETURN NULL;
END $$""",  # noqa: S608  (names from the models, no input)
        f"DROP TRIGGER IF EXISTS {PREFIX} ON {table}",
        f"CREATE TRIGGER {PREFIX} AFTER INSERT OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION {function}()",
        f"DROP TRIGGER IF EXISTS {PREFIX}_update ON {table}",
        f"CREATE TRIGGER {PREFIX}_update AFTER UPDATE ON {table} FOR EACH ROW WHEN ({changed}) "
        f"EXECUTE FUNCTION {function}()",
    ]


def sqlite(table: str, kind: str, key: str, columns: list[str], log: str) -> list[str]:
    now = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    changed = " OR ".join(f'OLD."{column}" IS NOT NEW."{column}"' for column in columns)
    statements = []
    for event, row, when in (("INSERT", "NEW", ""), ("DELETE", "OLD", ""), ("UPDATE", "NEW", f" WHEN {changed}")):
        name = f"{PREFIX}_{table}_{event.lower()}"
        statements += [
            f"DROP TRIGGER IF EXISTS {name}",
            f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW{when} BEGIN "  # noqa: S608  (names)
            f"INSERT INTO {log} (kind, object_id, at) VALUES ('{kind}', {row}.{key}, {now}); END",
        ]
    return statements


def statements(vendor: str, apps: Any = None) -> list[str]:
    log = ScheduleChange._meta.db_table
    found = []
    for model, kind, key in logged_tables(apps):
        table = model._meta.db_table
        watched_out = BEATS_OWN if table == PeriodicTask._meta.db_table else ()
        if vendor == "postgresql":
            found += postgresql(table, kind, key, watched_out, log)
        else:
            columns = [field.column for field in model._meta.concrete_fields if field.column not in watched_out]
            found += sqlite(table, kind, key, columns, log)
    return found


def install(connection: BaseDatabaseWrapper, apps: Any = None) -> None:
    if connection.vendor not in ("postgresql", "sqlite"):
        raise NotSupportedError(f"Beatkeeper's change log needs PostgreSQL or SQLite, not {connection.vendor}")
    with connection.cursor() as cursor:
        for statement in statements(connection.vendor, apps):
            cursor.execute(statement)


def uninstall(connection: BaseDatabaseWrapper, apps: Any = None) -> None:
    with connection.cursor() as cursor:
        for model, _, _ in logged_tables(apps):
            table = model._meta.db_table
            if connection.vendor == "postgresql":
                cursor.execute(f"DROP TRIGGER IF EXISTS {PREFIX} ON {table}")
                cursor.execute(f"DROP TRIGGER IF EXISTS {PREFIX}_update ON {table}")
                cursor.execute(f"DROP FUNCTION IF EXISTS {PREFIX}_{table}()")
            else:
                for event in ("insert", "delete", "update"):
                    cursor.execute(f"DROP TRIGGER IF EXISTS {PREFIX}_{table}_{event}")


def after_migrate(using: str = "default", **kwargs: Any) -> None:
    """post_migrate: put the triggers back where a migration dropped them (SQLite rebuilds a
    table to alter it), once migration 0011 is applied on this database."""
    from django.db import connections

    connection = connections[using]
    if connection.vendor not in ("postgresql", "sqlite"):
        return  # the migration refused it
    if MIGRATION in MigrationRecorder(connection).applied_migrations():
        install(connection)
