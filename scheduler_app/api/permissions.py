"""Who may call what: staff users with Django's model permissions, per action."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

SCHEDULE_PERMS = {
    "list": "django_celery_beat.view_periodictask",
    "retrieve": "django_celery_beat.view_periodictask",
    "next_runs": "django_celery_beat.view_periodictask",
    "incidents": "django_celery_beat.view_periodictask",
    "versions": "django_celery_beat.view_periodictask",
    "version": "django_celery_beat.view_periodictask",
    "restore": "django_celery_beat.change_periodictask",  # a restore is an edit: the Editor's
    "create": "django_celery_beat.add_periodictask",
    "update": "django_celery_beat.change_periodictask",
    "partial_update": "django_celery_beat.change_periodictask",
    # An Operator's (`scheduler_app.roles`): run now, pause and resume without changing the schedule.
    "pause": "scheduler_app.operate_schedule",
    "resume": "scheduler_app.operate_schedule",
    "run": "scheduler_app.operate_schedule",
    "destroy": "django_celery_beat.delete_periodictask",
}
RUN_PERMS = {
    "list": "scheduler_app.view_run",
    "retrieve": "scheduler_app.view_run",
    "retry": "scheduler_app.retry_run",
    "revoke": "scheduler_app.revoke_run",
}
# Dead letters are runs that never ran: seen with the runs, retried as a run is, and
# discarded (never to run) with the permission to revoke a run.
DEAD_LETTER_PERMS = {
    "list": "scheduler_app.view_run",
    "retrieve": "scheduler_app.view_run",
    "retry": "scheduler_app.retry_run",
    "discard": "scheduler_app.revoke_run",
}


class StaffWithModelPermission(BasePermission):
    """Authenticated (else 401), staff (else 403), and holding the action's permission
    (the view's `action_perms`; an action it does not name is refused)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_active and user.is_staff):
            return False
        needed = view.action_perms.get(getattr(view, "action", None) or "list")
        return bool(needed) and user.has_perm(needed)
