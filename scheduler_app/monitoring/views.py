"""`/readyz` and `/metrics`, answered by `ProbeMiddleware` (scheduler_app/middleware.py)
ahead of host validation, like `/healthz`. Neither answer may be cached by a proxy: a
stale "ready" or a stale figure is worse than none.

`/metrics` is protected by METRICS_TOKEN (a bearer token, compared in constant time),
METRICS_ALLOWED_IPS (client networks, read from REMOTE_ADDR: the connecting address, never
a forwarded header a client could forge), or both, when both are set. With neither it
answers 403: figures about every schedule are not for anyone who can reach the port.
Local settings allow loopback addresses, so `make run` serves it on 127.0.0.1.
"""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.cache import add_never_cache_headers
from prometheus_client import CONTENT_TYPE_LATEST

from scheduler_app.monitoring import metrics as metrics_text
from scheduler_app.monitoring import readiness

READYZ_CACHE_KEY = "beatkeeper:readyz"
READYZ_CACHE_SECONDS = 2  # a flood of probes costs one round of checks every 2 s, not one per call


def readyz(request: HttpRequest) -> HttpResponse:
    """200 when every check passes, else 503; each check with ok, error, details and time."""
    body = cache.get(READYZ_CACHE_KEY)
    if body is None:  # one round of checks per READYZ_CACHE_SECONDS per process, however many callers
        checks = readiness.check_all()
        body = {
            "status": "ok" if all(check.ok for check in checks.values()) else "error",
            "failing": [name for name, check in checks.items() if not check.ok],
            "checks": {name: check.as_dict() for name, check in checks.items()},
        }
        cache.set(READYZ_CACHE_KEY, body, READYZ_CACHE_SECONDS)
    response = JsonResponse(body, status=200 if body["status"] == "ok" else 503)
    add_never_cache_headers(response)
    # Not an error of this request: a probe every few seconds would flood the error log
    # (django.request logs every 5xx) while, say, beat restarts. Metrics and alerts say it.
    response._has_been_logged = True  # type: ignore[attr-defined]  # django-stubs: private flag log_response reads
    return response


def metrics(request: HttpRequest) -> HttpResponse:
    refusal = metrics_refusal(request)
    if refusal is not None:
        add_never_cache_headers(refusal)
        return refusal
    response = HttpResponse(metrics_text.exposition(), content_type=CONTENT_TYPE_LATEST)
    add_never_cache_headers(response)
    return response


def metrics_refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the caller may read the metrics, else the 401 or 403 to answer."""
    token, networks = settings.METRICS_TOKEN, settings.METRICS_ALLOWED_IPS
    if not token and not networks:
        return plain(403, "/metrics is off: set METRICS_TOKEN and/or METRICS_ALLOWED_IPS.\n")
    if not token and "HTTP_X_FORWARDED_FOR" in request.META:  # the address seen is the proxy's, not the caller's
        return plain(403, "Forbidden: through a proxy, /metrics needs METRICS_TOKEN (the address is the proxy's).\n")
    if networks and not address_allowed(request.META.get("REMOTE_ADDR", ""), networks):
        return plain(403, "Forbidden: this address may not read /metrics.\n")
    if token and not bearer_matches(request.META.get("HTTP_AUTHORIZATION", ""), token):
        response = plain(401, "Unauthorized: send Authorization: Bearer <METRICS_TOKEN>.\n")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return None


def address_allowed(address: str, networks: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 on a dual-stack socket is 10.0.0.1
    return any(ip in ipaddress.ip_network(network) for network in networks)


def bearer_matches(header: str, token: str) -> bool:
    """`Bearer <token>`, compared in constant time (no timing hints about the token)."""
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def plain(status: int, text: str) -> HttpResponse:
    return HttpResponse(text, status=status, content_type="text/plain; charset=utf-8")
