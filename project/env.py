"""Typed readers for configuration from the environment.

Every error names the variable and says what a valid value looks like, so a broken
deployment stops at start-up with a message an operator can act on.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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


def database(name: str, default: str) -> dict[str, Any]:
    url = string(name) or default
    hint = "use e.g. postgres://user:password@host:5432/dbname or sqlite:////absolute/path.sqlite3"
    try:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is invalid ({exc}); {hint}.") from None
    if not config.get("NAME"):
        raise ImproperlyConfigured(f"{name}={redact(url)!r} names no database; {hint}.")
    return dict(config)


def redis_url(name: str, default: str) -> str:
    url = string(name) or default
    parts = urlsplit(url)
    hint = "use redis://[:password@]host:6379/0, rediss://... for TLS, or unix:///path/to.sock"
    if parts.scheme not in REDIS_SCHEMES:
        raise ImproperlyConfigured(f"{name}={redact(url)!r} is not a Redis URL; {hint}.")
    if parts.scheme == "unix" and not parts.path:
        raise ImproperlyConfigured(f"{name}={redact(url)!r} names no socket path; {hint}.")
    if parts.scheme != "unix" and not parts.hostname:
        raise ImproperlyConfigured(f"{name}={redact(url)!r} names no host; {hint}.")
    return url


def broker_url(redis: str) -> str:
    """Kombu spells a Redis unix socket `redis+socket://`; redis-py spells it `unix://`."""
    if redis.startswith("unix://"):
        return "redis+socket://" + redis.removeprefix("unix://")
    return redis


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
