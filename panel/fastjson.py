"""JSON on the request path: orjson, with the stdlib's behaviour for what orjson refuses.

orjson parses and encodes several times faster than the json module (issue 20:
the request body, the upstream's body and reply, the reply to the client). Where it
refuses input the json module takes (NaN and Infinity, integers past 64 bits, lone
surrogates, UTF-16 input, nesting past 1,024 levels) or a value it cannot encode,
these fall back to the json module, so every input gets the answer (or the error)
it got before. orjson also reads an integer past 64 bits as a float, silently: a
document with a run of 19 digits or more goes to the json module unread by orjson.
That run is looked for in bytes by ``translate`` and ``find`` (two passes in C), not a regex
search: a regex for 19 digits, tried at every byte, cost ~4 us on a 400-byte reply (issue 20).
The output differs only in form: compact, and UTF-8 rather than ``\\u`` escapes.
"""

from __future__ import annotations

import json
import re

import orjson

_LONG_NUMBER_TEXT = re.compile(r"\d{19}", re.ASCII)
# Every ASCII digit to "0", every other byte to " ": a run of 19 digits is then 19 zeros.
_DIGITS = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_NINETEEN = b"0" * 19


def has_long_number(raw: bytes | str) -> bool:
    """Whether ``raw`` holds a run of 19 ASCII digits (or more) anywhere."""
    if isinstance(raw, str):
        return _LONG_NUMBER_TEXT.search(raw) is not None
    return raw.translate(_DIGITS).find(_NINETEEN) >= 0  # not ``in`` (see ai.gateway.streaming)


def loads(raw: bytes | str):
    """Parse a JSON document; raises ValueError (or RecursionError) as ``json.loads``."""
    if not has_long_number(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def dumps(value) -> bytes:
    """A value as JSON bytes; raises TypeError (or ValueError) as ``json.dumps``."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value).encode()
