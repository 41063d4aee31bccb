"""A run's state history: when it was queued, started, retried and finished, kept in its
row's meta as `states`, a compact list of `[state, ISO time]`, oldest first.

The recorder (recorder.py) folds every state change of a batch into it, on top of what the
row already holds: each pair once (a batch written twice adds nothing), a state repeated in
a row kept once at its first time (a run reporting progress a thousand times keeps one
PROGRESS), and at most `MAX_STATES` pairs (the first and the last halves of a longer one).
A short run's single write carries its start, which becomes its STARTED entry. Celery
writes no RECEIVED state to the result backend (only task events carry it, and they are
off): the worker's main process notes when it took the message (`history.stamp_received`)
and the run's first write carries it as a RECEIVED entry of the event's own `states`,
merged here with the rest. The queued time is the run context's `queued_at`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from celery import states as celery_states

KEY = "states"
RECEIVED = "RECEIVED"
MAX_STATES = 24
State = tuple[str, str]  # (state, ISO time)


def of_event(status: str, at: dt.datetime, started: dt.datetime | None) -> list[State]:
    """The history entries one ledger event stands for."""
    entries = [(celery_states.STARTED, started.isoformat())] if started and status != celery_states.STARTED else []
    return [*entries, (status, at.isoformat())]


def stored(meta: Any) -> list[State]:
    """The history in a row's meta text (empty for meta that is not ours)."""
    value = _object(meta)
    found = value.get(KEY) if value is not None else None
    if not isinstance(found, list):
        return []
    return [(str(pair[0]), str(pair[1])) for pair in found if isinstance(pair, list | tuple) and len(pair) == 2]


def merged(earlier: list[State], later: list[State]) -> list[State]:
    """Both histories in time order, each pair once, repeats collapsed, bounded."""
    timed = sorted({(_time(at), status, at) for status, at in [*earlier, *later] if _time(at) is not None})
    out: list[State] = []
    for _, status, at in timed:
        if not out or out[-1][0] != status:
            out.append((status, at))
    if len(out) > MAX_STATES:
        half = MAX_STATES // 2
        out = out[:half] + out[-half:]
    return out


def with_states(meta: Any, row_meta: Any, new: list[State]) -> Any:
    """`meta` (the event's meta text) with the merged history of the row's and the batch's
    states; as it came when it is not a JSON object."""
    value = _object(meta)
    if value is None or not new:
        return meta
    value[KEY] = [list(pair) for pair in merged([*stored(row_meta), *stored(value)], new)]
    return json.dumps(value)


def _object(meta: Any) -> dict[str, Any] | None:
    try:
        value = json.loads(meta) if isinstance(meta, str | bytes) else meta
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _time(at: str) -> dt.datetime | None:
    try:
        moment = dt.datetime.fromisoformat(at)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo is not None else None
