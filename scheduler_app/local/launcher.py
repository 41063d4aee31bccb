"""The launcher's supervisor: run several processes, prefix and interleave their output,
and stop them all, in order, when one dies or when asked (Ctrl-C / SIGTERM).

Each process gets a process group of its own, so a Ctrl-C in the terminal reaches only
the launcher, which then stops the services in the order given: the web server and beat
first, then the worker (Celery's warm shutdown: running tasks finish, bounded by the
service's stop timeout), and the broker last, because the worker acknowledges finished
tasks through it. A second Ctrl-C kills whatever is left at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TextIO


@dataclass(frozen=True)
class Service:
    name: str
    argv: Sequence[str]
    stop_timeout: float = 10.0
    # False: signal only the main process (a Celery worker shuts its pool down itself).
    signal_group: bool = True


class Supervisor:
    def __init__(self, out: TextIO, env: Mapping[str, str] | None = None, width: int = 8) -> None:
        self.out = out
        self.env = dict(env if env is not None else os.environ)
        self.width = width
        self.procs: dict[str, tuple[Service, subprocess.Popen[str]]] = {}
        self.stop_requested = threading.Event()
        self._wake = threading.Event()
        self._print_lock = threading.Lock()
        self._hurry = False

    # --- output ---------------------------------------------------------------------
    def say(self, name: str, text: str) -> None:
        with self._print_lock:
            self.out.write(f"{name:<{self.width}} | {text}\n")
            self.out.flush()

    # --- starting ---------------------------------------------------------------------
    def start(self, service: Service) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler_app.local.orphan_guard", *service.argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**self.env, "PYTHONUNBUFFERED": "1"},
            text=True,
            errors="replace",
            process_group=0,
        )
        self.procs[service.name] = (service, proc)
        threading.Thread(target=self._pump, args=(service.name, proc), daemon=True).start()
        self.say("launcher", f"started {service.name} (pid {proc.pid})")
        return proc

    def _pump(self, name: str, proc: subprocess.Popen[str]) -> None:
        for line in proc.stdout or ():
            self.say(name, line.rstrip("\n"))
        proc.wait()
        self._wake.set()

    # --- waiting ----------------------------------------------------------------------
    def handle_signals(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested.is_set():
            self._hurry = True
            self.say("launcher", "second stop signal: killing everything now")
            for service, proc in self.procs.values():
                self._signal(service, proc, signal.SIGKILL)
        self.stop_requested.set()
        self._wake.set()

    def first_exit(self) -> Service | None:
        """Block until a service exits (return it) or a stop is requested (None)."""
        while True:
            self._wake.wait()
            self._wake.clear()
            if self.stop_requested.is_set():
                return None
            for service, proc in self.procs.values():
                if proc.poll() is not None:
                    return service

    def returncode(self, name: str) -> int | None:
        return self.procs[name][1].poll()

    # --- stopping ---------------------------------------------------------------------
    def stop_all(self, order: Sequence[str]) -> None:
        for name in order:
            if name in self.procs:
                self._stop(*self.procs[name])

    def _stop(self, service: Service, proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None and not self._hurry:
            self.say("launcher", f"stopping {service.name} (up to {service.stop_timeout:g}s)")
            self._signal(service, proc, signal.SIGTERM)
            try:
                proc.wait(timeout=service.stop_timeout)
            except subprocess.TimeoutExpired:
                self.say("launcher", f"{service.name} did not stop in {service.stop_timeout:g}s: killing it")
        self._signal(service, proc, signal.SIGKILL, group=True)  # leftovers of its group
        proc.wait()

    def _signal(self, service: Service, proc: subprocess.Popen[str], sig: int, group: bool | None = None) -> None:
        whole_group = service.signal_group if group is None else group
        try:
            if whole_group:
                os.killpg(proc.pid, sig)
            elif proc.poll() is None:
                proc.send_signal(sig)
        except ProcessLookupError:
            pass
