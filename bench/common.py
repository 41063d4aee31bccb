"""Set-up shared by the benchmarks: a database and broker of their own, never the user's."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = "_beatkeeper_bench"


def bench_database_url() -> str:
    """DATABASE_URL's server with a database of the benchmark's own (created if needed);
    without DATABASE_URL, a SQLite file under var/bench/."""
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        return f"sqlite:///{ROOT / 'var' / 'bench' / 'bench.sqlite3'}"
    parts = urlsplit(url)
    name = parts.path.lstrip("/").removesuffix(SUFFIX) + SUFFIX  # a child process is given it already
    import psycopg

    admin = urlunsplit(parts._replace(scheme="postgresql"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path="/" + name))


def setup_django(*, keep_var_dir: bool = False) -> dict[str, str]:
    """Point this process at the benchmark's database and var dir (`keep_var_dir`: the
    BEATKEEPER_VAR_DIR the caller gave, if any); return the env for children."""
    if not (keep_var_dir and os.environ.get("BEATKEEPER_VAR_DIR")):
        os.environ["BEATKEEPER_VAR_DIR"] = str(ROOT / "var" / "bench")
    os.environ["DATABASE_URL"] = bench_database_url()
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings.local"
    os.environ["STARTUP_HEALTH_CHECK"] = "false"
    os.environ["LOG_LEVEL"] = "WARNING"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    _start_embedded_redis_if_needed()
    return dict(os.environ)


def _start_embedded_redis_if_needed() -> None:
    import atexit

    from django.conf import settings

    from scheduler_app.local import embedded_redis

    if not settings.USES_EMBEDDED_REDIS:
        return
    server = embedded_redis.server(settings.EMBEDDED_REDIS_SOCKET)
    server.start(timeout=20)
    atexit.register(server.stop)


def start_worker(env: dict[str, str], concurrency: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "celery", "-A", "project", "worker", "--include", "bench.tasks"]
    argv += ["--concurrency", str(concurrency), "--loglevel", "WARNING", "--without-mingle", "--without-gossip"]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_recorder(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`manage.py record_runs`: writes the runs' states from Redis to TaskResult."""
    argv = [sys.executable, "manage.py", "record_runs"]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def median(values: list[float]) -> float:
    return statistics.median(values)
