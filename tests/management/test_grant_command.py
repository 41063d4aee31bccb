"""`manage.py grant <user> <role>`: one role a user (its group, the others left), staff so they
can sign in, an audit entry; clear refusals naming what is allowed; --list."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import CommandError

from scheduler_app.models import AuditEntry

pytestmark = pytest.mark.django_db


def grant(*args: str) -> str:
    out = StringIO()
    call_command("grant", *args, stdout=out)
    return out.getvalue()


def roles_of(username: str) -> list[str]:
    user = User.objects.get(username=username)
    return sorted(user.groups.filter(name__in=["Viewer", "Operator", "Editor"]).values_list("name", flat=True))


def test_it_gives_a_user_a_role_lets_them_sign_in_and_records_it() -> None:
    User.objects.create_user("ada", password="x")
    assert grant("ada", "operator") == "ada is now Operator\n"
    ada = User.objects.get(username="ada")
    assert ada.is_staff and roles_of("ada") == ["Operator"]
    assert ada.has_perm("scheduler_app.operate_schedule") and ada.has_perm("scheduler_app.retry_run")
    assert not ada.has_perm("django_celery_beat.change_periodictask")
    assert not ada.has_perm("scheduler_app.purge_queue") and not ada.has_perm("scheduler_app.control_workers")
    entry = AuditEntry.objects.get(action="grant")
    assert (entry.via, entry.actor_name, entry.object_type, entry.object_id) == ("command", "system", "user",
                                                                                str(ada.pk))  # fmt: skip
    assert entry.changes == {"role": [None, "Operator"], "is_staff": [False, True]}


def test_it_moves_a_user_from_one_role_to_another_and_keeps_their_other_groups() -> None:
    grace = User.objects.create_user("grace", password="x", is_staff=True)
    grace.groups.add(Group.objects.create(name="on-call"))
    grant("grace", "Viewer")
    assert "grace is now Editor (was Viewer)" in grant("grace", "EDITOR")
    assert roles_of("grace") == ["Editor"]
    assert User.objects.get(username="grace").groups.filter(name="on-call").exists()
    moved = AuditEntry.objects.filter(action="grant").order_by("pk").last()
    assert moved is not None and moved.changes == {"role": ["Viewer", "Editor"]}  # already staff: only the role


def test_it_refuses_an_unknown_user_naming_them_and_changes_nothing() -> None:
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        grant("nobody", "viewer")
    assert not AuditEntry.objects.exists()


def test_it_refuses_an_unknown_role_naming_the_roles_allowed() -> None:
    User.objects.create_user("ada", password="x")
    with pytest.raises(CommandError, match=r"No role named 'admin'; the roles are Viewer, Operator, Editor\."):
        grant("ada", "admin")
    assert roles_of("ada") == [] and not User.objects.get(username="ada").is_staff
    with pytest.raises(CommandError, match=r"Give a username and a role \(Viewer, Operator, Editor\), or --list"):
        grant("ada")


def test_it_lists_who_holds_which_role_and_the_superusers() -> None:
    for name in ("bea", "al"):
        User.objects.create_user(name)
        grant(name, "viewer")
    User.objects.create_superuser("root", password="x")
    shown = grant("--list")
    assert "Viewer     al, bea\n" in shown and "Operator   nobody\n" in shown and "superuser  root\n" in shown


def test_it_remakes_a_deleted_roles_group_when_granting_it() -> None:
    Group.objects.filter(name="Editor").delete()
    User.objects.create_user("ada")
    grant("ada", "editor")
    assert User.objects.get(username="ada").has_perm("django_celery_beat.add_periodictask")


def test_granting_a_role_held_already_changes_nothing_and_records_nothing() -> None:
    User.objects.create_user("ada")
    grant("ada", "viewer")
    entries = AuditEntry.objects.count()
    assert grant("ada", "Viewer") == "ada is already Viewer; nothing changed\n"
    assert AuditEntry.objects.count() == entries and roles_of("ada") == ["Viewer"]


def test_list_with_a_user_or_a_role_is_refused_rather_than_granting_nothing_in_silence() -> None:
    User.objects.create_user("ada")
    with pytest.raises(CommandError, match="--list takes no user or role"):
        grant("ada", "viewer", "--list")
    assert roles_of("ada") == [] and not AuditEntry.objects.exists()


def test_granting_puts_a_roles_group_edited_by_hand_back_as_defined() -> None:
    Group.objects.get(name="Viewer").permissions.clear()
    User.objects.create_user("ada")
    grant("ada", "viewer")
    assert User.objects.get(username="ada").has_perm("scheduler_app.view_pool")
