"""Beatkeeper's Django project: wiring only (settings, Celery app, URLs, WSGI/ASGI)."""

from __future__ import annotations

from project.celery import app as celery_app

__all__ = ["celery_app"]
