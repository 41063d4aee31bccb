"""The API's query parameters read one way: a value that is not what the parameter takes is a
400 naming what it takes, never a 500 (a number too long for `int()`, `²`, which
`str.isdigit` accepts and `int` refuses) and never a silent default."""

from __future__ import annotations

from rest_framework.exceptions import ValidationError
from rest_framework.request import Request


def single(request: Request, name: str) -> str | None:
    """The parameter's value, None when absent; given twice (`?window=1h&window=7d`) it is refused."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise ValidationError({name: [f"given {len(values)} times; give it once"]})
    return values[0] if values else None


def choice(request: Request, name: str, allowed: tuple[str, ...] | list[str]) -> str | None:
    value = single(request, name)
    if value is not None and value not in allowed:
        raise ValidationError({name: [f"must be one of {', '.join(allowed)}; got {value[:100]!r}"]})
    return value


def whole_number(request: Request, name: str, default: int, lowest: int, highest: int) -> int:
    """A whole number from `lowest` to `highest` (ASCII digits only), `default` when absent."""
    given = single(request, name)
    if given is None:
        return default
    fits = given.isascii() and given.isdecimal() and len(given) <= len(str(highest))
    if not fits or not lowest <= int(given) <= highest:
        raise ValidationError({name: [f"a whole number from {lowest} to {highest}; got {given[:100]!r}"]})
    return int(given)
