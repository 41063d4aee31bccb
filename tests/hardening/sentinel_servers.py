"""A replicated Redis of a test's own: a primary, a replica and one sentinel, each a
redis-server under the test's tmp_path on a port reserved for the test run (tests/ports.py;
never the machine's 6379), kept through restarts.

The sentinel runs with quorum 1 and a one-second down-after, so it promotes the replica
within about two seconds of the primary's death. The servers keep nothing on disk
(`--save "" --appendonly no`): a restart starts empty, as a Redis without persistence does.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import cast

import redis

from tests.ports import free_port, release
from tests.processes import wait_for
from tests.runs.servers import answers_as, binary

SERVICE = "bkprimary"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


class Node:
    """One redis-server (a data node, or a sentinel when `sentinel_conf` is given)."""

    def __init__(self, directory: Path, *options: str, sentinel_conf: str | None = None) -> None:
        self.directory, self.port, self.options = directory, free_port(), options
        self.sentinel_conf = sentinel_conf
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=2)

    def answers(self) -> bool:
        """Our own process answers on the port (not another program that took it)."""
        return self.proc is not None and answers_as(self.client(), self.proc, self.port, self.directory / "log")

    def argv(self) -> list[str]:
        if self.sentinel_conf is not None:  # a sentinel rewrites its file: one of its own, writable
            conf = self.directory / "sentinel.conf"
            conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n{self.sentinel_conf}")
            return [binary("redis-server"), str(conf), "--sentinel", "--logfile", str(self.directory / "log")]
        where = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        nothing_kept = ["--save", "", "--appendonly", "no"]
        return [binary("redis-server"), *where, *nothing_kept, "--logfile", str(self.directory / "log"), *self.options]

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(self.answers, 20, f"redis-server on port {self.port}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)
        self.proc = None

    def release(self) -> None:
        """Killed, and its port given back."""
        self.kill()
        release(self.port)

    def restart_empty(self) -> None:
        """Killed and started again on the same port: with no persistence, empty."""
        self.kill()
        self.start()

    def log(self) -> str:
        try:
            return (self.directory / "log").read_text(errors="replace")
        except OSError:
            return ""


class ReplicatedRedis:
    def __init__(self, base: Path) -> None:
        self.primary = Node(base / "primary")
        self.replica = Node(base / "replica")
        self.sentinel = Node(base / "sentinel", sentinel_conf="")

    @property
    def url(self) -> str:
        """REDIS_URL for the platform: the sentinel, and the service it watches."""
        return f"sentinel://127.0.0.1:{self.sentinel.port}/0?service_name={SERVICE}"

    def start(self) -> None:
        self.primary.start()
        self.replica.options = ("--replicaof", "127.0.0.1", str(self.primary.port))
        self.replica.start()
        wait_for(lambda: self.replica.client().info("replication").get("master_link_status") == "up", 20,
                 "the replica to sync")  # fmt: skip
        self.sentinel.sentinel_conf = (
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
        )
        self.sentinel.start()
        wait_for(self.replica_is_promotable, 30, "the sentinel to know the replica well enough to promote it")

    def replica_is_promotable(self) -> bool:
        """The sentinel is connected to the replica and has fresh INFO from it (else a
        failover answers NOGOODSLAVE)."""
        known = self.sentinel.client().sentinel_slaves(SERVICE)
        return any(not r["is_disconnected"] and r.get("master-link-status") == "ok" and r["info-refresh"] < 2000
                   for r in known)  # fmt: skip

    def primary_port(self) -> int:
        host_port = cast("tuple[str, int]", self.sentinel.client().sentinel_get_master_addr_by_name(SERVICE))
        return int(host_port[1])

    def wait_for_promotion(self, timeout: float = 20) -> None:
        """The sentinel names the replica as the primary, and the replica takes writes."""

        def promoted() -> bool:
            try:
                return self.primary_port() == self.replica.port and bool(self.replica.client().set("bk:test:w", "1"))
            except redis.RedisError:
                return False

        wait_for(promoted, timeout, "the sentinel to promote the replica", interval=0.05)

    def stop(self) -> None:
        for node in (self.sentinel, self.replica, self.primary):
            node.release()


@contextmanager
def replicated_redis(base: Path) -> Iterator[ReplicatedRedis]:
    servers = ReplicatedRedis(base)
    with ExitStack() as stack:
        stack.callback(servers.stop)
        servers.start()
        yield servers


@contextmanager
def bare_redis(base: Path) -> Iterator[Node]:
    """One redis-server without persistence, to restart empty."""
    node = Node(base)
    try:
        node.start()
        yield node
    finally:
        node.release()
