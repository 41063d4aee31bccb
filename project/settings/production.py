"""Production: every secret and server from the environment; `check --deploy` clean."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from project import env
from project.settings.base import *  # noqa: F403
from project.settings.base import MIDDLEWARE, SECRET_KEY

for _name in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL"):
    _set = SECRET_KEY if _name == "SECRET_KEY" else env.string(_name)
    if not _set:
        raise ImproperlyConfigured(
            f"{_name} is not set. Production settings need it from the environment "
            f"(see deploy/.env.example); for local use run `make run`, which uses "
            f"project.settings.local."
        )

DEBUG = False
# WhiteNoise serves the admin's static files (collected into STATIC_ROOT at build time).
MIDDLEWARE = [*MIDDLEWARE[:2], "whitenoise.middleware.WhiteNoiseMiddleware", *MIDDLEWARE[2:]]
SECURE_SSL_REDIRECT = env.boolean("SECURE_SSL_REDIRECT", True)
if env.boolean("TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env.integer("SECURE_HSTS_SECONDS", 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.boolean("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env.boolean("SECURE_HSTS_PRELOAD", True)  # the header only; submitting is yours
SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
