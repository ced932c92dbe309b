"""A thin typed check of the request fields the gateway itself reads.

Resolving, estimating, streaming and accounting read ``model``, ``modelId``,
``messages`` (roles, contents and their text parts), ``prompt``, ``input``,
``stream``, ``stream_options`` and ``n``; a field of the wrong type there
would break them, so it is a 400 naming the field (in OpenAI's
``messages[0].content`` style) before anything else happens. Every other
field goes upstream untouched, for the upstream to judge. Plain isinstance
checks only: this runs on every request.
"""

from __future__ import annotations

from panel.errors import InvalidRequest

N_MAX = 128  # OpenAI's own bound for chat completions
# The largest count a request may ask for when its model sets no tighter limit.
MAX_COUNT = 2**31
# n and best_of (OpenAI's ranges): how many outputs one request generates.
COUNT_FIELDS = (("n", 1, 128), ("best_of", 0, 20))


def body_check(body: dict, *, required: str) -> None:
    """Raise InvalidRequest for the first field the gateway reads that has the wrong shape."""
    _check_model(body)
    if required not in body:
        raise InvalidRequest(f"'{required}' is a required property.", param=required)
    if required == "messages":
        _check_messages(body["messages"])
    elif not isinstance(body[required], str | list):
        raise _wrong(required, "a string or an array")
    _check_stream(body)
    n = body.get("n")
    if n is not None and (not _is_int(n) or not 1 <= n <= N_MAX):
        raise InvalidRequest(f"'n' must be an integer from 1 to {N_MAX}.", param="n")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _wrong(param: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' must be {expected}.", param=param)


def _check_model(body: dict) -> None:
    model_id = body.get("modelId")
    if model_id is not None and not _is_int(model_id):
        raise InvalidRequest("modelId must be an integer.", param="modelId")
    model_name = body.get("model")
    if model_name is not None and not isinstance(model_name, str):
        raise InvalidRequest("model must be a string.", param="model")


def _check_messages(messages) -> None:
    if not isinstance(messages, list):
        raise _wrong("messages", "an array of messages")
    for index, message in enumerate(messages):
        name = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _wrong(name, "an object")
        if not isinstance(message.get("role"), str):
            raise _wrong(f"{name}.role", "a string")
        content = message.get("content")
        if isinstance(content, list):
            _check_parts(content, f"{name}.content")
        elif content is not None and not isinstance(content, str):
            raise _wrong(f"{name}.content", "a string, an array of content parts or null")


def _check_parts(parts: list, name: str) -> None:
    for index, part in enumerate(parts):
        if not isinstance(part, dict):
            raise _wrong(f"{name}[{index}]", "an object")
        if "text" in part and not isinstance(part["text"], str):
            raise _wrong(f"{name}[{index}].text", "a string")


def _check_stream(body: dict) -> None:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _wrong("stream", "a boolean")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _wrong("stream_options", "an object")


def bounds_check(body: dict, *, max_output_tokens: int | None) -> None:
    """Every number an estimate reads is an integer in range; each field is checked on its own."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = _count(body, name, 1, MAX_COUNT)
        if max_output_tokens and value is not None and value > max_output_tokens:
            raise InvalidRequest(
                f"{name} is {value}, above this model's limit of {max_output_tokens}.", param=name
            )
    for name, low, high in COUNT_FIELDS:
        _count(body, name, low, high)


def _count(body: dict, name: str, low: int, high: int) -> int | None:
    """``body[name]``: absent or null, else an integer (not a bool) from ``low`` to ``high``."""
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value) or value < low:
        kind = "a positive integer" if low == 1 else f"an integer of at least {low}"
        raise InvalidRequest(f"{name} must be {kind}.", param=name)
    if value > high:
        raise InvalidRequest(f"{name} must be at most {high}.", param=name)
    return value
