"""The launcher: its supervisor with real processes, and `manage.py launch` end to end."""

from __future__ import annotations

import http.cookiejar
import io
import re
import shutil
import signal
import socket
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from scheduler_app import catalog
from scheduler_app.local.launcher import Service, Supervisor
from tests.local.launching import Launch
from tests.ports import free_port
from tests.processes import wait_for

PY = sys.executable


def python(code: str) -> list[str]:
    return [PY, "-c", code]


# --- the supervisor -------------------------------------------------------------------


def test_it_prefixes_each_line_with_its_service() -> None:
    out = io.StringIO()
    sup = Supervisor(out, width=6)
    sup.start(Service("alpha", python("print('one'); print('two')")))
    assert sup.first_exit() is not None
    sup.stop_all(["alpha"])
    assert "alpha  | one\nalpha  | two\n" in out.getvalue()


def test_it_reports_the_first_service_to_exit_and_stops_the_others() -> None:
    out = io.StringIO()
    sup = Supervisor(out)
    long_running = sup.start(Service("long", python("import time; time.sleep(120)")))
    sup.start(Service("short", python("raise SystemExit(3)")))
    failed = sup.first_exit()
    assert failed is not None and failed.name == "short"
    assert sup.returncode("short") == 3
    sup.stop_all(["long", "short"])
    assert long_running.poll() == -signal.SIGTERM
    assert "stopping long" in out.getvalue()


def test_it_kills_a_service_that_ignores_sigterm_after_its_stop_timeout() -> None:
    out = io.StringIO()
    sup = Supervisor(out)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
    code += "time.sleep(120)"
    stubborn = sup.start(Service("stubborn", python(code), stop_timeout=1, signal_group=False))
    wait_for(lambda: "ready" in out.getvalue(), 30, "the service to start")
    sup.stop_all(["stubborn"])
    assert stubborn.poll() == -signal.SIGKILL
    assert "stubborn did not stop in 1s: killing it" in out.getvalue()


def test_it_stops_services_in_the_order_given() -> None:
    out = io.StringIO()
    sup = Supervisor(out)
    code = "import signal, sys, time; "
    code += "signal.signal(signal.SIGTERM, lambda *a: (print('{}', flush=True), sys.exit(0))); "
    code += "print('up', flush=True); time.sleep(120)"
    for name in ("first", "second", "third"):
        sup.start(Service(name, python(code.format(f"{name} stopped"))))
    wait_for(lambda: out.getvalue().count("| up") == 3, 30, "three services")
    sup.stop_all(["second", "third", "first"])
    stops = re.findall(r"(\w+) stopped", out.getvalue())
    assert stops == ["second", "third", "first"]


# --- manage.py launch, end to end ------------------------------------------------------


@pytest.fixture
def launch() -> Iterator[Callable[[int], Launch]]:
    started: list[Launch] = []

    def make(port: int) -> Launch:
        var = Path(tempfile.mkdtemp(prefix="bk-"))  # short: the socket path must fit 107 bytes
        admin = {"ADMIN_USERNAME": "ops", "ADMIN_PASSWORD": "correct-horse-battery-9"}
        started.append(Launch(var, "--stop-timeout", "20", port=port, env=admin))
        return started[-1]

    yield make
    for launched in started:
        launched.close()
        shutil.rmtree(launched.var, ignore_errors=True)


class Browser:
    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=10) as response:
            return str(response.read().decode())

    def log_in(self, username: str, password: str) -> None:
        page = self.get("/admin/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert token, "no CSRF token on the login page"
        form = {"csrfmiddlewaretoken": token.group(1), "username": username, "password": password, "next": "/admin/"}
        with self.opener.open(self.base + "/admin/login/", urllib.parse.urlencode(form).encode(), timeout=10) as r:
            assert r.url.endswith("/admin/"), "the log-in was refused"


def test_it_runs_the_whole_platform_and_shows_a_finished_health_check_in_the_admin(
    launch: Callable[[int], Launch],
) -> None:
    port = free_port()
    launched = launch(port)
    launched.wait_for_output("Beatkeeper is running. Admin: http://127.0.0.1:")
    assert f"{len(catalog.definitions())} created, 0 updated, 0 unchanged" in launched.output
    assert "admin user 'ops' uses the password from ADMIN_PASSWORD" in launched.output
    browser = Browser(f"http://127.0.0.1:{port}")
    browser.log_in("ops", "correct-horse-battery-9")
    assert "System health check" in browser.get("/admin/django_celery_beat/periodictask/")

    def health_check_succeeded() -> bool:
        page = browser.get("/admin/scheduler_app/run/?task=maintenance.system_health_check")
        # In the result rows: the state filter above the table names SUCCESS whatever the runs are.
        rows = page.split('id="result_list"', 1)[1].split("<tbody", 1)[1] if 'id="result_list"' in page else ""
        return "SUCCESS" in rows.split("</tbody>", 1)[0]

    wait_for(health_check_succeeded, 60, "a finished system health check in the admin", interval=1)
    children = launched.descendants()
    assert {"web", "worker", "beat", "recorder", "redis"} <= set(re.findall(r"started (\w+) \(pid", launched.output))
    launched.proc.send_signal(signal.SIGTERM)
    assert launched.proc.wait(timeout=90) == 0, launched.output[-3000:]
    assert "worker: Warm shutdown" in launched.output
    assert re.search(r"recorder \| .*stopped after recording [1-9]\d* runs", launched.output)  # after the worker
    assert "launcher | all stopped" in launched.output
    assert [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE] == []


def test_it_says_which_process_died_and_stops_the_others(launch: Callable[[int], Launch]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        launched = launch(taken.getsockname()[1])  # the web server cannot bind it
        assert launched.proc.wait(timeout=120) != 0
    output = launched.output
    assert "web exited with code" in output
    assert "so the others were stopped" in output
    assert "stopping worker" in output and "stopping redis" in output
    assert "embedded Redis stopped" in output
