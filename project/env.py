"""Typed readers for configuration from the environment.

Every error names the variable and says what a valid value looks like, so a broken
deployment stops at start-up with a message an operator can act on.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import keyword
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured, ValidationError

REDIS_SCHEMES = ("redis", "rediss", "unix")


def string(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def secret(name: str) -> str:
    """NAME, or the contents of the file named by NAME_FILE (Docker/Kubernetes secrets)."""
    path = string(f"{name}_FILE")
    if not path:
        return string(name)
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc.strerror}.") from exc


def boolean(name: str, default: bool) -> bool:
    raw = string(name).lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean: use true or false.")


def number(name: str, default: float, minimum: float = 0) -> float:
    raw = string(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number.") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r} must be at least {minimum:g}.")
    return value


def integer(name: str, default: int, minimum: int = 0) -> int:
    value = number(name, default, minimum)
    if value != int(value):
        raise ImproperlyConfigured(f"{name}={string(name)!r} must be a whole number.")
    return int(value)


def items(name: str, default: str = "", separator: str = ",") -> list[str]:
    return [item.strip() for item in string(name, default).split(separator) if item.strip()]


def networks(name: str, default: str = "") -> list[str]:
    """Comma-separated IP networks (CIDR; a bare address is one host), checked at start-up."""
    found = []
    for item in items(name, default):
        try:
            found.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name} has {item!r}, not an IP network: use e.g. 10.0.0.0/8,192.168.1.7,::1/128."
            ) from None
    return found


def emails(name: str) -> list[str]:
    """Comma-separated e-mail addresses, each checked at start-up."""
    from django.core.validators import validate_email  # needs no settings

    found = items(name)
    for item in found:
        try:
            validate_email(item)
        except ValidationError:
            raise ImproperlyConfigured(
                f"{name} has {item!r}, not an e-mail address: use e.g. ops@example.com,oncall@example.com."
            ) from None
    return found


def http_url(name: str) -> str:
    """An http(s) URL with a host, or "" when unset."""
    url = string(name)
    parts = urlsplit(url)
    if url and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise ImproperlyConfigured(
            f"{name}={redact(url)!r} is not an http(s) URL: use e.g. https://hooks.example.com/x."
        )
    return url


def apps(name: str, installed: list[str]) -> list[str]:
    """Comma-separated Django apps (dotted module names) to add to `installed`, each one
    importable now: a typo or a folder off the path stops start-up here, saying so."""
    found: list[str] = []
    for item in items(name):
        if not all(part.isidentifier() and not keyword.iskeyword(part) for part in item.split(".")):
            raise ImproperlyConfigured(
                f"{name} has {item!r}, not a Python module name: use e.g. reports,billing.jobs (comma-separated)."
            )
        if item in installed or item in found:
            raise ImproperlyConfigured(f"{name} has {item!r}, which is installed already: name each app once.")
        if not _importable(item):
            raise ImproperlyConfigured(
                f"{name} has {item!r}, which Python cannot import from {Path.cwd()}: put the app's folder "
                f"in the checkout, next to manage.py, or add the folder that holds it to PYTHONPATH."
            )
        found.append(item)
    return found


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def database(name: str, default: str) -> dict[str, Any]:
    url = string(name) or default
    hint = "use e.g. postgres://user:password@host:5432/dbname or sqlite:////absolute/path.sqlite3"
    parts = urlsplit(url)
    port_problem = "" if parts.scheme == "sqlite" else _port_problem(parts)  # `sqlite://:memory:` has no port
    if port_problem:
        raise ImproperlyConfigured(f"{name}={redact(url)!r} {port_problem}; {hint}.")
    try:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is invalid ({exc}); {hint}.") from None
    if not config.get("NAME"):
        raise ImproperlyConfigured(f"{name}={redact(url)!r} names no database; {hint}.")
    if config["ENGINE"] == "django.db.backends.sqlite3" and in_memory(str(config["NAME"])):
        raise ImproperlyConfigured(
            f"{name}={redact(url)!r} is an in-memory SQLite database: each process (web, worker, beat, "
            f"recorder) would have its own, empty one; {hint}."
        )
    return dict(config)


def in_memory(name: str) -> bool:
    """SQLite's in-memory names (`sqlite://` and `sqlite://:memory:` parse to the first)."""
    return name == ":memory:" or name.startswith("file::memory:") or "mode=memory" in name


