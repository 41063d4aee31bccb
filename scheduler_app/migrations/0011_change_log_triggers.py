"""The change log written by the database itself (`scheduler_app.beat.triggers`): row
triggers on the schedules, their policies and calendar links, the shared schedule objects
and the business calendars. The signal handlers that wrote it before are gone, and so is
the `beat` kind (the triggers log beat's own disables as `task`)."""

from __future__ import annotations

from typing import Any

from django.db import migrations, models


def create(apps: Any, schema_editor: Any) -> None:
    """PostgreSQL: now. SQLite: after the whole migrate (post_migrate), since its triggers
    would stop a later migration in the same run from dropping a column they name."""
    from scheduler_app.beat import triggers

    if schema_editor.connection.vendor != "sqlite":
        triggers.install(schema_editor.connection, apps)  # refuses other databases


def drop(apps: Any, schema_editor: Any) -> None:
    from scheduler_app.beat import triggers

    triggers.uninstall(schema_editor.connection, apps)


class Migration(migrations.Migration):
    dependencies = [
        ("django_celery_beat", "0019_alter_periodictasks_options"),
        ("scheduler_app", "0010_schedule_versions"),
    ]

    operations = [
        migrations.AlterField(
            model_name="schedulechange",
            name="kind",
            field=models.CharField(
                choices=[
                    ("task", "task"), ("interval", "interval"), ("crontab", "crontab"), ("solar", "solar"),
                    ("clocked", "clocked"), ("calendar", "calendar"),
                ],
                max_length=8,
            ),
        ),  # fmt: skip
        migrations.RunPython(create, drop),
    ]
