from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from scheduler_app.runs.recorder import Recorder


class Command(BaseCommand):
    help = (
        "Run the recorder: write the runs' state changes from Redis (the stream bk:ledger) to "
        "TaskResult in batches. Run one or more (one records, the others stand by); SIGTERM or "
        "Ctrl-C writes what is queued (for up to 10 s) and stops."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch", type=int, default=None, help="Events per batch (default LEDGER_BATCH, 500).")

    def handle(self, *args: Any, batch: int | None, **options: Any) -> None:
        if batch is not None and not 1 <= batch <= 2000:
            raise CommandError(f"--batch must be between 1 and 2000 (a batch is one statement), not {batch}.")
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        Recorder(batch=batch).run(stop)
