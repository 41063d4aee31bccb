"""Records the console shows but never lets anyone add, edit or delete (runs, the audit log)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest


class ReadOnly:
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
