"""A task the web process knows and the test workers do not (they are started without this
module): as a task added to an app whose worker was not restarted."""

from __future__ import annotations

from typing import Any

from scheduler_app.catalog import platform_task


@platform_task(name="tests.web_only.report")
def report(key: str) -> dict[str, Any]:
    return {"key": key}
