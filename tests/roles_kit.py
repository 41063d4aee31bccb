"""The people of the role tests: a staff user with no role, one in each seeded role (its group,
as `manage.py grant` leaves it) and a superuser; and who is at least whom."""

from __future__ import annotations

from django.contrib.auth.models import Group, User

from scheduler_app import roles

# Lowest first: each holds what the one before holds (the staff user with no role holds nothing).
PEOPLE = ("nobody", "viewer", "operator", "editor", "superuser")
ROLE_OF = {"viewer": roles.VIEWER, "operator": roles.OPERATOR, "editor": roles.EDITOR}


def person(who: str) -> User:
    """A fresh user of that kind. The groups are synced first: a transactional test's flush
    empties the tables the migration filled (`seed_default_tasks` does the same in production)."""
    roles.sync_roles()
    name = f"{who}-user"
    if who == "superuser":
        return User.objects.create_superuser(name, password="x")
    user = User.objects.create_user(name, password="x", is_staff=True)
    if who in ROLE_OF:
        user.groups.add(Group.objects.get(name=ROLE_OF[who]))
    return User.objects.get(pk=user.pk)  # permissions are cached per instance


def may(who: str, needed: str | None) -> bool:
    """Whether `who` is at least `needed` (None: nobody may, not even a superuser)."""
    return needed is not None and PEOPLE.index(who) >= PEOPLE.index(needed)
