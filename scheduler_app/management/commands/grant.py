from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from scheduler_app import audit, roles

ALLOWED = ", ".join(roles.ROLES)


class Command(BaseCommand):
    help = (
        f"Give a user one of the roles ({ALLOWED}; any case): puts them in that role's group and "
        "out of the other two (a user holds one role), and lets them sign in to the console "
        "(is_staff). Recorded in the audit log. --list shows who holds which role. Purging queues and "
        "controlling workers are in no role: superusers, or a permission given by hand."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", nargs="?", help="The user's username.")
        parser.add_argument("role", nargs="?", help=f"One of {ALLOWED}.")
        parser.add_argument(
            "--list", action="store_true", dest="show", help="Show who holds which role, and the superusers."
        )

    def handle(self, *args: Any, username: str | None, role: str | None, show: bool, **options: Any) -> None:
        if show:
            if username or role:
                raise CommandError("--list takes no user or role: give either --list, or a username and a role.")
            self.show_roles()
            return
        if not username or not role:
            raise CommandError(f"Give a username and a role ({ALLOWED}), or --list.")
        named = roles.role_named(role)
        if named is None:
            raise CommandError(f"No role named {role!r}; the roles are {ALLOWED}.")
        with transaction.atomic():
            user, before = self.grant(username, named)
        if before == named:
            self.stdout.write(f"{user.get_username()} is already {named}; nothing changed")
        else:
            self.stdout.write(f"{user.get_username()} is now {named}" + (f" (was {before})" if before else ""))
        if user.is_superuser:
            self.stdout.write("note: a superuser holds every permission, whatever the role")
        if not user.is_active:
            self.stdout.write("note: the user is inactive and cannot sign in until made active")

    def grant(self, username: str, role: str) -> tuple[Any, str]:
        """Puts the user in the role's group only, staff; returns the user and the roles held before."""
        User = get_user_model()
        user = User.objects.select_for_update().filter(**{User.USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"No user named {username!r}; create one first (createsuperuser, or the console).")
        held = list(user.groups.filter(name__in=roles.ROLES).values_list("name", flat=True))
        before = ", ".join(sorted(held, key=list(roles.ROLES).index))
        if before == role and user.is_staff:
            roles.sync_roles()  # the role's group as defined, whatever else
            return user, before
        user.groups.remove(*user.groups.filter(name__in=roles.ROLES).exclude(name=role))
        user.groups.add(roles.group_of(role))
        was_staff = user.is_staff
        if not was_staff:
            user.is_staff = True
            user.save(update_fields=["is_staff"])
        changes: dict[str, Any] = {"role": [before or None, role]}
        if not was_staff:
            changes["is_staff"] = [False, True]
        audit.record(None, "grant", user, object_type="user", changes=changes, via="command")
        return user, before

    def show_roles(self) -> None:
        User = get_user_model()
        for role in roles.ROLES:
            names = User.objects.filter(groups__name=role).order_by(User.USERNAME_FIELD)
            shown = ", ".join(user.get_username() for user in names) or "nobody"
            self.stdout.write(f"{role:<10} {shown}")
        superusers = User.objects.filter(is_superuser=True).order_by(User.USERNAME_FIELD)
        self.stdout.write(f"{'superuser':<10} {', '.join(u.get_username() for u in superusers) or 'nobody'}")
