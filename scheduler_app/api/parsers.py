"""The API's JSON parser: DRF's, with the depth limit checked on the text before it is
parsed, so a body nested thousands of levels deep is a 400 naming the field, never a
RecursionError (a 500) in `json.loads` or in the serializers after it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.utils import json

from scheduler_app import limits


class LimitedJSONParser(JSONParser):
    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        encoding = (parser_context or {}).get("encoding", "utf-8")
        try:
            text = stream.read().decode(encoding)
        except (UnicodeDecodeError, LookupError) as exc:
            raise ParseError(f"the body is not {encoding} text ({exc}); send UTF-8 JSON.") from None
        depth, key = limits.text_depth(text)
        field_depth = depth - 1 if key is not None else depth  # a field's value nests one level below the body
        if field_depth > limits.MAX_DEPTH:
            raise ParseError(f"{key or 'body'}: {limits.too_deep(field_depth)}")
        constant = json.strict_constant if self.strict else None
        try:
            return json.loads(text, parse_constant=constant)
        except (ValueError, RecursionError) as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
