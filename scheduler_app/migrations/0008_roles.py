"""The seeded roles (Viewer, Operator, Editor: `scheduler_app.roles`) and the permission that
lets an Operator run now, pause and resume a schedule without the permission to change it.

Whoever could run now, pause and resume before (with "change periodic task") keeps it: every
group and user holding "change periodic task" is given "Can run now, pause and resume a
schedule" too."""

from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.db import migrations

from scheduler_app import roles


def create_all_permissions(apps, schema_editor):
    """The permissions of every app as this migration's state has them (the documented
    pattern: they are otherwise only made after the whole migrate, by post_migrate)."""
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0, using=schema_editor.connection.alias)
        app_config.models_module = None


def keep_who_could_operate(apps, schema_editor):
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    User = apps.get_model(settings.AUTH_USER_MODEL)
    change = Permission.objects.get(content_type__app_label="django_celery_beat", codename="change_periodictask")
    operate = Permission.objects.get(content_type__app_label="scheduler_app", codename="operate_schedule")
    for group in Group.objects.filter(permissions=change):
        group.permissions.add(operate)
    for user in User.objects.filter(user_permissions=change):
        user.user_permissions.add(operate)


def keep_groups_named_as_roles(apps, schema_editor):
    """A group of the team's own that already has a role's name keeps its people and its
    permissions under another name ("Editor (before the roles)"): nobody's rights change
    behind their back, and the role's group is made afresh."""
    Group = apps.get_model("auth", "Group")
    for group in Group.objects.filter(name__in=roles.ROLES):
        group.name = f"{group.name} (before the roles)"
        group.save(update_fields=["name"])


def forwards(apps, schema_editor):
    create_all_permissions(apps, schema_editor)
    keep_who_could_operate(apps, schema_editor)
    keep_groups_named_as_roles(apps, schema_editor)
    roles.sync_roles(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("scheduler_app", "0007_calendars_jitter_backfill"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="schedulepolicy",
            options={
                "permissions": [("operate_schedule", "Can run now, pause and resume a schedule")],
                "verbose_name": "schedule policy",
                "verbose_name_plural": "schedule policies",
            },
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
