"""TCP ports for the servers a test starts (redis-server, PostgreSQL, SMTP, ...), safe when
several test runs share the machine.

Binding port 0, closing the socket and handing the number to a server races: until the
server binds it, the kernel may give the same number to another run's probe or to any
outgoing connection (both come from the ephemeral range, 32768-60999 on Linux). So a port
here is taken below the ephemeral range, checked free by binding it, and reserved with a
lock file (`flock`) that this process holds until it exits or calls `release`: no other
process that asks here is given it, even while a test has its server stopped to restart it
on the same port. A lock dies with its process, so a killed run leaves no stale reservation.

A server started on such a port must still check that what answers there is its own
process (an unrelated program may listen anywhere): `tests/runs/servers.py` and
`tests/hardening/sentinel_servers.py` compare the pid the server reports with their own.
"""

from __future__ import annotations

import contextlib
import fcntl
import random
import socket
import tempfile
from pathlib import Path
from typing import IO

LOCKS = Path(tempfile.gettempdir()) / "beatkeeper-test-ports"
LOWEST = 20000
HIGHEST = 30000  # below Kubernetes' NodePort range (30000-32767), which kube-proxy may take on 127.0.0.1
_random = random.SystemRandom()
ATTEMPTS = 200
_held: dict[int, IO[bytes]] = {}


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out by itself (bind to 0, outgoing connections)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as probe:  # no SO_REUSEADDR: a port in TIME_WAIT counts as taken
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _lock(port: int) -> IO[bytes] | None:
    if not LOCKS.is_dir():
        LOCKS.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):  # shared by every user's runs, as /tmp is
            LOCKS.chmod(0o1777)
    try:
        handle = (LOCKS / f"{port}.lock").open("ab")
    except OSError:  # another user's lock file: theirs
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, reserved for this process."""
    highest = min(HIGHEST, _ephemeral_low())
    if highest < LOWEST + 1000:  # an ephemeral range reaching this low: the lock and the bind check still hold
        highest = LOWEST + 1000
    for _ in range(ATTEMPTS):
        port = _random.randrange(LOWEST, highest)  # the OS's randomness: a test's random.seed() leaves it alone
        if port in _held:
            continue
        handle = _lock(port)
        if handle is None:  # another run holds it
            continue
        if not _bindable(port):  # something outside the test runs uses it
            handle.close()
            continue
        _held[port] = handle
        return port
    raise AssertionError(f"no free port in {LOWEST}-{highest} after {ATTEMPTS} tries")


def release(port: int) -> None:
    """Give the reservation back (its server has stopped for good)."""
    handle = _held.pop(port, None)
    if handle is not None:
        with contextlib.suppress(OSError):
            handle.close()
