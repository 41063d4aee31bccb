"""manage.py backfill: run a schedule for every slot between two moments, as if beat had
sent them (scheduler_app/backfills.py); or cancel a backfill (--cancel ID)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from scheduler_app import audit, backfills
from scheduler_app.models import Backfill


class Command(BaseCommand):
    help = (
        "Run a schedule for every slot from --from to --to (both inclusive, ISO 8601; without an offset, "
        "the server's time zone), as if beat had sent them: beat's leader sends them, at most "
        "--max-concurrent at once. Slots that already ran are skipped unless --rerun. --dry-run lists the "
        "slots and writes nothing. --cancel ID cancels a backfill (its runs already sent go on)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("schedule", nargs="?", help="the schedule's name or id")
        parser.add_argument("--from", dest="start", metavar="MOMENT", help="the first moment (inclusive)")
        parser.add_argument("--to", dest="end", metavar="MOMENT", help="the last moment (inclusive, not in the future)")
        parser.add_argument("--dry-run", action="store_true", help="list the slots; write nothing")
        parser.add_argument("--newest-first", action="store_true", help="send the newest slot first")
        parser.add_argument("--max-concurrent", type=int, default=1, metavar="N",
                            help=f"at most N runs at once (1 to {backfills.MAX_CONCURRENT}; default 1)")  # fmt: skip
        parser.add_argument("--rerun", action="store_true", help="also run slots that already ran")
        parser.add_argument("--cancel", type=int, metavar="ID", help="cancel this backfill instead")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["cancel"] is not None:
                self.cancel(options["cancel"])
            else:
                self.backfill(options)
        except backfills.BackfillError as exc:
            raise CommandError(f"{exc} Nothing was written.") from None

    def backfill(self, options: dict[str, Any]) -> None:
        missing = [flag for flag, key in (("schedule", "schedule"), ("--from", "start"), ("--to", "end"))
                   if not options[key]]  # fmt: skip
        if missing:
            raise CommandError(f"give {', '.join(missing)} (or --cancel ID).")
        task = backfills.schedule_by_name_or_id(options["schedule"])
        start = backfills.parse_moment(options["start"], "--from")
        end = backfills.parse_moment(options["end"], "--to")
        choices = {"rerun": options["rerun"], "newest_first": options["newest_first"],
                   "max_concurrent": options["max_concurrent"]}  # fmt: skip
        if options["dry_run"]:
            plan = backfills.plan(task, start, end, **choices)
            for planned in plan.slots:
                mark = f"  skipped ({planned.skipped_because})" if planned.skipped else ""
                moved = f"  (sent for {planned.at.isoformat()})" if planned.at != planned.slot else ""
                self.stdout.write(f"{planned.position + 1:>5}. {planned.slot.isoformat()}{moved}{mark}")
            self.stdout.write(f"Dry run, nothing written. {plan.summary()}")
            return
        with transaction.atomic():
            backfill = backfills.start(task, start, end, by=None, via="command", **choices)
            audit.record(None, "backfill", task, via="command", changes=backfills.audited(backfill))
        counts = backfills.progress(backfill)
        self.stdout.write(
            f"Backfill {backfill.pk} of {task.name}: {counts.total} slot(s), {counts.waiting} to run, "
            f"{counts.skipped} skipped (already ran); beat's leader sends them "
            f"(at most {backfill.max_concurrent} at once). Cancel: manage.py backfill --cancel {backfill.pk}"
        )

    def cancel(self, pk: int) -> None:
        backfill = Backfill.objects.filter(pk=pk).first()
        if backfill is None:
            raise CommandError(f"no backfill {pk}.")
        with transaction.atomic():
            cancelled = backfills.cancel(backfill, by=None)
            audit.record(None, "cancel", backfill, object_type="backfill", via="command",
                         changes={"cancelled_slots": cancelled})  # fmt: skip
        self.stdout.write(f"Cancelled backfill {pk}: {cancelled} waiting slot(s) will not run; runs sent go on.")
