"""The moment the backfill tests (service, API, command) stand at; `backfill_clock` (conftest) holds it."""

from __future__ import annotations

import datetime as dt

NOW = dt.datetime(2025, 3, 10, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
