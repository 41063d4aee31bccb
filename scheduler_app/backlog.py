"""What waits in the broker: each queue's depth per priority level and the age of its
oldest message, the runs a worker holds for their ETA / countdown, and the purge of a queue.

Kombu's Redis transport keeps one list per queue and priority level: the queue's own name
for level 0, `<queue>\\x06\\x16<level>` for the others (its `sep` and `priority_steps`,
which the channel knows; this project uses ten levels, 0 the highest). It pushes on the
left and takes from the right, so a list's oldest message is its last element; its age is
the `queued_at` every publish stamps in the `beatkeeper` header (scheduler_app/runs/
history.py), unknown for a message sent without it. A message a worker took and holds,
running or waiting for its ETA, is in kombu's `unacked` hash until it is acknowledged.

Every read goes through `broker.bounded_connection()` (each call waits `broker.bound()`).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from celery import states as celery_states
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult
from kombu.utils.encoding import bytes_to_str

from scheduler_app import broker
from scheduler_app.runs import history

SCAN_LIMIT = 1000  # messages of the unacked hash read for the ETA list (the count is exact)
PURGE_CHUNK = 500  # messages read at a time from a purged queue, for their runs' ids
PURGE_KEEP = 3600  # seconds a purged queue's lists are kept aside should a purge die midway


@dataclass(frozen=True)
class Level:
    priority: int
    depth: int
    oldest: dt.datetime | None  # queued_at of its oldest message; None: unknown


@dataclass
class Queue:
    name: str
    levels: list[Level] = field(default_factory=list)  # the non-empty ones, highest priority first
    consumers: list[str] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return sum(level.depth for level in self.levels)

    @property
    def oldest(self) -> dt.datetime | None:
        known = [level.oldest for level in self.levels if level.oldest is not None]
        return min(known) if known else None

    @property
    def oldest_unknown(self) -> bool:
        """Some waiting message's age cannot be told (sent without the platform's header)."""
        return any(level.oldest is None for level in self.levels)


@dataclass(frozen=True)
class Waiting:
    """A run taken by a worker that holds it until its ETA / countdown."""

    id: str
    name: str
    queue: str
    eta: dt.datetime | None


@dataclass(frozen=True)
class Purged:
    messages: int
    runs: int  # PENDING rows marked REVOKED


def queue_names(extra: Iterable[str] = ()) -> list[str]:
    """The default queue, the catalog's, the schedules' own and `extra` (those workers consume)."""
    names = set(broker.known_queues()) | {name for name in extra if name}
    names.update(PeriodicTask.objects.exclude(queue__isnull=True).exclude(queue="").values_list("queue", flat=True))
    return sorted(names)


def purgeable(name: str, consumed: Callable[[], Iterable[str]] = tuple) -> bool:
    """A queue the console may purge: one `queue_names` lists, one kombu has a binding for
    (declared by a publish or a consumer) or one of `consumed()` (the queues workers
    consume, asked last: that waits for their answers). Nothing else: a name such as
    `unacked` or `bk:ledger` is another key, not a queue."""
    if name in queue_names():
        return True
    with broker.bounded_connection() as conn:
        if name in declared(channel_of(conn)):
            return True
    return name in set(consumed())


def declared(channel: Any) -> set[str]:
    """The queues of kombu's binding tables (`_kombu.binding.<exchange>`: sets of
    routing key, pattern and queue joined by the channel's `sep`)."""
    client = channel.client
    found: set[str] = set()
    for key in client.scan_iter(match=channel.keyprefix_queue % "*", count=200):
        if bytes_to_str(client.type(key)) == "set":
            found.update(bytes_to_str(member).split(channel.sep)[-1] for member in client.smembers(key))
    return found


def channel_of(conn: Any) -> Any:
    """The connection's kombu Redis channel (its client, `sep`, `priority_steps`, `_q_for_pri`)."""
    return conn.default_channel


def keys_of(channel: Any, queue: str) -> list[tuple[int, str]]:
    """(level, list key) for each priority level of the queue."""
    return [(level, channel._q_for_pri(queue, level)) for level in channel.priority_steps]


def read(names: Iterable[str]) -> list[Queue]:
    """Each queue's non-empty levels with their oldest message (one round trip for all)."""
    names = list(names)
    with broker.bounded_connection() as conn:
        channel = channel_of(conn)
        pipe = channel.client.pipeline(transaction=False)
        layout = [(name, keys_of(channel, name)) for name in names]
        for _, keys in layout:
            for _, key in keys:
                pipe.llen(key).lindex(key, -1)
        answers = iter(pipe.execute())
        return [Queue(name, levels_of(keys, answers)) for name, keys in layout]


def levels_of(keys: list[tuple[int, str]], answers: Any) -> list[Level]:
    levels = []
    for level, _ in keys:
        depth, oldest = int(next(answers) or 0), next(answers)
        if depth:
            levels.append(Level(level, depth, queued_at(oldest)))
    return levels


def message_of(raw: bytes | str | None) -> dict[str, Any]:
    try:
        message = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):
        return {}
    return message if isinstance(message, dict) else {}


def headers_of(message: dict[str, Any]) -> dict[str, Any]:
    headers = message.get("headers")
    return headers if isinstance(headers, dict) else {}


def moment(value: Any) -> dt.datetime | None:
    """An ISO time from a message; None if absent or not one."""
    try:
        parsed = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    if parsed is not None and timezone.is_naive(parsed):
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def queued_at(raw: bytes | str | None) -> dt.datetime | None:
    header = headers_of(message_of(raw)).get(history.HEADER)
    return moment(header.get("queued_at")) if isinstance(header, dict) else None


