"""Probes before anything else: `/healthz`, `/readyz` and `/metrics` answer ahead of host
validation, the HTTPS redirect, sessions and CSRF, so a probe or a Prometheus scrape that
calls a pod by its IP address over plain HTTP gets an answer, not a 400 or a 301.

None of them builds a URL from the Host header (what host validation protects); `/metrics`
has its own access control (scheduler_app/monitoring/views.py)."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.utils.html import format_html

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
            response = probe(request)  # ahead of SecurityMiddleware, which would set this header
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            return response
        if probe is not None:  # a probe only reads: say so, ahead of host and CSRF checks
            refused = HttpResponseNotAllowed(
                ["GET", "HEAD"], content=b"Only GET and HEAD.\n", content_type="text/plain"
            )
            refused.headers["X-Content-Type-Options"] = "nosniff"
            return refused
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


class BodyLimitMiddleware:
    """A body larger than DATA_UPLOAD_MAX_MEMORY_SIZE gets a 413 that says what was too
    large and the limit, JSON under /api/ and a page elsewhere, instead of Django's bare
    "Bad Request (400)". Checked on Content-Length before anything reads the body; a form
    with too many fields, and a body found too large later, are answered the same way."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        length = request.META.get("CONTENT_LENGTH") or "0"
        if limit is not None and length.isdecimal() and int(length) > limit:
            return too_large(request, f"The request body is {int(length):,} bytes; at most {limit:,} bytes are taken.")
        if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
            try:  # read here (CsrfViewMiddleware reads it next), where a refusal can still be answered
                request.POST  # noqa: B018
            except (RequestDataTooBig, TooManyFieldsSent) as exc:
                return self.process_exception(request, exc) or self.get_response(request)
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if isinstance(exc, RequestDataTooBig):
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            return too_large(request, f"The request body is larger than {limit:,} bytes, the most that is taken.")
        if isinstance(exc, TooManyFieldsSent):
            most = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
            return refusal(request, 400, f"The form sent more than {most:,} fields, the most that is taken.")
        return None


def too_large(request: HttpRequest, message: str) -> HttpResponse:
    return refusal(request, 413, f"{message} Send less: shorter arguments, notes or descriptions.")


def refusal(request: HttpRequest, status: int, message: str) -> HttpResponse:
    if request.path_info.startswith("/api/"):
        return JsonResponse({"detail": message}, status=status)
    title = "Too large" if status == 413 else "Too many fields"
    page = format_html(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{} ({})</title></head>"
        "<body><h1>{}</h1><p>{}</p><p>Nothing was saved. Go back, shorten what you entered and send it again.</p>"
        "</body></html>",
        title, status, title, message,
    )  # fmt: skip
    return HttpResponse(page, status=status, content_type="text/html; charset=utf-8")
