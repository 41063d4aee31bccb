"""`python -m scheduler_app.local.orphan_guard CMD ARGS...`: exec CMD so that it receives
SIGTERM if the launcher that started it dies, even by SIGKILL (Linux's parent-death
signal, which survives exec). Elsewhere it just execs CMD."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() == 1:  # the launcher died before the guard was armed
            sys.exit(1)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
