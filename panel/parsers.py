"""JSON request bodies with a bounded nesting depth, for the gateway and the DRF API.

Python's json module parses and encodes recursively: a body nested about a
thousand levels deep raises RecursionError (a 500), and one just under that
parses but may fail later, when the gateway encodes it again for the
upstream deeper in the stack. No API body needs more than a few levels, so
anything past ``MAX_JSON_DEPTH`` is refused as unparsable.
"""

from __future__ import annotations

from rest_framework import parsers
from rest_framework.exceptions import ParseError

from . import fastjson

MAX_JSON_DEPTH = 64
TOO_DEEP = f"The JSON body is nested more than {MAX_JSON_DEPTH} levels deep."


class JSONTooDeep(ValueError):
    pass


def json_loads(raw: bytes | str):
    """``json.loads`` that raises ``JSONTooDeep`` (a ValueError) for over-nested input
    (orjson first: ``panel.fastjson``)."""
    try:
        value = fastjson.loads(raw)
    except RecursionError as exc:
        raise JSONTooDeep(TOO_DEEP) from exc
    if _may_be_deep(raw) and is_too_deep(value):
        raise JSONTooDeep(TOO_DEEP)
    return value


def _may_be_deep(raw: bytes | str) -> bool:
    # Nesting needs an opening bracket per level: most bodies have too few to check.
    if isinstance(raw, str):
        return raw.count("[") + raw.count("{") > MAX_JSON_DEPTH
    return raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH


def is_too_deep(value, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON value nests lists and objects more than ``limit`` levels."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, answering over-nested bodies with a 400 instead of a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError(f"JSON parse error - {TOO_DEEP}") from exc
        if is_too_deep(data):
            raise ParseError(f"JSON parse error - {TOO_DEEP}")
        return data
