from __future__ import annotations

from django.db import migrations


class Migration(migrations.Migration):
    """The Workers and Queues pages' permissions: remote control of workers, purge of a queue."""

    dependencies = [
        ("scheduler_app", "0005_api_alerts"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="run",
            options={
                "permissions": [
                    ("retry_run", "Can retry a run"),
                    ("revoke_run", "Can revoke a run"),
                    ("control_workers", "Can control workers"),
                    ("purge_queue", "Can purge a queue"),
                ],
                "verbose_name": "run",
            },
        ),
    ]
