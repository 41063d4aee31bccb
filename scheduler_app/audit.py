"""The audit log: who changed what, when, and through which door. The API writes one
entry per write (`AuditEntry`); the admin keeps Django's own history as well.

An entry is always written, whatever it is handed: what the doors refuse now (a NUL
character, JSON nested too deep) may sit in a schedule saved before, and deleting that
schedule must still be possible, so such parts are kept as `limits.storable` shows them."""

from __future__ import annotations

from typing import Any, cast

from django.db import models

from scheduler_app import limits
from scheduler_app.models import AuditEntry


def record(actor: Any, action: str, obj: models.Model | None, *, object_type: str = "", object_id: str = "",
           changes: dict[str, Any] | None = None, via: str = "api") -> AuditEntry:  # fmt: skip
    user = actor if getattr(actor, "is_authenticated", False) else None
    return AuditEntry.objects.create(
        actor=user,
        actor_name=user.get_username() if user else "system",
        via=via,
        action=action,
        # A registered model's name is always set (None only before the class is prepared).
        object_type=object_type or (cast(str, obj._meta.model_name) if obj is not None else ""),
        object_id=object_id or (str(obj.pk) if obj is not None else ""),
        object_repr=str(obj)[:200].replace(limits.NUL, limits.SHOWN_NUL) if obj is not None else "",
        changes=storable(changes or {}),
    )


def storable(changes: dict[str, Any]) -> Any:
    """The changes as they can be stored: a schedule's snapshot holds args, kwargs and
    headers at their limits, and a diff {field: [old, new]} nests two levels over them."""
    return limits.storable(changes, max_bytes=4 * limits.MAX_JSON_BYTES, max_depth=limits.MAX_DEPTH + 2)


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """{field: [old, new]} for each field that changed."""
    return {key: [before.get(key), value] for key, value in after.items() if before.get(key) != value}
