"""Local development: `make run`. DEBUG on, a throw-away secret, loopback hosts only."""

from __future__ import annotations

from project import env
from project.settings.base import *  # noqa: F403
from project.settings.base import SECRET_KEY, VAR_DIR

DEBUG = env.boolean("DEBUG", True)
ALLOWED_HOSTS = env.items("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
METRICS_ALLOWED_IPS = env.networks("METRICS_ALLOWED_IPS", "127.0.0.0/8,::1/128")  # /metrics from this machine
if not SECRET_KEY:
    # Made once per checkout and kept under var/, so sessions survive restarts.
    _key_file = VAR_DIR / "local-secret-key"
    if not _key_file.exists():
        import secrets

        VAR_DIR.mkdir(parents=True, exist_ok=True)
        _key_file.write_text(secrets.token_urlsafe(64), encoding="utf-8")
        _key_file.chmod(0o600)
    SECRET_KEY = _key_file.read_text(encoding="utf-8").strip()
