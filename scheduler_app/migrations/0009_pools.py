"""Concurrency pools (`scheduler_app.runs.pools`): the pools, a schedule's pool and what its
runs do when the pool is full; then the roles again, so Viewers see pools and Editors edit them."""

import django.core.validators
import django.db.models.deletion
import importlib

from django.db import migrations, models

from scheduler_app import roles

ROLES_MIGRATION = importlib.import_module("scheduler_app.migrations.0008_roles")


def roles_with_pools(apps, schema_editor):
    ROLES_MIGRATION.create_all_permissions(apps, schema_editor)
    roles.sync_roles(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("scheduler_app", "0008_roles"),
    ]

    operations = [
        migrations.CreateModel(
            name="Pool",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "name",
                    models.CharField(
                        help_text="Letters, digits, '_', '.' and '-'; it cannot change once made.",
                        max_length=100,
                        unique=True,
                        validators=[
                            django.core.validators.RegexValidator(
                                "^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                                "A pool's name is letters, digits, '_', '.' and '-', starting with a letter or digit (e.g. exports).",
                            )
                        ],
                    ),
                ),
                (
                    "size",
                    models.PositiveIntegerField(
                        help_text="Runs of the pool at once, 1 to 10000.",
                        validators=[
                            django.core.validators.MinValueValidator(1),
                            django.core.validators.MaxValueValidator(10000),
                        ],
                    ),
                ),
                (
                    "lease",
                    models.PositiveIntegerField(
                        default=60,
                        help_text="Seconds a slot outlives a run that stopped renewing it (its worker died); 3 to 86400. A live run renews its slot every third of this.",
                        validators=[
                            django.core.validators.MinValueValidator(3),
                            django.core.validators.MaxValueValidator(86400),
                        ],
                    ),
                ),
                (
                    "rate",
                    models.CharField(
                        blank=True,
                        help_text="Fleet-wide starts of the pool's runs, e.g. 60/m, 5/s, 100/h, 1000/d or 10/30s; empty: none.",
                        max_length=40,
                    ),
                ),
                ("description", models.CharField(blank=True, max_length=500)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={
                "ordering": ["name"],
            },
        ),
        migrations.AddField(
            model_name="schedulepolicy",
            name="pool_full",
            field=models.CharField(
                blank=True,
                choices=[("wait", "wait"), ("skip", "skip")],
                verbose_name="when the pool is full",
                help_text="The pool has no free slot: wait in line (the default) or skip the run.",
                max_length=8,
            ),
        ),
        migrations.AddField(
            model_name="schedulepolicy",
            name="pool",
            field=models.ForeignKey(
                blank=True,
                db_column="pool",
                help_text="The concurrency pool whose slot each run takes; empty: the task's own (if any).",
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="policies",
                to="scheduler_app.pool",
                to_field="name",
            ),
        ),
        migrations.RunPython(roles_with_pools, migrations.RunPython.noop),
    ]
