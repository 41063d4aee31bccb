from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from scheduler_app import audit, roles, seeding
from scheduler_app.seeding import Plan, seed_default_tasks


class Command(BaseCommand):
    help = (
        "Create or update the default schedules the catalog declares: the maintenance tasks' and those "
        "of every installed app's tasks module (INSTALLED_APPS, BEATKEEPER_APPS). Idempotent: "
        "a second run changes nothing. A field an operator edited (schedule, enabled, "
        "arguments, ...) is kept unless --reset. Also keeps the role groups (Viewer, Operator, "
        "Editor) holding exactly their permissions."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--reset", action="store_true", help="Put every seeded field back to the catalog's default."
        )
        parser.add_argument("--dry-run", action="store_true", help="Print what would change; write nothing.")

    def handle(self, *args: Any, reset: bool, dry_run: bool, **options: Any) -> None:
        with transaction.atomic():  # the schedules and their audit entries, together
            report = seed_default_tasks(reset=reset, dry_run=dry_run)
            if not dry_run:
                self._audit(report.plans)
            synced = roles.sync_roles(dry_run=dry_run)
        for plan in report.plans:
            self.stdout.write(self._line(plan))
        for sync in synced:
            self.stdout.write(self._role_line(sync))
        prefix = "dry run, nothing written: " if dry_run else ""
        self.stdout.write(
            f"{prefix}{report.count('created')} created, {report.count('updated')} updated, "
            f"{report.count('unchanged')} unchanged"
        )

    def _audit(self, plans: list[Plan]) -> None:
        """Each schedule created or updated, in the audit trail (via="command")."""
        for plan in plans:
            if plan.outcome == "unchanged":
                continue
            task = seeding.find_seeded(plan.definition)  # by its catalog key first: an operator may have renamed it
            changes = {key: [old, new] for key, (old, new) in plan.changes.items()}
            action = "create" if plan.outcome == "created" else "update"
            audit.record(None, action, task, object_type="periodictask", object_id=str(task.pk) if task else "",
                         changes={"seeded": plan.definition.key, **changes}, via="command")  # fmt: skip

    def _role_line(self, sync: roles.RoleSync) -> str:
        if not sync.changed:
            return f"role      {sync.role}: as defined"
        said = ["group created"] if sync.created else []
        said += [f"added {', '.join(sync.added)}"] if sync.added and not sync.created else []
        said += [f"removed {', '.join(sync.removed)}"] if sync.removed else []
        return f"role      {sync.role}: {'; '.join(said)}"

    def _line(self, plan: Plan) -> str:
        line = f"{plan.outcome:<9} {plan.definition.name} ({plan.definition.task})"
        if plan.outcome == "updated":
            line += ": " + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in plan.changes.items())
        if plan.kept:
            line += f" [kept operator edits: {', '.join(plan.kept)}; --reset to replace]"
        return line
