from __future__ import annotations

from django.apps import AppConfig


class MaintenanceConfig(AppConfig):
    name = "maintenance"
    verbose_name = "Maintenance tasks"

    def ready(self) -> None:
        from maintenance import tasks  # noqa: F401  (declares the catalog's definitions)
