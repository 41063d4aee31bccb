"""Real processes for tests: a Celery worker, beat, the launcher; and waiting with deadlines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeVar

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_for(probe: Callable[[], T | Literal[False] | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `probe` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def database_url() -> str:
    """The URL of the database the tests use (the test database, once it exists)."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def process_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings.test",
        "DATABASE_URL": database_url(),
        "STARTUP_HEALTH_CHECK": "false",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


class Process:
    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=dict(env), stdout=self._log_file, stderr=subprocess.STDOUT, process_group=0
        )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 60) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.output[-3000:]}")
            return text in self.output

        wait_for(seen, timeout, f"{text!r} from {self.name}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # any child left behind
        except ProcessLookupError:
            pass
        self._log_file.close()
        return self.proc.returncode


def celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "project", *args]


@contextmanager
def worker(tmp_path: Path, *extra: str, concurrency: int = 2, **env: str) -> Iterator[Process]:
    """A Celery worker and a recorder that writes its runs to TaskResult, as every
    deployment runs them."""
    with recorder(tmp_path, **env), bare_worker(tmp_path, *extra, concurrency=concurrency, **env) as proc:
        yield proc


@contextmanager
def bare_worker(tmp_path: Path, *extra: str, concurrency: int = 2, **env: str) -> Iterator[Process]:
    """A Celery worker alone: its runs stay in Redis until a recorder runs."""
    name = f"test-{uuid.uuid4().hex[:8]}@%h"
    argv = celery("worker", "--loglevel", "INFO", "--concurrency", str(concurrency), "--hostname", name, *extra)
    argv += ["--without-mingle", "--without-gossip"]
    proc = Process("worker", argv, process_env(**env), tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log")
    try:
        proc.wait_for_output(" ready.")
        yield proc
    finally:
        proc.stop()


@contextmanager
def recorder(tmp_path: Path, **env: str) -> Iterator[Process]:
    """`manage.py record_runs`: writes the runs' state changes from Redis to TaskResult."""
    argv = [sys.executable, "manage.py", "record_runs"]
    proc = Process("recorder", argv, process_env(**env), tmp_path / f"recorder-{uuid.uuid4().hex[:6]}.log")
    try:
        proc.wait_for_output("started (batch")
        yield proc
    finally:
        proc.stop()


@contextmanager
def beat(tmp_path: Path, name: str = "beat", **env: str) -> Iterator[Process]:
    """A `celery beat`; give several running together distinct names (their log and
    schedule files are named after it: tmp_path/<name>.log, tmp_path/<name>-schedule)."""
    argv = celery("beat", "--loglevel", "DEBUG", "--pidfile=", "--schedule", str(tmp_path / f"{name}-schedule"))
    proc = Process(name, argv, process_env(**env), tmp_path / f"{name}.log")
    try:
        proc.wait_for_output("beat: Starting...")
        yield proc
    finally:
        proc.stop()
