"""The Responses API passed through to upstreams that serve it (``speaks_responses``).

The client's body goes to the upstream's ``responses`` path with ``model`` the
upstream's, ``store: false`` (the gateway keeps stored responses itself, per
tenant) and no ``previous_response_id``: the stored conversation it names is
expanded into ``input``, as for translation (its item ids dropped: the upstream
never saw them). The answer is relayed as is but for ``model`` (the public
name), and ``store`` and ``previous_response_id`` (the client's). A stream's
events are relayed as they arrive: only the ``response.*`` lifecycle events are
parsed (the model rewritten, the final usage and response read from
``response.completed``, ``response.incomplete`` or ``response.failed``).
"""

from __future__ import annotations

import json
import re

from panel.errors import ApiError

from ..selectors import UpstreamInfo
from .pricing import Usage, usage_from_block
from .responses import ResponsesRequest

RESPONSES_PATH = "responses"
_TYPE_RE = re.compile(rb'"type"\s*:\s*"(response\.[a-z_]+)"')
_LIFECYCLE = frozenset(
    {
        b"response.created",
        b"response.in_progress",
        b"response.queued",
        b"response.completed",
        b"response.incomplete",
        b"response.failed",
    }
)
_FINAL = frozenset({b"response.completed", b"response.incomplete", b"response.failed"})
_DELTA = b'"response.output_text.delta"'


def speaks_responses(upstream: UpstreamInfo) -> bool:
    return upstream.speaks_responses


def passthrough_body(parsed: ResponsesRequest, history: list[dict]) -> dict:
    """The body sent to an upstream that serves the Responses API."""
    body = {k: v for k, v in parsed.body.items() if k != "previous_response_id"}
    body["store"] = False
    if history:
        given = body["input"]
        given = [{"role": "user", "content": given}] if isinstance(given, str) else list(given)
        body["input"] = [{k: v for k, v in item.items() if k != "id"} for item in history] + given
    return body


def client_view(response: dict, parsed: ResponsesRequest, public_model: str) -> dict:
    """An upstream's response object as the client sees it (and as it is stored)."""
    response["model"] = public_model
    response["store"] = parsed.store
    response["previous_response_id"] = parsed.previous_response_id
    return response


class ResponsesRelay:
    """Per-stream state: lifecycle events rewritten, the final response and usage kept."""

    __slots__ = ("parsed", "model", "usage", "content_events", "saw_done", "response", "sequence")

    def __init__(self, parsed: ResponsesRequest, public_model: str) -> None:
        self.parsed, self.model = parsed, public_model
        self.usage: Usage | None = None
        self.content_events = 0
        self.saw_done = False
        self.response: dict | None = None  # the final response object, as relayed
        self.sequence = 0

    @property
    def content_seen(self) -> bool:
        return self.content_events > 0

    def relay_batch(self, events: list[bytes]) -> list[bytes]:
        return [self.relay(event) for event in events]

    def relay(self, event: bytes) -> bytes:
        self.sequence += 1
        if _DELTA in event:
            self.content_events += 1
            return event
        match = _TYPE_RE.search(event)
        kind = match.group(1) if match else b""
        if kind not in _LIFECYCLE:
            return event
        head, _, data = event.partition(b"data:")
        try:
            payload = json.loads(data)
            response = payload["response"]
            client_view(response, self.parsed, self.model)
        except (ValueError, KeyError, TypeError):
            return event
        if kind in _FINAL:
            self.saw_done, self.response = True, response
            self.usage = usage_from_block(response.get("usage"))
        return head + b"data: " + json.dumps(payload).encode() + b"\n\n"

    def error_event(self, error: ApiError) -> bytes:
        event = {
            "type": "error",
            "code": "server_error",
            "message": error.message,
            "param": None,
            "sequence_number": self.sequence,
        }
        return b"event: error\ndata: " + json.dumps(event).encode() + b"\n\n"
