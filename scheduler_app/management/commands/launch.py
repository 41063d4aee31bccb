from __future__ import annotations

import os
import sys
import time
import urllib.request
from typing import Any, TextIO, cast

import redis
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from project import env
from scheduler_app.connection import redis_client
from scheduler_app.local.launcher import Service, Supervisor

STOP_ORDER = ("web", "beat", "worker", "recorder", "redis")  # the recorder writes what the worker sent last
READY_TIMEOUT = 60.0


class Command(BaseCommand):
    help = (
        "Run Beatkeeper locally (what `make run` does): start the embedded Redis when "
        "REDIS_URL is unset, migrate, seed the default tasks, make sure an admin user "
        "exists, then run web + worker + beat + recorder with prefixed logs until Ctrl-C or SIGTERM."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("WEB_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("WEB_PORT", "8000")))
        parser.add_argument(
            "--stop-timeout",
            type=float,
            default=float(os.environ.get("LAUNCHER_STOP_TIMEOUT", "30")),
            help="Seconds the worker gets to finish its running tasks on stop (default 30).",
        )
        parser.add_argument("--concurrency", type=int, default=int(os.environ.get("WORKER_CONCURRENCY", "2")))

    def handle(self, *args: Any, host: str, port: int, stop_timeout: float, concurrency: int, **options: Any) -> None:
        # OutputWrapper writes and flushes, and hands every other attribute to the TextIO it wraps.
        supervisor = Supervisor(cast(TextIO, self.stdout), width=8)
        supervisor.handle_signals()
        failed = None
        try:
            failed = self._run(supervisor, host, port, stop_timeout, concurrency)
        finally:
            supervisor.stop_all(STOP_ORDER)
        if failed is not None:
            code = supervisor.returncode(failed.name)
            raise CommandError(
                f"{failed.name} exited with code {code}, so the others were stopped; its last lines are above."
            )
        supervisor.say("launcher", "all stopped")

    def _run(self, sup: Supervisor, host: str, port: int, stop_timeout: float, concurrency: int) -> Service | None:
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        for path in settings.TEMP_CLEANUP_DIRS:
            if path.startswith(str(settings.VAR_DIR)):
                os.makedirs(path, exist_ok=True)
        if settings.USES_EMBEDDED_REDIS:
            sup.start(Service("redis", [sys.executable, "manage.py", "embedded_redis"], stop_timeout=15))
            self._wait_until(sup, "redis", _redis_answers)
        self._prepare(sup)
        if sup.stop_requested.is_set():
            return None
        for service in _services(host, port, stop_timeout, concurrency):
            sup.start(service)
        self._wait_until(sup, "web", lambda: _web_answers(host, port))
        sup.say("launcher", f"Beatkeeper is running. Admin: http://{host}:{port}/admin/  (Ctrl-C stops everything)")
        return sup.first_exit()

    def _prepare(self, sup: Supervisor) -> None:
        db = settings.DATABASES["default"]
        sup.say("launcher", f"database: {db['ENGINE'].rsplit('.', 1)[-1]} {db['NAME']}")
        kind = "embedded Valkey" if settings.USES_EMBEDDED_REDIS else "Redis"
        sup.say("launcher", f"broker: {kind} at {env.redact(settings.REDIS_URL)}")
        call_command("migrate", interactive=False, verbosity=0)
        sup.say("launcher", "migrations applied")
        call_command("seed_default_tasks", stdout=_Prefixed(sup, "seed"))
        call_command("ensure_admin", stdout=_Prefixed(sup, "admin"))

    def _wait_until(self, sup: Supervisor, name: str, ready: Any) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready():
            if sup.stop_requested.is_set():
                return
            if sup.returncode(name) is not None:
                raise CommandError(
                    f"{name} exited with code {sup.returncode(name)} while starting, so the others were "
                    "stopped; its last lines are above."
                )
            if time.monotonic() > deadline:
                raise CommandError(f"{name} did not become ready within {READY_TIMEOUT:g}s; its log is above.")
            time.sleep(0.2)


def _services(host: str, port: int, stop_timeout: float, concurrency: int) -> list[Service]:
    celery = [sys.executable, "-m", "celery", "-A", "project"]
    return [
        Service("web", [sys.executable, "manage.py", "runserver", f"{host}:{port}"]),
        Service(
            "worker",
            [*celery, "worker", "--loglevel", "INFO", "--concurrency", str(concurrency), "--hostname", "worker@%h"],
            stop_timeout=stop_timeout,
            signal_group=False,  # SIGTERM to the main process only: Celery's warm shutdown
        ),
        Service("recorder", [sys.executable, "manage.py", "record_runs"], stop_timeout=30),
        Service(
            "beat",
            [
                *celery,
                "beat",
                "--loglevel",
                "INFO",
                "--pidfile=",
                "--schedule",
                str(settings.VAR_DIR / "celerybeat-schedule"),
            ],
        ),
    ]


def _redis_answers() -> bool:
    try:
        return bool(redis_client().ping())
    except redis.RedisError:
        return False


def _web_answers(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


class _Prefixed:
    """A file-like object that sends a management command's output through the supervisor."""

    def __init__(self, sup: Supervisor, name: str) -> None:
        self.sup, self.name = sup, name

    def write(self, text: str) -> None:
        for line in text.splitlines():
            if line.strip():
                self.sup.say(self.name, line)

    def flush(self) -> None:
        pass
