"""Configuration from the environment: bad values stop start-up with a message naming the
variable; production refuses to start without its secrets and passes `check --deploy`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from project import env
from tests.processes import ROOT


def manage(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **environ},
        capture_output=True,
        text=True,
        timeout=120,
    )


PRODUCTION = {
    "DJANGO_SETTINGS_MODULE": "project.settings.production",
    "SECRET_KEY": "x7Gq2-production-like-secret-key-with-enough-entropy-9fK3pLm0ZbWc",
    "DATABASE_URL": "postgres://beatkeeper@127.0.0.1:5432/beatkeeper",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "ALLOWED_HOSTS": "beatkeeper.example.com",
}


@pytest.mark.parametrize("url", ["bogus://nowhere", "postgres://", "not a url"])
def test_it_stops_start_up_on_an_invalid_database_url_naming_the_variable(url: str) -> None:
    result = manage("check", DATABASE_URL=url)
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr
    assert "postgres://user:password@host:5432/dbname" in result.stderr


@pytest.mark.parametrize("url", ["http://localhost:6379", "redis://", "localhost:6379"])
def test_it_stops_start_up_on_an_invalid_redis_url_naming_the_variable(url: str) -> None:
    result = manage("check", REDIS_URL=url)
    assert result.returncode != 0
    assert "REDIS_URL" in result.stderr
    assert "redis://[:password@]host:6379/0" in result.stderr


@pytest.mark.parametrize("missing", ["SECRET_KEY", "DATABASE_URL", "REDIS_URL"])
def test_it_refuses_to_start_in_production_without_a_required_variable(missing: str) -> None:
    environ = {k: v for k, v in PRODUCTION.items() if k != missing}
    result = manage("check", **environ)
    assert result.returncode != 0
    assert f"{missing} is not set" in result.stderr


def test_it_passes_check_deploy_in_production_settings() -> None:
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_it_keeps_debug_off_outside_local_settings() -> None:
    result = manage(
        "shell", "-c", "from django.conf import settings; print(settings.DEBUG)", DEBUG="true", **PRODUCTION
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_it_reads_a_secret_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    monkeypatch.setenv("SECRET_KEY_FILE", str(secret_file))
    assert env.secret("SECRET_KEY") == "from-a-file"


def test_it_names_an_unreadable_secret_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_KEY_FILE", "/nonexistent/secret")
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY_FILE='/nonexistent/secret' cannot be read"):
        env.secret("SECRET_KEY")


@pytest.mark.parametrize(("raw", "message"), [("maybe", "not a boolean"), ("2.5", "whole number"), ("-1", "at least")])
def test_it_rejects_malformed_typed_values(raw: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_SETTING", raw)
    reader: Callable[[str, bool], object] = env.boolean if message == "not a boolean" else env.integer
    with pytest.raises(ImproperlyConfigured, match=message):
        reader("SOME_SETTING", True)  # the default, unused: the variable is set


def test_it_spells_a_unix_socket_the_way_kombu_expects() -> None:
    assert env.broker_url("unix:///var/run/valkey.sock") == "redis+socket:///var/run/valkey.sock"
    assert env.broker_url("redis://h:6379/1") == "redis://h:6379/1"


def test_it_hides_the_password_of_a_url_in_messages() -> None:
    assert env.redact("redis://:hunter2@h:6379/0") == "redis://:***@h:6379/0"


def test_it_serves_static_files_through_whitenoise_in_production_only() -> None:
    code = "from django.conf import settings; print(settings.MIDDLEWARE[2])"
    assert manage("shell", "-c", code, **PRODUCTION).stdout.strip().splitlines()[-1] == (
        "whitenoise.middleware.WhiteNoiseMiddleware"
    )


@pytest.mark.parametrize(
    "url", ["redis://h", "redis://h:6379", "redis://h:6379/", "redis://:pw@[::1]:6380/15", "unix:///s.sock?db=3"]
)
def test_it_keeps_a_redis_url_with_no_or_a_valid_port_and_database(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    assert env.redis_url("REDIS_URL", "") == url


def test_it_tells_an_in_memory_sqlite_name_from_a_file() -> None:
    assert all(env.in_memory(name) for name in (":memory:", "file::memory:?cache=shared", "file:x?mode=memory"))
    assert not any(env.in_memory(name) for name in ("/var/lib/bk.sqlite3", "memory.sqlite3"))


def test_it_bounds_each_redis_call_of_a_web_request() -> None:
    """Between Django's request_started and request_finished, clients wait REDIS_REQUEST_TIMEOUT."""
    from django.conf import settings
    from django.core.signals import request_finished, request_started

    from scheduler_app import connection

    def waits() -> float:
        client = connection.redis_client()
        try:
            return float(client.connection_pool.connection_kwargs["socket_timeout"])
        finally:
            client.close()

    assert waits() == connection.READ_TIMEOUT  # a worker's, beat's, a command's
    request_started.send(sender=None)
    try:
        assert waits() == settings.REDIS_REQUEST_TIMEOUT == 1.5
        with connection.bounded(0.7):
            assert waits() == 0.7
    finally:
        request_finished.send(sender=None)
    assert waits() == connection.READ_TIMEOUT
