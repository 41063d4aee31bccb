"""The run permissions the console's own pages (dead letters, failures) check, one place:
seeing needs "view run", retrying "Can retry a run", discarding or dismissing "Can revoke a
run" (a run set aside or failed is one that will not run again unless someone says so)."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

VIEW, RETRY, DISCARD = "scheduler_app.view_run", "scheduler_app.retry_run", "scheduler_app.revoke_run"
ACTIONS = {"retry": RETRY, "discard": DISCARD}


def allowed(request: HttpRequest, perm: str) -> None:
    if not request.user.has_perm(perm):
        raise PermissionDenied
