"""Probes before anything else: `/healthz`, `/readyz` and `/metrics` answer ahead of host
validation, the HTTPS redirect, sessions and CSRF, so a probe or a Prometheus scrape that
calls a pod by its IP address over plain HTTP gets an answer, not a 400 or a 301.

None of them builds a URL from the Host header (what host validation protects); `/metrics`
has its own access control (scheduler_app/monitoring/views.py)."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from scheduler_app.monitoring import views as health_views

HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
METRICS_PATH = "/metrics"


def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. No database or broker touched."""
    return JsonResponse({"status": "ok"})


PROBES: dict[str, Callable[[HttpRequest], HttpResponse]] = {
    HEALTHZ_PATH: healthz,
    READYZ_PATH: health_views.readyz,
    METRICS_PATH: health_views.metrics,
}


class ProbeMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = PROBES.get(request.path_info)
        if probe is not None and request.method in ("GET", "HEAD"):
            return probe(request)
        return self.get_response(request)


HealthzMiddleware = ProbeMiddleware  # the name settings used before /readyz and /metrics joined


class RefuseNulMiddleware:
    """A query parameter with a NUL character gets a 400 saying so. PostgreSQL refuses
    NUL in text, so a filter or search carrying one would otherwise end as a 500 (the API
    fuzz test found it); forms and serializers already refuse NUL in what they save."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        bad = sorted({key for key, value in request.GET.lists() if "\x00" in key or any("\x00" in v for v in value)})
        if bad:
            message = f"query parameter(s) {', '.join(map(repr, bad))} contain a NUL character; remove it."
            if request.path_info.startswith("/api/"):
                return JsonResponse({"detail": message}, status=400)
            return HttpResponse(message, status=400, content_type="text/plain; charset=utf-8")
        return self.get_response(request)