# --- Runs waiting for their ETA ------------------------------------------------------------


def waiting(limit: int = SCAN_LIMIT) -> tuple[list[Waiting], int]:
    """Messages workers hold with an ETA (the first `limit` of the unacked hash), soonest
    first, and how many messages the hash holds in all."""
    with broker.bounded_connection() as conn:
        channel = channel_of(conn)
        client = channel.client
        total = int(client.hlen(channel.unacked_key))
        found: list[Waiting] = []
        for number, (_, value) in enumerate(client.hscan_iter(channel.unacked_key, count=200)):
            if number >= limit:
                break
            found += eta_of(value)
    found.sort(key=lambda run: (run.eta is None, run.eta or timezone.now()))
    return found, total


def eta_of(value: bytes) -> list[Waiting]:
    """The held message as a waiting run, if it has an ETA (kombu stores [message, exchange, key])."""
    try:
        message, _, routing_key = json.loads(value)
    except (ValueError, TypeError, RecursionError):
        return []
    headers = headers_of(message if isinstance(message, dict) else {})
    if not headers.get("eta"):
        return []
    return [Waiting(str(headers.get("id", "")), str(headers.get("task", "")), str(routing_key), moment(headers["eta"]))]


# --- Purge -----------------------------------------------------------------------------------


def purge(queue: str, *, by: str) -> Purged:
    """Empty the queue (every priority level) and mark the PENDING rows of its runs REVOKED,
    "purged by <by>", so they do not stay queued in the runs list for ever.

    The lists are first renamed aside in one step (a Lua script; a key that is not a list
    is left alone): a message published meanwhile goes to a new list and is not lost; those
    aside are read for their runs' ids, then dropped. Should that fail, they are put back."""
    with broker.bounded_connection() as conn:
        channel = channel_of(conn)
        client = channel.client
        moved = set_aside_pairs(client, [key for _, key in keys_of(channel, queue)])
        aside = [target for _, target in moved]
        try:
            ids, messages = ids_in(client, aside)
            if aside:
                client.delete(*aside)
        except BaseException:
            put_back(client, moved)
            raise
    return Purged(messages, mark_purged(ids, by))


SET_ASIDE = """
local half = #KEYS / 2
local moved = {}
for i = 1, half do
  if redis.call('TYPE', KEYS[i]).ok == 'list' then
    redis.call('RENAME', KEYS[i], KEYS[half + i])
    redis.call('EXPIRE', KEYS[half + i], ARGV[1])
    moved[#moved + 1] = i
  end
end
return moved
"""

PUT_BACK = """
local half = #KEYS / 2
for i = 1, half do
  local home, aside = KEYS[i], KEYS[half + i]
  if redis.call('TYPE', aside).ok == 'list' then
    if redis.call('EXISTS', home) == 0 then
      redis.call('RENAME', aside, home)
      redis.call('PERSIST', home)
    elseif redis.call('TYPE', home).ok == 'list' then
      local message = redis.call('LPOP', aside)
      while message do
        redis.call('RPUSH', home, message)
        message = redis.call('LPOP', aside)
      end
      redis.call('DEL', aside)
    end
  end
end
return half
"""


def set_aside_pairs(client: Any, keys: list[str]) -> list[tuple[str, str]]:
    """(list key, where it was moved) for each of `keys` that is a list, renamed at once;
    one that does not exist (an empty level) or is not a list is not touched."""
    if not keys:
        return []
    token = uuid.uuid4().hex
    targets = [f"bk:purge:{token}:{number}" for number in range(len(keys))]
    moved = client.register_script(SET_ASIDE)(keys=[*keys, *targets], args=[PURGE_KEEP])
    return [(keys[int(i) - 1], targets[int(i) - 1]) for i in moved]


def set_aside(client: Any, keys: list[str]) -> list[str]:
    return [target for _, target in set_aside_pairs(client, keys)]


def put_back(client: Any, moved: list[tuple[str, str]]) -> None:
    """The lists set aside back in their queue, behind (older than) any message sent since."""
    if moved:
        client.register_script(PUT_BACK)(keys=[home for home, _ in moved] + [aside for _, aside in moved])


def ids_in(client: Any, keys: list[str]) -> tuple[list[str], int]:
    ids: list[str] = []
    messages = 0
    for key in keys:
        start = 0
        while chunk := client.lrange(key, start, start + PURGE_CHUNK - 1):
            messages += len(chunk)
            ids += [str(headers_of(message_of(raw)).get("id", "")) for raw in chunk]
            start += PURGE_CHUNK
    return [run_id for run_id in ids if run_id], messages


def mark_purged(ids: list[str], by: str) -> int:
    now = timezone.now()
    marked = 0
    for start in range(0, len(ids), PURGE_CHUNK):
        with transaction.atomic():
            pending = TaskResult.objects.filter(task_id__in=ids[start : start + PURGE_CHUNK],
                                                status=celery_states.PENDING)  # fmt: skip
            for row in pending.select_for_update():
                meta = {**history.run_context(row), "revoked_by": by, "revoked_at": now.isoformat()}
                marked += TaskResult.objects.filter(pk=row.pk, status=celery_states.PENDING).update(
                    status=celery_states.REVOKED, date_done=now, meta=json.dumps(meta),
                    result=json.dumps({"reason": f"purged by {by}"}),
                )  # fmt: skip
    return marked


def consumers_of(queues: list[Queue], consumed: dict[str, list[str]]) -> None:
    """Fill each queue's consumers from {worker: [queue, ...]}."""
    for queue in queues:
        queue.consumers = sorted(worker for worker, names in consumed.items() if queue.name in names)