def _port_problem(parts: SplitResult) -> str:
    """What is wrong with the URL's port ("" when it has none or a valid one)."""
    try:
        port = parts.port  # ValueError: not a number, or beyond 65535
    except ValueError:
        return f"has port {parts.netloc.rpartition('@')[2].rpartition(':')[2]!r}, not a port number (1-65535)"
    return "has port 0, not a port number (1-65535)" if port == 0 else ""


def redis_url(name: str, default: str) -> str:
    url = string(name) or default
    parts = urlsplit(url)
    hint = (
        "use redis://[:password@]host:6379/0, rediss://... for TLS, unix:///path/to.sock, or "
        "sentinel://[:password@]host1:26379,host2:26379/0?service_name=mymaster for Redis Sentinel"
    )
    if parts.scheme == "sentinel":
        sentinel(url, name)
        return url
    if parts.scheme not in REDIS_SCHEMES:
        raise ImproperlyConfigured(f"{name}={redact(url)!r} is not a Redis URL; {hint}.")
    if parts.scheme == "unix" and not parts.path:
        raise ImproperlyConfigured(f"{name}={redact(url)!r} names no socket path; {hint}.")
    if parts.scheme != "unix" and not parts.hostname:
        raise ImproperlyConfigured(f"{name}={redact(url)!r} names no host; {hint}.")
    problem = _port_problem(parts) or _redis_db_problem(parts)
    if problem:
        raise ImproperlyConfigured(f"{name}={redact(url)!r} {problem}; {hint}.")
    return url


REDIS_MAX_DB = 2**31 - 2  # Redis' `databases` is at most INT_MAX; the default server has 0-15


def _redis_db_problem(parts: SplitResult) -> str:
    """What is wrong with the database number: `/N` (or `?db=N`, a socket's only way)."""
    found = [value for key, value in parse_qsl(parts.query, keep_blank_values=True) if key == "db"]
    path = "" if parts.scheme == "unix" else parts.path.strip("/")
    for db in [*found, path] if path else found:
        if not (db.isascii() and db.isdigit()):
            return f"has database {db!r}, not a database number (0, 1, ..., 15 on a default server)"
        if int(db) > REDIS_MAX_DB:
            return f"has database {db}, beyond what Redis allows (0 to {REDIS_MAX_DB}; 0-15 on a default server)"
    return ""


@dataclass(frozen=True)
class SentinelURL:
    """REDIS_URL naming Redis Sentinel: the sentinels to ask, the service (master) name, and
    the master's database and credentials; the sentinels' own password is a query option.

    `sentinel://[[username]:password@]host1[:26379][,host2[:26379]...][/db]?service_name=NAME
    [&sentinel_password=...][&sentinel_username=...]`
    """

    hosts: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None


SENTINEL_HINT = "use sentinel://[:password@]host1:26379,host2:26379/0?service_name=mymaster"
SENTINEL_OPTIONS = ("service_name", "sentinel_username", "sentinel_password")
SENTINEL_HOST = re.compile(r"\[(?P<v6>[0-9A-Fa-f:.]+)\](?::(?P<p6>[^:]*))?|(?P<host>[^:\[\]]+)(?::(?P<port>[^:]*))?")


