"""Schedule versions: read, compare and restore.

Every write to a schedule that the audit trail records (created, changed, paused, resumed,
duplicated, restored, through the API, the admin or a command) also keeps a version: the
whole schedule and its policy as the database has it after the write (`audit.snapshot`), who,
when, through which door, and the fields that changed since the version before (`audit.record`
writes it, so no door can forget to). This module is what the doors do with the versions.

A restore puts a version's schedule and policy back through the same checks as an edit: the
schedule form (a registered task, a name no other schedule has, a valid schedule), the
policy's model checks and its rules' checks (jitter, calendars). A calendar, a pool or an
owner that no longer exists refuses the restore, naming it. The restore is a write like any
other: a new version, with `restored_from`, and an audit entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django_celery_beat.models import PeriodicTask

from scheduler_app import audit, forms, services
from scheduler_app.models import BusinessCalendar, Pool, ScheduleVersion

TOP_FIELDS = ("name", "task", "description", "enabled", *audit.MESSAGE_AUDITED)
SCHEDULE_FORM_NAMES = {"timezone": "cron_timezone"}
SCHEDULE_SHOWN = ("words", "zone")  # what the snapshot says of the schedule, not its fields


class RestoreRefused(ValueError):
    """A version that cannot be put back as it stands; the message says why and what to do."""


def of(task: PeriodicTask) -> list[ScheduleVersion]:
    """The schedule's versions, newest first."""
    return list(ScheduleVersion.objects.filter(periodic_task=task).order_by("-number"))


def get(task: PeriodicTask, number: int) -> ScheduleVersion | None:
    return ScheduleVersion.objects.filter(periodic_task=task, number=number).first()


@dataclass(frozen=True)
class Difference:
    field: str  # "schedule.minute", "policy.max_retries", "args"
    then: Any
    now: Any


def compare(version: ScheduleVersion, task: PeriodicTask) -> list[Difference]:
    """Each field whose value in the version differs from the schedule's today."""
    then, now = audit.flat(version.snapshot), audit.flat(audit.snapshot(task))
    fields = sorted(set(then) | set(now))
    return [Difference(field, then.get(field), now.get(field)) for field in fields if then.get(field) != now.get(field)]


def shown(value: Any) -> str:
    """A snapshot's value as a person reads it (JSON for lists and objects)."""
    if value is None or value == "":
        return "–"
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list | bool) else str(value)


def restore(task: PeriodicTask, version: ScheduleVersion, *, by: Any, via: str) -> PeriodicTask:
    """Put the version's schedule and policy back; raises RestoreRefused saying why not.
    Atomic: on a refusal nothing is written."""
    wanted = version.snapshot
    if not isinstance(wanted.get("schedule"), dict) or not isinstance(wanted.get("policy", {}), dict):
        raise RestoreRefused(f"Version {version.number} does not hold the schedule's fields (it was kept before "
                             "they were recorded whole); restore a later version, or edit the schedule.")  # fmt: skip
    with transaction.atomic():
        task = PeriodicTask.objects.select_for_update().get(pk=task.pk)
        form = forms.ScheduleForm(form_data(wanted), instance=task)
        form.check_queue = False  # the queue was accepted when the version was made
        if not form.is_valid():
            raise RestoreRefused(f"Version {version.number} cannot be restored as it stands: {said(form.errors)}")
        policy_values, calendars = policy_of(wanted.get("policy") or {}, version.number)
        given = forms.Rules(policy_values.get("jitter"), tuple(calendars), policy_values.get("calendar_rule") or "")
        problems = forms.policy_problems(form.schedule_row, form.cleaned_data["name"], given)
        if problems:
            raise RestoreRefused(f"Version {version.number} cannot be restored: " + "; ".join(problems.values()))
        before = audit.snapshot(task)
        saved = form.save()
        policy = services.policy_of(saved)
        for field, value in policy_values.items():
            setattr(policy, field, value)
        try:
            policy.full_clean()
        except ValidationError as exc:
            raise RestoreRefused(f"Version {version.number} cannot be restored: {' '.join(exc.messages)}") from None
        policy.save()
        policy.calendars.set(calendars)
        if saved.enabled:
            services.clear_pause(saved)
        elif before.get("enabled"):  # the version was paused: paused again, saying so
            services.pause(saved, by=by, note=f"restored version {version.number}, which was paused")
        changes = audit.diff(before, audit.snapshot(saved))
        audit.record(by, "restore", saved, changes={"restored_from": version.number, **changes}, via=via)
    return saved


def form_data(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The schedule form's fields from a snapshot (as the API's body maps to them)."""
    data: dict[str, Any] = {field: snapshot.get(field) for field in TOP_FIELDS}
    for field in ("args", "kwargs", "headers"):
        data[field] = json.dumps(snapshot.get(field) if snapshot.get(field) is not None else ([] if field == "args"
                                                                                                else {}))  # fmt: skip
    for field, value in (snapshot.get("schedule") or {}).items():
        if field not in SCHEDULE_SHOWN:
            data[SCHEDULE_FORM_NAMES.get(field, field)] = value
    # None is sent as an empty field (priority, queue: cleared, as the form clears them); a
    # checkbox left out is unticked.
    return {key: "" if value is None else value for key, value in data.items() if value is not False}


def policy_of(values: dict[str, Any], number: int) -> tuple[dict[str, Any], list[BusinessCalendar]]:
    """The policy's fields from a snapshot, with its owner, pool and calendars found again."""
    fields = {name: values.get(name) for name in (*audit.POLICY_AUDITED, "jitter") if name in values}
    fields = {name: ("" if value is None and name in STRING_FIELDS else value) for name, value in fields.items()}
    fields["calendar_rule"] = values.get("calendar_rule") or ""
    owner = values.get("owner")
    fields["owner"] = None
    if owner:
        found = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: owner}).first()
        if found is None:
            raise RestoreRefused(f"Version {number}'s owner {owner!r} no longer exists; give the schedule an owner "
                                 "who does, then restore a later version, or edit it instead.")  # fmt: skip
        fields["owner"] = found
    pool = values.get("pool")
    fields["pool"] = None
    if pool:
        fields["pool"] = Pool.objects.filter(name=pool).first()
        if fields["pool"] is None:
            raise RestoreRefused(f"Version {number}'s pool {pool!r} no longer exists; make it again (Pools), "
                                 "then restore.")  # fmt: skip
    names = list(values.get("calendars") or [])
    calendars = list(BusinessCalendar.objects.filter(name__in=names))
    missing = sorted(set(names) - {calendar.name for calendar in calendars})
    if missing:
        raise RestoreRefused(f"Version {number}'s calendars {', '.join(missing)} no longer exist; make them again "
                             "(Business calendars), then restore.")  # fmt: skip
    return fields, calendars


STRING_FIELDS = frozenset({"overlap", "catch_up", "pool_full", "calendar_rule"})


def said(errors: Any) -> str:
    """A form's errors in one line: "name: ...; task: ..."."""
    return "; ".join(f"{field}: {' '.join(str(m) for m in messages)}" for field, messages in errors.items())
