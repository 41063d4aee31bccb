"""Every route of the URL configuration, as Django names it ("admin/scheduler_app/pool/add/"):
the tests that must hold an expectation for each page walk it, so a page added later fails them."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, get_resolver


def all_routes() -> set[str]:
    found: set[str] = set()

    def walk(patterns: list[URLPattern | URLResolver], prefix: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            else:
                found.add(prefix + str(pattern.pattern))

    walk(get_resolver().url_patterns, "")
    return found