def sentinel(url: str, name: str = "REDIS_URL") -> SentinelURL | None:
    """The parts of a `sentinel://` URL, checked; None for any other URL."""
    parts = urlsplit(url)
    if parts.scheme != "sentinel":
        return None

    def refuse(problem: str) -> ImproperlyConfigured:
        return ImproperlyConfigured(f"{name}={redact(url)!r} {problem}; {SENTINEL_HINT}.")

    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    options = _sentinel_options(parts.query, refuse)
    if not hostlist:
        raise refuse("names no sentinel")
    if not options.get("service_name"):
        raise refuse("names no service: add ?service_name=<the master's name in the sentinels' configuration>")
    return SentinelURL(
        hosts=tuple(_sentinel_host(item, refuse) for item in hostlist.split(",")),
        service_name=options["service_name"],
        db=_sentinel_db(parts.path, refuse),
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
    )


def _sentinel_options(query: str, refuse: Callable[[str], ImproperlyConfigured]) -> dict[str, str]:
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(SENTINEL_OPTIONS))
    if unknown:
        raise refuse(f"has unknown option(s) {', '.join(unknown)} (known: {', '.join(SENTINEL_OPTIONS)})")
    return options


def _sentinel_host(item: str, refuse: Callable[[str], ImproperlyConfigured]) -> tuple[str, int]:
    """`host`, `host:port` or `[ipv6]:port`; the port defaults to Sentinel's 26379."""
    found = SENTINEL_HOST.fullmatch(item)
    if not found:
        raise refuse(f"has {item!r} where a sentinel's host[:port] belongs")
    host, port = found["v6"] or found["host"], found["p6"] or found["port"] or "26379"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise refuse(f"has port {port!r} for sentinel {host}, not a port number (1-65535)")
    return host, int(port)


def _sentinel_db(path: str, refuse: Callable[[str], ImproperlyConfigured]) -> int:
    db = path.strip("/") or "0"
    if not db.isdigit():
        raise refuse(f"has database {db!r}, not a database number (0, 1, ...)")
    return int(db)


def broker_url(redis: str) -> str:
    """Kombu spells a Redis unix socket `redis+socket://`; redis-py spells it `unix://`.
    Sentinels are kombu's `sentinel://host:26379/0;sentinel://host2:26379/0`, each with the
    master's credentials (the sentinels' own and the service name are transport options)."""
    found = sentinel(redis)
    if found is not None:
        userinfo = urlsplit(redis).netloc.rpartition("@")[0]
        at = f"{userinfo}@" if userinfo else ""
        return ";".join(f"sentinel://{at}{_netloc(host)}:{port}/{found.db}" for host, port in found.hosts)
    if redis.startswith("unix://"):
        return "redis+socket://" + redis.removeprefix("unix://")
    return redis


def _netloc(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def broker_transport_options(redis: str, socket_timeout: float) -> dict[str, Any]:
    """Kombu's Sentinel options for a `sentinel://` REDIS_URL (none for any other)."""
    found = sentinel(redis)
    if found is None:
        return {}
    return {"master_name": found.service_name, "sentinel_kwargs": sentinel_kwargs(found, socket_timeout)}


def sentinel_kwargs(found: SentinelURL, socket_timeout: float) -> dict[str, Any]:
    """How to talk to the sentinels themselves (their password is not the master's)."""
    kwargs: dict[str, Any] = {"socket_connect_timeout": min(socket_timeout, 3), "socket_timeout": socket_timeout}
    if found.sentinel_username:
        kwargs["username"] = found.sentinel_username
    if found.sentinel_password:
        kwargs["password"] = found.sentinel_password
    return kwargs


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        url = url.replace(f":{parts.password}@", ":***@")
    return re.sub(r"([?&])([^=&#]*)=([^&#]*)", _redact_option, url)


def _redact_option(match: re.Match[str]) -> str:
    """A query option whose name (however it is percent-encoded) says password, hidden."""
    separator, name, value = match.groups()
    return f"{separator}{name}={'***' if 'password' in unquote(name).lower() else value}"
