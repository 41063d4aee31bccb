"""`manage.py launch` (what `make run` runs) as a test drives it: the real launcher on a
var dir of the test's own, with the embedded default (no DATABASE_URL, no REDIS_URL), its
output read as it comes (tests/local/test_launcher.py, test_launcher_stop.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

import psutil

from tests.ports import free_port
from tests.processes import ROOT, wait_for


class Launch:
    """`manage.py launch` on `var` with the embedded default; `env` adds to (or, with None,
    takes from) the environment it inherits."""

    def __init__(self, var: Path, *options: str, port: int | None = None,
                 env: Mapping[str, str | None] | None = None) -> None:  # fmt: skip
        self.var = var
        self.port = free_port() if port is None else port
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("ADMIN_")}
        for name in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"):
            inherited.pop(name, None)
        inherited["BEATKEEPER_VAR_DIR"] = str(var)
        for name, value in (env or {}).items():
            if value is None:
                inherited.pop(name, None)
            else:
                inherited[name] = value
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "launch", "--port", str(self.port), *options],
            cwd=ROOT,
            env=inherited,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout or ():
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_output(self, text: str, timeout: float = 120) -> None:
        def seen() -> bool:
            if text in self.output:
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"launcher exited ({self.proc.returncode}):\n{self.output[-4000:]}")
            return False

        wait_for(seen, timeout, f"{text!r} from the launcher")

    def pid_of(self, service: str) -> int:
        found = re.search(rf"launcher \| started {service} \(pid (\d+)\)", self.output)
        assert found, f"no start of {service} in:\n{self.output[-3000:]}"
        return int(found[1])

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def ctrl_c(self) -> None:
        """What a terminal's Ctrl-C does here: SIGINT to the launcher, whose services run in
        process groups of their own (so the terminal's signal reaches only the launcher)."""
        self.proc.send_signal(signal.SIGINT)

    def close(self) -> None:
        if self.proc.poll() is None:
            for child in self.descendants():
                child.kill()
            self.proc.kill()
        self.proc.wait()
