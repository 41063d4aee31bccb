"""`manage.py launch` (what `make run` runs), as README's *The two commands* describes it:
Ctrl-C stops the processes in order, a second Ctrl-C kills what is left at once, and the
generated admin password is printed once. The real launcher, its real processes and real
signals, on the embedded default (no DATABASE_URL, no REDIS_URL), each on a var dir of
its own."""

from __future__ import annotations

import http.cookiejar
import os
import re
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.local.launching import Launch

# README: "web and beat first, then the worker ..., then the recorder ..., then the embedded server"
STOP_ORDER = ["web", "beat", "worker", "recorder", "redis"]
SETTLED = "Beatkeeper is running. Admin: http://127.0.0.1:"


@pytest.fixture
def var() -> Iterator[Path]:
    """A var dir of the test's own, short (the embedded server's socket path must fit 107 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="bk-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def launch() -> Iterator[Callable[..., Launch]]:
    started: list[Launch] = []

    def make(var: Path, *options: str, **env: str | None) -> Launch:
        started.append(Launch(var, *options, env=env))
        return started[-1]

    yield make
    for launched in started:
        launched.close()


def alive(processes: list[psutil.Process]) -> list[int]:
    return [p.pid for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def line_of(output: str, pattern: str) -> int:
    """The index of the first line of `output` matching `pattern`."""
    for number, line in enumerate(output.splitlines()):
        if re.search(pattern, line):
            return number
    raise AssertionError(f"no line matches {pattern!r} in:\n{output[-4000:]}")


# --- Ctrl-C ------------------------------------------------------------------------------------


def test_ctrl_c_stops_web_and_beat_then_the_worker_then_the_recorder_then_the_embedded_server(
    launch: Callable[..., Launch], var: Path
) -> None:
    """Each service is stopped only once the one before it has exited: the worker's warm
    shutdown, the recorder's last write and the server's own stop each show between their
    own "stopping" line and the next one's."""
    launched = launch(var, ADMIN_PASSWORD="correct-horse-battery-9")
    launched.wait_for_output(SETTLED)
    children = launched.descendants()
    launched.ctrl_c()
    assert launched.proc.wait(timeout=120) == 0, launched.output[-4000:]
    output = launched.output

    stopping = [line_of(output, rf"launcher \| stopping {name} \(") for name in STOP_ORDER]
    assert stopping == sorted(stopping), f"stopped in another order:\n{output[-4000:]}"
    worker_done = line_of(output, r"^worker +\| .*Warm shutdown")
    recorder_done = line_of(output, r"^recorder +\| .*stopped after recording")
    server_done = line_of(output, r"embedded Redis stopped")
    assert stopping[2] < worker_done < stopping[3], "the recorder was stopped before the worker had stopped"
    assert stopping[3] < recorder_done < stopping[4], "the server was stopped before the recorder had written"
    assert stopping[4] < server_done < line_of(output, r"launcher \| all stopped")
    assert alive(children) == []


def test_a_second_ctrl_c_kills_what_is_still_stopping_at_once(launch: Callable[..., Launch], var: Path) -> None:
    """The worker cannot stop (SIGSTOPped: its SIGTERM waits) and has a stop timeout of 600 s;
    a second Ctrl-C while the launcher waits for it kills it and everything left, and the
    launcher exits long before the timeout would have run out."""
    launched = launch(var, "--stop-timeout", "600", ADMIN_PASSWORD="correct-horse-battery-9")
    launched.wait_for_output(SETTLED)
    children = launched.descendants()
    os.kill(launched.pid_of("worker"), signal.SIGSTOP)
    launched.ctrl_c()
    launched.wait_for_output("launcher | stopping worker (up to 600s)", timeout=60)
    launched.ctrl_c()
    try:
        launched.proc.wait(timeout=60)  # at once, not after 600 s
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the second Ctrl-C did not stop the launcher:\n{launched.output[-4000:]}") from None
    output = launched.output
    assert "launcher | second stop signal: killing everything now" in output
    assert "did not stop in" not in output
    assert "stopping recorder" not in output and "stopping redis" not in output  # killed, not asked
    assert alive(children) == [], "a process outlived the second Ctrl-C"


# --- the generated admin password ---------------------------------------------------------------


def log_in(port: int, username: str, password: str) -> bool:
    """Log in to the admin as a browser does; whether the admin let us in."""
    base = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(base + "/admin/login/", timeout=10) as response:
        page = response.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token, "no CSRF token on the login page"
    form = {"csrfmiddlewaretoken": token[1], "username": username, "password": password, "next": "/admin/"}
    with opener.open(base + "/admin/login/", urllib.parse.urlencode(form).encode(), timeout=10) as response:
        return bool(response.url.endswith("/admin/"))


def test_the_generated_admin_password_is_printed_by_the_first_launch_only(
    launch: Callable[..., Launch], var: Path
) -> None:
    first = launch(var)  # no ADMIN_USERNAME, no ADMIN_PASSWORD: `admin` with a generated password
    first.wait_for_output(SETTLED)
    found = re.findall(r"created admin user 'admin' with password '([^']+)' \(shown only now", first.output)
    assert len(found) == 1, first.output[-4000:]
    (password,) = found
    assert first.output.count(password) == 1, "the password was printed more than once"
    assert log_in(first.port, "admin", password), "the printed password does not let admin in"
    first.ctrl_c()
    assert first.proc.wait(timeout=120) == 0, first.output[-4000:]

    second = launch(var)  # the same var dir: the same database, the user exists
    second.wait_for_output(SETTLED)
    assert password not in second.output
    assert "with password" not in second.output
    assert "admin user 'admin' exists; its password was shown when it was created" in second.output
    assert log_in(second.port, "admin", password), "the second launch changed the password"
    second.ctrl_c()
    assert second.proc.wait(timeout=120) == 0, second.output[-4000:]
