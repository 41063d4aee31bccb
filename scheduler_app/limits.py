"""The limits every door applies to what it takes (the API, the admin, run now, the
commands, the audit trail): how deep and how large a JSON value may be, no NUL character
anywhere (PostgreSQL refuses it in text and JSON), and how long free text may be.

Every check here is iterative, so a value nested thousands of levels deep is measured,
never recursed into: it cannot raise RecursionError in the check, in `json.loads`, in
pickling or in a worker. A refusal is a `LimitExceeded` whose text names the field and
the limit ("args: nested 500 levels deep; at most 32 are allowed.")."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

MAX_DEPTH = 32  # levels of lists and objects in one field's JSON
MAX_JSON_BYTES = 64 * 1024  # one field's JSON (args, kwargs), encoded as UTF-8
MAX_HEADERS_BYTES = 8 * 1024  # a schedule's extra message headers
MAX_TEXT = 2000  # a description, and other free text
MAX_NOTE = 500  # a pause note
MAX_BODY_BYTES = 1024 * 1024  # one request body (settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
NUL = "\x00"
SHOWN_NUL = "\u2400"  # ␀: what the audit trail keeps of a NUL it was handed
# A string runs to its closing quote, or to the end of the text when it has none: one pass,
# never a rescan from each later quote (which made an unclosed string cost the square of its length).
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)


class LimitExceeded(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


def check_json(field: str, value: Any, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a value nested too deep, holding a NUL character (in a key or a string, at
    any depth) or larger than `max_bytes` as JSON."""
    depth = 0
    for level, item in walk(value):
        depth = max(depth, level)
        if isinstance(item, str) and NUL in item:
            raise LimitExceeded(field, "contains a NUL character (\\u0000), which cannot be stored; remove it.")
    if depth > max_depth:
        raise LimitExceeded(field, too_deep(depth, max_depth))
    size = len(json.dumps(value, ensure_ascii=False, default=str).encode())  # not too deep: no recursion risk
    if size > max_bytes:
        raise LimitExceeded(field, f"{size:,} bytes as JSON; at most {max_bytes:,} bytes are allowed.")


def walk(value: Any) -> Iterator[tuple[int, Any]]:
    """Every list, object, key and scalar in `value` with its nesting level (the value
    itself is level 0; a list holding only scalars is one level deep), without recursion."""
    stack: list[tuple[int, Any]] = [(0, value)]
    while stack:
        level, item = stack.pop()
        if isinstance(item, dict):
            yield level + 1, item
            for key, member in item.items():
                yield level + 1, key
                stack.append((level + 1, member))
        elif isinstance(item, list | tuple):
            yield level + 1, item
            stack.extend((level + 1, member) for member in item)
        else:
            yield level, item


def too_deep(depth: int, max_depth: int = MAX_DEPTH) -> str:
    return f"nested {depth:,} levels deep; at most {max_depth} are allowed."


def text_depth(text: str) -> tuple[int, str | None]:
    """How deep the JSON `text` nests, and under which top-level key (if it is an object)
    the deepest part lies, read without parsing it: strings are skipped, brackets counted."""
    depth = deepest = 0
    key: str | None = None
    last_string, deepest_key = "", None
    for token in _JSON_TOKENS.finditer(text):
        mark = token.group()
        if mark[0] == '"':
            if depth == 1:
                last_string = mark
            continue
        if mark in "[{":
            depth += 1
            if depth == 2 and last_string:
                key = _string(last_string)
            if depth > deepest:
                deepest, deepest_key = depth, key if depth > 1 else None
        else:
            depth -= 1
            if depth == 1:
                key = None
    return deepest, deepest_key


def _string(literal: str) -> str:
    try:
        return str(json.loads(literal))
    except ValueError:
        return literal.strip('"')


def check_json_text(field: str, text: str, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse JSON `text` typed into a field, within the limits; ValueError if it is no JSON."""
    size = len(text.encode())
    if size > max_bytes:
        raise LimitExceeded(field, f"{size:,} bytes; at most {max_bytes:,} bytes are allowed.")
    depth, _ = text_depth(text)
    if depth > MAX_DEPTH:
        raise LimitExceeded(field, too_deep(depth))
    value = json.loads(text)
    check_json(field, value, max_bytes=max_bytes)
    return value


def check_text(field: str, text: str, max_length: int = MAX_TEXT) -> str:
    if NUL in text:
        raise LimitExceeded(field, "contains a NUL character, which cannot be stored; remove it.")
    if len(text) > max_length:
        raise LimitExceeded(field, f"{len(text):,} characters; at most {max_length:,} are allowed.")
    return text


def storable(value: Any, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """`value` as it can always be stored (the audit trail keeps what it is handed, even a
    schedule saved with a NUL before the doors refused one): each NUL shown as ␀, levels
    past `max_depth` and a value larger than `max_bytes` replaced by a note saying so."""
    root: list[Any] = [None]
    stack: list[tuple[Any, list[Any] | dict[str, Any], Any, int]] = [(value, root, 0, 0)]
    while stack:
        item, parent, slot, level = stack.pop()
        parent[slot] = _copy_of(item, level, max_depth, stack)
    copied = root[0]
    size = len(json.dumps(copied, ensure_ascii=False, default=str).encode())
    return copied if size <= max_bytes else {"omitted": f"{size:,} bytes as JSON; at most {max_bytes:,} are kept"}


def _copy_of(item: Any, level: int, max_depth: int, stack: list[Any]) -> Any:
    if isinstance(item, str):
        return item.replace(NUL, SHOWN_NUL)
    if not isinstance(item, dict | list | tuple):
        return item
    if level >= max_depth:
        return f"(nested deeper than {max_depth} levels; left out)"
    if isinstance(item, dict):
        copy: dict[str, Any] = {}
        for key, member in item.items():
            name = str(key).replace(NUL, SHOWN_NUL)
            copy[name] = None
            stack.append((member, copy, name, level + 1))
        return copy
    listed: list[Any] = [None] * len(item)
    stack.extend((member, listed, index, level + 1) for index, member in enumerate(item))
    return listed
