"""The seeded roles: three groups of Django permissions, each the one below it and more.

- Viewer: sees every page and list of the console (the Django admin) and reads the API; no action.
- Operator: the Viewer's, and runs a schedule now, pauses and resumes it ("Can run now, pause
  and resume a schedule", not "change"), retries and revokes runs (so retries and discards dead
  letters, retries and dismisses failures), starts and cancels backfills.
- Editor: the Operator's, and creates, edits and deletes schedules (django-celery-beat's
  periodic tasks and their crontab, interval, solar and clocked rows, the schedules' policies),
  business calendars with their dates, and concurrency pools.

Purging a queue and controlling workers are in no role: they stay with superusers and
whoever is given them one by one. Superusers hold every permission whatever their role.

A permission named here that does not exist (in a migration's historical state, a model made
by a later migration) is skipped; the migration that makes the model syncs the roles again.
`sync_roles` keeps the three groups exactly so: the migrations call it with their historical
models, `seed_default_tasks` with the real ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.apps import apps as global_apps
from django.db.models import Q

VIEWER, OPERATOR, EDITOR = "Viewer", "Operator", "Editor"

# (app label, model name) of what a Viewer sees and an Editor edits.
SCHEDULE_MODELS = (
    ("django_celery_beat", "periodictask"),
    ("django_celery_beat", "crontabschedule"),
    ("django_celery_beat", "intervalschedule"),
    ("django_celery_beat", "solarschedule"),
    ("django_celery_beat", "clockedschedule"),
    ("scheduler_app", "schedulepolicy"),
)
CALENDAR_MODELS = (("scheduler_app", "businesscalendar"), ("scheduler_app", "calendarexclusion"))
POOL_MODELS = (("scheduler_app", "pool"),)
EDITED = (*SCHEDULE_MODELS, *CALENDAR_MODELS, *POOL_MODELS)
SEEN = (*EDITED, ("scheduler_app", "run"), ("scheduler_app", "backfill"), ("scheduler_app", "auditentry"))

VIEWER_PERMS = frozenset(f"{app}.view_{model}" for app, model in SEEN)
OPERATOR_PERMS = VIEWER_PERMS | {
    "scheduler_app.operate_schedule",
    "scheduler_app.retry_run",
    "scheduler_app.revoke_run",
    "scheduler_app.run_backfill",
}
EDITOR_PERMS = OPERATOR_PERMS | {
    f"{app}.{action}_{model}" for app, model in EDITED for action in ("add", "change", "delete")
}
ROLES: dict[str, frozenset[str]] = {VIEWER: VIEWER_PERMS, OPERATOR: OPERATOR_PERMS, EDITOR: EDITOR_PERMS}
NEVER_IN_A_ROLE = frozenset({"scheduler_app.purge_queue", "scheduler_app.control_workers"})


@dataclass
class RoleSync:
    """What `sync_roles` did (or, in a dry run, would do) to one role's group."""

    role: str
    created: bool = False
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.created or bool(self.added or self.removed)


def role_named(given: str) -> str | None:
    """The role `given` names, in any case ("operator", "EDITOR"); None if none."""
    return next((role for role in ROLES if role.lower() == given.strip().lower()), None)


def permission_ids(perms: frozenset[str], apps: Any = global_apps) -> dict[str, int]:
    """{"app_label.codename": id} of those of `perms` that exist; the others are left out."""
    Permission = apps.get_model("auth", "Permission")
    pairs = [perm.split(".", 1) for perm in perms]
    wanted = Q()
    for app_label, codename in pairs:
        wanted |= Q(content_type__app_label=app_label, codename=codename)
    found = Permission.objects.filter(wanted).values_list("content_type__app_label", "codename", "pk")
    return {f"{app_label}.{codename}": pk for app_label, codename, pk in found}


def sync_roles(apps: Any = global_apps, *, dry_run: bool = False) -> list[RoleSync]:
    """Make each role's group hold exactly its permissions (those that exist): a missing group
    is created, a missing permission added, one added by hand removed. `apps` is a migration's
    historical registry, or the real one. Returns one `RoleSync` per role, lowest first."""
    Group = apps.get_model("auth", "Group")
    ids = permission_ids(frozenset().union(*ROLES.values()), apps)
    done = []
    for role, perms in ROLES.items():
        group = Group.objects.filter(name=role).first()
        wanted = {perm: ids[perm] for perm in perms if perm in ids}
        held = dict(_held(group)) if group is not None else {}
        sync = RoleSync(role, created=group is None, added=sorted(set(wanted) - set(held)),
                        removed=sorted(set(held) - set(wanted)))  # fmt: skip
        if not dry_run and sync.changed:
            group = group or Group.objects.create(name=role)
            group.permissions.set(wanted.values())
        done.append(sync)
    return done


def _held(group: Any) -> list[tuple[str, int]]:
    rows = group.permissions.values_list("content_type__app_label", "codename", "pk")
    return [(f"{app_label}.{codename}", pk) for app_label, codename, pk in rows]


def group_of(role: str) -> Any:
    """The role's group, holding exactly its permissions (made or put right first)."""
    sync_roles()
    return global_apps.get_model("auth", "Group").objects.get(name=role)
