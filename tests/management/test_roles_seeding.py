"""The seeded roles' groups: made by the migration (scheduler_app/migrations/0008_roles.py) with
exactly their permissions, kept so by `seed_default_tasks`; and whoever could run now, pause and
resume before keeps it (the migration gives them the new permission)."""

from __future__ import annotations

import importlib
from io import StringIO

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, Permission, User
from django.core.management import call_command

from scheduler_app import roles

pytestmark = pytest.mark.django_db  # not transactional: the database as migrate left it
MIGRATION = importlib.import_module("scheduler_app.migrations.0008_roles")
EDITED = ["periodictask", "crontabschedule", "intervalschedule", "solarschedule", "clockedschedule",
          "schedulepolicy", "businesscalendar", "calendarexclusion", "pool"]  # fmt: skip
SEEN = [*EDITED, "run", "backfill", "auditentry"]


def held(role: str) -> set[str]:
    rows = Group.objects.get(name=role).permissions.values_list("content_type__app_label", "codename")
    return {f"{app}.{codename}" for app, codename in rows}


def codenames(perms: set[str]) -> set[str]:
    return {perm.split(".")[1] for perm in perms}


def test_the_migration_leaves_the_three_groups_with_exactly_their_permissions() -> None:
    viewer, operator, editor = held("Viewer"), held("Operator"), held("Editor")
    assert codenames(viewer) == {f"view_{model}" for model in SEEN}
    assert operator - viewer == {"scheduler_app.operate_schedule", "scheduler_app.retry_run",
                                 "scheduler_app.revoke_run", "scheduler_app.run_backfill"}  # fmt: skip
    assert viewer < operator < editor
    assert codenames(editor - operator) == {f"{action}_{model}" for model in EDITED
                                            for action in ("add", "change", "delete")}  # fmt: skip
    assert not {"scheduler_app.purge_queue", "scheduler_app.control_workers"} & editor


def test_seeding_puts_back_a_removed_permission_and_removes_an_added_one() -> None:
    operator = Group.objects.get(name="Operator")
    before = held("Operator")
    operator.permissions.remove(Permission.objects.get(codename="retry_run"))
    operator.permissions.add(Permission.objects.get(codename="purge_queue"))
    Group.objects.filter(name="Viewer").delete()
    out = StringIO()
    call_command("seed_default_tasks", stdout=out)
    said = out.getvalue()
    assert held("Operator") == before and held("Viewer") == roles.VIEWER_PERMS
    assert "role      Viewer: group created" in said
    assert "role      Operator: added scheduler_app.retry_run; removed scheduler_app.purge_queue" in said
    assert "role      Editor: as defined" in said


def test_a_dry_run_of_seeding_says_what_it_would_change_and_changes_nothing() -> None:
    Group.objects.get(name="Editor").permissions.remove(Permission.objects.get(codename="add_periodictask"))
    out = StringIO()
    call_command("seed_default_tasks", "--dry-run", stdout=out)
    assert "role      Editor: added django_celery_beat.add_periodictask" in out.getvalue()
    assert "django_celery_beat.add_periodictask" not in held("Editor")


def test_the_migration_gives_whoever_could_change_schedules_the_permission_to_run_pause_and_resume() -> None:
    change = Permission.objects.get(codename="change_periodictask")
    team = Group.objects.create(name="schedulers")
    team.permissions.add(change)
    ops, reader = User.objects.create_user("ops"), User.objects.create_user("reader")
    ops.user_permissions.add(change)
    MIGRATION.keep_who_could_operate(apps, None)  # with today's models: the same tables
    operate = "scheduler_app.operate_schedule"
    assert team.permissions.filter(codename="operate_schedule").exists()
    assert User.objects.get(pk=ops.pk).has_perm(operate) and not User.objects.get(pk=reader.pk).has_perm(operate)


def test_a_role_names_a_permission_that_does_not_exist_yet_and_it_is_skipped() -> None:
    ids = roles.permission_ids(frozenset({"scheduler_app.view_nothing_yet", "scheduler_app.view_run"}))
    assert list(ids) == ["scheduler_app.view_run"]
    assert [sync.changed for sync in roles.sync_roles()] == [False, False, False]


def test_the_migration_keeps_a_group_that_already_had_a_roles_name_and_its_members() -> None:
    """A team's own "Editor" group from before the roles: renamed, its people and permissions
    kept, so nobody's rights change behind their back; the role's group is made afresh."""
    Group.objects.filter(name__in=roles.ROLES).delete()
    own = Group.objects.create(name="Editor")
    own.permissions.add(Permission.objects.get(codename="purge_queue"))
    bob = User.objects.create_user("bob")
    bob.groups.add(own)
    MIGRATION.keep_groups_named_as_roles(apps, None)
    roles.sync_roles()
    kept = Group.objects.get(pk=own.pk)
    assert kept.name == "Editor (before the roles)"
    assert list(kept.permissions.values_list("codename", flat=True)) == ["purge_queue"]
    assert list(kept.user_set.all()) == [bob] and not Group.objects.get(name="Editor").user_set.exists()
    assert held("Editor") == roles.EDITOR_PERMS
