"""The audit log: who changed what, when, and through which door. One trail for the three
doors: the API (`via="api"`), the admin (`"admin"`, besides Django's own object history)
and the management commands that write (`"command"`) record an `AuditEntry` for each write,
a schedule's change as the same diff ({field: [old, new]} of `snapshot`) whichever door.

An entry is always written, whatever it is handed: what the doors refuse now (a NUL
character, JSON nested too deep) may sit in a schedule saved before, and deleting that
schedule must still be possible, so such parts are kept as `limits.storable` shows them."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, cast

from django.db import models, transaction
from django_celery_beat.models import PeriodicTask

from scheduler_app import limits, schedules
from scheduler_app.models import POLICY_FIELDS, AuditEntry, ScheduleVersion

DOORS = (("api", "API"), ("admin", "admin"), ("command", "command"))
# The writes to a schedule that keep a version of it (ScheduleVersion): every door records these.
VERSIONED = frozenset({"create", "update", "pause", "resume", "duplicate", "restore"})
POLICY_AUDITED = (*POLICY_FIELDS, "late_after", "alert_after_failures", "pause_after_failures")
MESSAGE_AUDITED = ("queue", "priority", "expires", "expire_seconds", "start_time", "one_off")


def record(actor: Any, action: str, obj: models.Model | None, *, object_type: str = "", object_id: str = "",
           changes: dict[str, Any] | None = None, via: str = "api") -> AuditEntry:  # fmt: skip
    user = actor if getattr(actor, "is_authenticated", False) else None
    with transaction.atomic():  # the entry and the version it keeps, together (the version locks the schedule)
        return _record(user, action, obj, object_type, object_id, changes, via)


def _record(user: Any, action: str, obj: models.Model | None, object_type: str, object_id: str,
            changes: dict[str, Any] | None, via: str) -> AuditEntry:  # fmt: skip
    entry = AuditEntry.objects.create(
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
    if isinstance(obj, PeriodicTask) and action in VERSIONED and obj.pk is not None:
        keep_version(obj, entry, restored_from=(changes or {}).get("restored_from"))
    return entry


def keep_version(task: PeriodicTask, entry: AuditEntry, *, restored_from: int | None = None) -> ScheduleVersion | None:
    """A version of the schedule as the write left it, numbered after the last one; none when
    nothing changed since (a pause of a paused schedule)."""
    locked = PeriodicTask.objects.select_for_update().filter(pk=task.pk).first()  # one number per write
    if locked is None:
        return None
    after = storable(snapshot(locked))
    last = ScheduleVersion.objects.filter(periodic_task=locked).order_by("-number").first()
    if last is None:
        last = _as_found(locked, entry, after)
    if last is not None and last.snapshot == after:
        return None
    return ScheduleVersion.objects.create(
        periodic_task=locked, schedule_name=locked.name[:200], number=last.number + 1 if last else 1,
        actor=entry.actor, actor_name=entry.actor_name, via=entry.via, action=entry.action, audit_entry=entry,
        restored_from=restored_from, snapshot=after, changes=diff(flat(last.snapshot), flat(after)) if last else {},
    )  # fmt: skip


def _as_found(task: PeriodicTask, entry: AuditEntry, after: dict[str, Any]) -> ScheduleVersion | None:
    """A schedule made before versions were kept, at its first recorded change: version 1 is
    the schedule as it was found (what the change's diff says it was), so the change itself
    shows what it changed and the schedule can be put back as it was."""
    if entry.action == "update" and "seeded" not in entry.changes:  # seeding's diff is of its own fields
        olds = {key: value[0] for key, value in entry.changes.items()
                if key in after and isinstance(value, list) and len(value) == 2
                and type(value[0]) is type(after[key])}  # fmt: skip
    elif entry.action in ("pause", "resume"):
        olds = {"enabled": entry.action == "pause"}
    else:
        return None
    before = {**after, **olds}
    if before == after:
        return None
    return ScheduleVersion.objects.create(
        periodic_task=task, schedule_name=str(before.get("name") or task.name)[:200], number=1, actor_name="system",
        via=entry.via, action="as found", snapshot=before,
    )  # fmt: skip


def flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A snapshot with its schedule and policy spread out: {"schedule.minute": "30", ...}."""
    spread: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("schedule", "policy") and not prefix and isinstance(value, dict):
            spread |= flat(value, f"{key}.")
        else:
            spread[prefix + key] = value
    return spread


def storable(changes: dict[str, Any]) -> Any:
    """The changes as they can be stored: a schedule's snapshot holds args, kwargs and
    headers at their limits, and a diff {field: [old, new]} nests two levels over them."""
    return limits.storable(changes, max_bytes=4 * limits.MAX_JSON_BYTES, max_depth=limits.MAX_DEPTH + 2)


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """{field: [old, new]} for each field that changed."""
    return {key: [before.get(key), value] for key, value in after.items() if before.get(key) != value}


# --- What an entry keeps of a schedule ------------------------------------------------------


def snapshot(task: PeriodicTask) -> dict[str, Any]:
    """A schedule's readable fields as JSON, as the database has them now (what changes by
    itself, the next run, health, last run and run count, is left out)."""
    task = PeriodicTask.objects.select_related("interval", "crontab", "solar", "clocked", "policy__owner").get(
        pk=task.pk
    )
    data: dict[str, Any] = {key: getattr(task, key) for key in ("name", "task", "description", "enabled")}
    data |= {key: _loaded(getattr(task, key)) for key in ("args", "kwargs", "headers")}
    data |= {key: _plain(getattr(task, key)) for key in MESSAGE_AUDITED}
    data["schedule"] = schedule_fields(task)
    data["policy"] = policy_fields(task)
    return data


def schedule_fields(task: PeriodicTask) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if task.crontab_id:
        c = task.crontab
        fields = {"kind": "crontab", "minute": c.minute, "hour": c.hour, "day_of_month": c.day_of_month,
                  "month_of_year": c.month_of_year, "day_of_week": c.day_of_week,
                  "timezone": str(c.timezone)}  # fmt: skip
    elif task.interval_id:
        fields = {"kind": "interval", "every": task.interval.every, "period": task.interval.period}
    elif task.clocked_id:
        fields = {"kind": "clocked", "clocked_time": _plain(task.clocked.clocked_time)}
    elif task.solar_id:
        s = task.solar
        fields = {"kind": "solar", "solar_event": s.event, "latitude": str(s.latitude), "longitude": str(s.longitude)}
    return {**fields, "words": schedules.shown_description(task), "zone": schedules.zone_of(task)}


def policy_fields(task: PeriodicTask) -> dict[str, Any]:
    policy = getattr(task, "policy", None)
    if policy is None:
        return {}
    fields = {key: _plain(getattr(policy, key)) for key in POLICY_AUDITED}
    calendars = sorted(policy.calendars.values_list("name", flat=True)) if policy.pk else []
    return {**fields, "owner": policy.owner.get_username() if policy.owner else None, "jitter": policy.jitter,
            "calendars": calendars, "calendar_rule": policy.calendar_rule, "pool": policy.pool_id}  # fmt: skip


def _loaded(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except (ValueError, RecursionError):  # stored before the doors limited depth
        return text


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.timedelta):
        return value.isoformat() if not isinstance(value, dt.timedelta) else value.total_seconds()
    return value
