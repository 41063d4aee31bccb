"""Start-up refuses a REDIS_URL or DATABASE_URL that cannot work, naming the variable and
saying what is valid: `manage.py check` in a process of its own, as a deployment starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.processes import ROOT

REDIS_HINT = "use redis://[:password@]host:6379/0"
DATABASE_HINT = "use e.g. postgres://user:password@host:5432/dbname or sqlite:////absolute/path.sqlite3"


def check(**environ: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env={**base, **environ},
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://127.0.0.1:notaport/0", "has port 'notaport', not a port number (1-65535)"),
        ("redis://127.0.0.1:99999/0", "has port '99999', not a port number (1-65535)"),
        ("redis://127.0.0.1:0/0", "has port 0, not a port number (1-65535)"),
        ("redis://127.0.0.1:6379/zero", "has database 'zero', not a database number (0, 1, ..., 15 on a default"),
        ("redis://127.0.0.1:6379/-1", "has database '-1', not a database number"),
        ("redis://127.0.0.1:6379/1/2", "has database '1/2', not a database number"),
        ("redis://127.0.0.1:6379/99999999999", "has database 99999999999, beyond what Redis allows (0 to 2147483646"),
        ("rediss://:secret@127.0.0.1:6380?db=x", "has database 'x', not a database number"),
        ("unix:///run/redis.sock?db=zero", "has database 'zero', not a database number"),
    ],
)
def test_it_refuses_a_redis_url_whose_port_or_database_cannot_work(url: str, problem: str) -> None:
    result = check(REDIS_URL=url)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "REDIS_URL=" in result.stderr
    assert problem in result.stderr and REDIS_HINT in result.stderr
    assert "secret" not in result.stderr  # the password is redacted


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite://:memory:", "sqlite:///:memory:", "sqlite:///file::memory:?cache=shared"]
)
def test_it_refuses_an_in_memory_database(url: str) -> None:
    result = check(DATABASE_URL=url)
    assert result.returncode != 0
    assert f"DATABASE_URL={url!r} is an in-memory SQLite database" in result.stderr
    assert "each process (web, worker, beat, recorder) would have its own, empty one" in result.stderr
    assert DATABASE_HINT in result.stderr


@pytest.mark.parametrize(("port", "shown"), [("notaport", "'notaport'"), ("99999", "'99999'")])
def test_it_names_a_database_port_that_is_no_port(port: str, shown: str) -> None:
    result = check(DATABASE_URL=f"postgres://bk@127.0.0.1:{port}/beatkeeper")
    assert result.returncode != 0
    assert f"has port {shown}, not a port number (1-65535); {DATABASE_HINT}" in result.stderr


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/15", "redis://127.0.0.1/", "unix:///run/redis.sock?db=2"])
def test_it_starts_with_a_valid_redis_url(url: str) -> None:
    result = check(REDIS_URL=url)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout
