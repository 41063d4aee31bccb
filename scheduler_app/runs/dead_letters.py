"""The dead letters: messages a worker set aside instead of running (runs/poison.py says
when), kept whole in Redis so an operator can read, retry or discard them.

One hash (`bk:dead-letters`: id -> the entry as JSON) and one sorted set
(`bk:dead-letters:order`: id scored by the time it was set aside), written together by a
script that also drops the oldest entries beyond DEAD_LETTERS_MAX. Taking an entry (to
retry or discard it) is one script too, so two operators never both get it.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis
from django.conf import settings

from scheduler_app.connection import shared_client

ENTRIES = "bk:dead-letters"
ORDER = "bk:dead-letters:order"

# KEYS: entries, order. ARGV: id, entry, score, the cap. Answers how many old entries went.
_ADD = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over <= 0 then return 0 end
local old = redis.call('ZRANGE', KEYS[2], 0, over - 1)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
for _, id in ipairs(old) do redis.call('HDEL', KEYS[1], id) end
return over
"""
# KEYS: entries, order. ARGV: id. Answers the entry, gone from both, or nil.
_TAKE = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if entry then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return entry
"""


@dataclass(frozen=True)
class DeadLetter:
    """A message as the worker received it, and why and where it was set aside."""

    task: str
    task_id: str
    reason: str
    worker: str
    deliveries: int
    body: str  # the message body as delivered (JSON text for the platform's messages)
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    headers: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)  # priority, correlation id, reply to
    delivery: dict[str, Any] = field(default_factory=dict)  # exchange, routing key (the queue), redelivered
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    set_aside_at: float = field(default_factory=time.time)

    @property
    def queue(self) -> str:
        return str(self.delivery.get("routing_key") or "")

    @property
    def retries(self) -> int:
        try:
            return int(self.headers.get("retries") or 0)
        except (TypeError, ValueError):
            return 0

    def as_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, raw: bytes | str) -> DeadLetter:
        data = json.loads(raw)
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


def client() -> redis.Redis:
    """The process's client (a web request's waits REDIS_REQUEST_TIMEOUT at most)."""
    return shared_client()


def add(letter: DeadLetter, using: redis.Redis | None = None) -> int:
    """Keep the letter; answers how many of the oldest were dropped to stay within the cap."""
    found = using or client()
    cap = int(settings.DEAD_LETTERS_MAX)
    return int(found.eval(_ADD, 2, ENTRIES, ORDER, letter.id, letter.as_json(), letter.set_aside_at, cap))


def count(using: redis.Redis | None = None) -> int:
    return int((using or client()).zcard(ORDER))


def page(offset: int = 0, limit: int = 50, using: redis.Redis | None = None) -> list[DeadLetter]:
    """Newest first."""
    found = using or client()
    ids: list[bytes] = cast(list[bytes], found.zrevrange(ORDER, offset, offset + limit - 1)) if limit > 0 else []
    if not ids:
        return []
    return [DeadLetter.from_json(raw) for raw in found.hmget(ENTRIES, ids) if raw]


def get(letter_id: str, using: redis.Redis | None = None) -> DeadLetter | None:
    raw = (using or client()).hget(ENTRIES, letter_id)
    return DeadLetter.from_json(raw) if raw else None


def take(letter_id: str, using: redis.Redis | None = None) -> DeadLetter | None:
    """Remove the letter and answer it, or None if it is gone (taken by someone else)."""
    raw = (using or client()).eval(_TAKE, 2, ENTRIES, ORDER, letter_id)
    return DeadLetter.from_json(raw) if raw else None


def put_back(letter: DeadLetter, using: redis.Redis | None = None) -> None:
    """Keep a taken letter again, in its place (a retry whose send failed)."""
    add(letter, using)
