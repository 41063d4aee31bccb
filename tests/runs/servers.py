"""Servers of a test's own, under its tmp_path: a PostgreSQL cluster and a redis-server,
each on a port reserved for the test run (tests/ports.py), that the test stops and starts
as it likes. Never the machine's
shared PostgreSQL (5432) or Redis (6379), never the suite's own database or broker.

A binary that is missing skips the test on a developer's machine and fails it under CI
(CI=true): the suite skips nothing in CI.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.ports import free_port, release
from tests.processes import ROOT, process_env, wait_for

PG_BIN = Path("/usr/local/bin")


def binary(name: str, *places: Path) -> str:
    """The path of `name`: in `places` first, then on PATH."""
    for place in places:
        if os.access(place / name, os.X_OK):
            return str(place / name)
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (looked in {', '.join(map(str, places)) or 'PATH'} and on PATH)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}; CI must have it, nothing is skipped there")
    pytest.skip(message)


def _run(argv: list[str], what: str, **options: Any) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **options)
    if done.returncode != 0:
        raise AssertionError(f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


class PostgresCluster:
    """`initdb` + `pg_ctl`: trust authentication, TCP on 127.0.0.1:<port> only (no unix
    socket), fsync off (a test's data). PostgreSQL refuses to run as root: as root, the
    cluster runs as the `postgres` user (or `nobody`), which then needs to pass through
    tmp_path's directories (they are made traversable, not readable)."""

    def __init__(self, base: Path, port: int) -> None:
        self.base, self.port = base, port
        self.data, self.logfile = base / "data", base / "postgres.log"
        self.initdb = binary("initdb", PG_BIN)
        self.pg_ctl = binary("pg_ctl", PG_BIN)
        self.as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    entry = pwd.getpwnam(name)
                except KeyError:
                    continue
                self.as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
                break
            else:
                pytest.fail("running as root and no `postgres` or `nobody` user to run PostgreSQL as")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/beatkeeper"

    def init(self) -> None:
        self.base.mkdir(parents=True)
        if self.as_user:
            _traversable(self.base.parent)
            os.chown(self.base, self.as_user["user"], self.as_user["group"])
        argv = [self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"]
        _run([*argv, "--no-sync"], "initdb", **self.as_user)

    def start(self) -> None:
        options = f"-p {self.port} -k '' -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        argv = [self.pg_ctl, "-D", str(self.data), "-l", str(self.logfile), "-o", options, "-w", "-t", "60", "start"]
        _run(argv, "pg_ctl start", **self.as_user)
        wait_for(self.answers, 30, f"PostgreSQL on port {self.port}")

    def stop(self, mode: str = "fast") -> None:
        _run([self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"], "pg_ctl stop", **self.as_user)

    def running(self) -> bool:
        done = subprocess.run([self.pg_ctl, "-D", str(self.data), "status"], capture_output=True, check=False,
                              **self.as_user)  # fmt: skip
        return done.returncode == 0

    def answers(self, dbname: str = "postgres") -> bool:
        try:
            psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, connect_timeout=2).close()
        except psycopg.Error:
            return False
        return True

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="beatkeeper",
                               connect_timeout=5, autocommit=True)  # fmt: skip

    def create_database(self) -> None:
        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True, connect_timeout=5) as conn:  # fmt: skip
            conn.execute("CREATE DATABASE beatkeeper")

    def migrate(self) -> None:
        """`manage.py migrate` on this cluster's database, as a deployment would."""
        argv = [sys.executable, "manage.py", "migrate", "--noinput"]
        done = subprocess.run(argv, cwd=ROOT, env=process_env(DATABASE_URL=self.url), capture_output=True, text=True,
                              timeout=300, check=False)  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"migrate failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""


def _traversable(directory: Path) -> None:
    """Let another user pass through `directory` and the directories above it (x, not r)."""
    for place in [directory, *directory.parents]:
        mode = place.stat().st_mode
        if mode & stat.S_IXOTH:
            continue
        if place.stat().st_uid != os.geteuid():
            raise AssertionError(f"{place} is not traversable by others and not ours to change")
        place.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A migrated PostgreSQL of the test's own; stopped (immediate) whatever happens. Its
    data lives outside pytest's temporary tree: every pytest session that starts takes
    other users' access off that tree again, which would lock out the cluster's user."""
    with tempfile.TemporaryDirectory(prefix="beatkeeper-pg-") as directory:
        cluster = PostgresCluster(Path(directory) / "pg", free_port())
        try:
            cluster.init()
            cluster.start()
            cluster.create_database()
            cluster.migrate()
            yield cluster
        finally:
            if cluster.running():
                cluster.stop("immediate")
            release(cluster.port)


class RedisServer:
    """A redis-server of the test's own on a port of its own, with an append-only file
    fsynced at every write under `directory`, so a restart loses nothing."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory, self.port = directory, port
        self.executable = binary("redis-server")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "redis.log"
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=2, socket_timeout=5)

    def answers(self) -> bool:
        """Our own process answers on the port (not another program that took it)."""
        return self.proc is not None and answers_as(self.client(), self.proc, self.port, self.log)

    def start(self) -> None:
        argv = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--logfile", str(self.log)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(self.answers, 30, f"redis-server on port {self.port}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Signal it and wait for it to exit (SIGTERM: it finishes writing the append-only file)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def answers_as(client: redis.Redis, proc: subprocess.Popen[bytes], port: int, log: Path) -> bool:
    """`proc`, a redis-server, answers on `port`: False while it starts; a failure once it
    has exited (it could not bind the port, say) or when another process answers there."""
    if proc.poll() is not None:
        raise AssertionError(f"redis-server on port {port} exited ({proc.returncode}):\n{_tail(log)}")
    try:
        pid = int(client.info("server")["process_id"])
    except redis.RedisError:
        return False
    if pid != proc.pid:
        raise AssertionError(f"port {port} is answered by process {pid}, not by our redis-server {proc.pid}")
    return True


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


@contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop(signal.SIGKILL)
        release(server.port)
