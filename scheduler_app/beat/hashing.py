"""`H` in crontab fields, as Jenkins has it: a value chosen by a hash of the schedule's name.

`H`, `H(0-29)`, `H/15`, `H(0-29)/10`, in a list too (`H(0-29),H(30-59)`): a value of the
field's range (day of month from 1-28, so every month has it), the same on every beat and
after every restart, so 1,000 schedules written `H * * * *` spread over the hour. The
hash is SHA-256 of the name and the field (Python's `hash()` differs between processes):
renaming a schedule moves its H values.
"""

from __future__ import annotations

import hashlib
import re

# (field, lowest, highest): H draws from these; day of month stops at 28, as in Jenkins.
HASH_RANGES = (("minute", 0, 59), ("hour", 0, 23), ("day_of_month", 1, 28), ("month_of_year", 1, 12),
               ("day_of_week", 0, 6))  # fmt: skip
FIELD_LIMITS = {"minute": (0, 59), "hour": (0, 23), "day_of_month": (1, 31), "month_of_year": (1, 12),
                "day_of_week": (0, 6)}  # fmt: skip
HASH_ITEM = re.compile(r"^H(?:\((\d+)-(\d+)\))?(?:/(\d+))?$")
FIELD_INDEX = {name: index for index, (name, _, _) in enumerate(HASH_RANGES)}


class HashSyntaxError(ValueError):
    """An H item written wrongly or out of its field's range; says what is allowed."""


def is_hash_item(item: str) -> bool:
    """Whether a list item of a field is an H item (`THU`, a day's name, is not)."""
    return item.strip().startswith("H")


def field_has_hash(text: str) -> bool:
    return any(is_hash_item(item) for item in text.split(","))


def has_hash(expression: str) -> bool:
    return any(field_has_hash(text) for text in expression.split())


def hash_value(name: str, field_index: int, span: int) -> int:
    """A number in [0, span) from the schedule's name and the field: the same everywhere."""
    digest = hashlib.sha256(f"{name}\x00{field_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % span


def resolve_field(text: str, name: str, index: int) -> str:
    """One crontab field with each `H` item replaced by its value (raises InvalidSchedule)."""
    field_name, low, high = HASH_RANGES[index]
    items = []
    for item in text.split(","):
        if not is_hash_item(item):
            items.append(item)
            continue
        match = HASH_ITEM.match(item.strip())
        if match is None:
            raise HashSyntaxError(
                f"{field_name} {item!r}: H is written H, H(a-b), H/n or H(a-b)/n, e.g. H, H(0-29), H/15"
            )
        start, end, step = match.groups()
        items.append(resolve_item(field_name, low, high, start, end, step, hash_value(name, index, 1 << 30)))
    return ",".join(items)


def resolve_item(field_name: str, low: int, high: int, start: str | None, end: str | None, step: str | None,
                 drawn: int) -> str:  # fmt: skip
    if start is not None and end is not None:
        low, high = int(start), int(end)
        lowest, highest = FIELD_LIMITS[field_name]
        if not lowest <= low <= high <= highest:
            raise HashSyntaxError(
                f"{field_name} H({start}-{end}): the range must lie within {lowest}-{highest}, lowest first"
            )
    if step is None:
        return str(low + drawn % (high - low + 1))
    every = int(step)
    if not 1 <= every <= high - low + 1:
        raise HashSyntaxError(f"{field_name} H/{step}: the step must be 1 to {high - low + 1}")
    return f"{low + drawn % every}-{high}/{every}"


def resolve(expression: str, name: str) -> str:
    """A crontab expression (five fields) with its H values for the schedule `name`."""
    fields = expression.split()
    if len(fields) != len(HASH_RANGES):
        raise HashSyntaxError(f"crontab {expression!r}: five fields expected")
    return " ".join(resolve_field(text, name, i) if field_has_hash(text) else text for i, text in enumerate(fields))


def chosen_by_hash(expression: str, name: str) -> str:
    """The H values in words: "minute 37, hour 4 chosen by hash of the name"."""
    fields = expression.split()
    resolved = resolve(expression, name).split()
    chosen = [
        f"{HASH_RANGES[i][0].replace('_', ' ')} {resolved[i]}" for i, text in enumerate(fields) if field_has_hash(text)
    ]
    return f"{', '.join(chosen)} chosen by hash of the name" if chosen else ""
