"""A chat completion stream retold as the Responses API's event stream.

``ResponseEvents`` reads the chat chunks the pipeline relays (usage chunk
included, which the Responses route always asks for) and writes the
Responses events, numbered by ``sequence_number``: ``response.created``,
``response.in_progress``, an output item per reasoning (its summary text),
text message and function call with their deltas, and last ``response.completed``,
``response.incomplete`` (the upstream stopped at the length limit) or
``response.failed`` (it failed mid-stream). Every chunk is parsed: the
translation needs each delta. ``replay`` retells a stored response the same way.
"""

from __future__ import annotations

import json

from .pricing import Usage
from .responses import ResponsesRequest
from .responses_output import (
    call_item,
    new_id,
    reasoning_item,
    reasoning_of,
    response_object,
    sse,
    status_of,
    summary_part,
    text_item,
    text_part,
    usage_block,
)


class ResponseEvents:
    """Per-stream state: the output so far, the open items, and the next sequence number."""

    def __init__(self, request: ResponsesRequest, *, model: str) -> None:
        self.request, self.model = request, model
        self.sequence = 0
        self.output: list[dict] = []
        self.text_at: int | None = None  # output index of the message being written
        self.reasoning_at: int | None = None  # output index of the reasoning being written
        self.calls: dict[int, int] = {}  # the chat tool call index -> its output index
        self.finish_reason: str | None = None
        self.failure = ""
        self.response: dict | None = None  # the final response object

    # --- Events ---------------------------------------------------------------------------

    def _event(self, kind: str, **fields) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse(event)

    def _snapshot(self, status: str, **extra) -> dict:
        return response_object(
            self.request, model=self.model, output=self.output, status=status, **extra
        )

    def start(self) -> list[bytes]:
        """The events that open the stream."""
        response = self._snapshot("in_progress", usage=None)
        return [
            self._event("response.created", response=response),
            self._event("response.in_progress", response=response),
        ]

    def chunk(self, raw: bytes) -> list[bytes]:
        """The events one relayed chat chunk becomes (none for [DONE] or a role chunk)."""
        data = raw.partition(b"data:")[2].strip()
        if not data or data == b"[DONE]":
            return []
        try:
            chunk = json.loads(data)
        except ValueError:
            return []
        if not isinstance(chunk, dict):
            return []
        if isinstance(chunk.get("error"), dict):  # the relay's own mid-stream error event
            self.failure = str(chunk["error"].get("message") or "The upstream failed.")
            return []
        out: list[bytes] = []
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                out.extend(self._choice(choice))
        return out

    def _choice(self, choice: dict) -> list[bytes]:
        out: list[bytes] = []
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        if reasoning := reasoning_of(delta):
            out.extend(self._reasoning(reasoning))
        if isinstance(delta.get("content"), str) and delta["content"]:
            out.extend(self._text(delta["content"]))
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                out.extend(self._call(call))
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        return out

    def _reasoning(self, piece: str) -> list[bytes]:
        out: list[bytes] = []
        if self.reasoning_at is None:
            self.reasoning_at = len(self.output)
            item = reasoning_item(new_id("rs"), [])
            self.output.append(item)
            out.append(
                self._event("response.output_item.added", output_index=self.reasoning_at, item=item)
            )
            item["summary"].append(summary_part(""))
            out.append(
                self._summary("response.reasoning_summary_part.added", part=summary_part(""))
            )
        self.output[self.reasoning_at]["summary"][0]["text"] += piece
        out.append(self._summary("response.reasoning_summary_text.delta", delta=piece))
        return out

    def _summary(self, kind: str, **fields) -> bytes:
        item = self.output[self.reasoning_at]
        return self._event(
            kind, item_id=item["id"], output_index=self.reasoning_at, summary_index=0, **fields
        )

    def _close_reasoning(self) -> list[bytes]:
        if self.reasoning_at is None:
            return []
        item = self.output[self.reasoning_at]
        part = item["summary"][0]
        out = [
            self._summary("response.reasoning_summary_text.done", text=part["text"]),
            self._summary("response.reasoning_summary_part.done", part=dict(part)),
            self._event("response.output_item.done", output_index=self.reasoning_at, item=item),
        ]
        self.reasoning_at = None
        return out

    def _text(self, piece: str) -> list[bytes]:
        out: list[bytes] = self._close_reasoning()
        if self.text_at is None:
            self.text_at = len(self.output)
            item = text_item(new_id("msg"), "", "in_progress") | {"content": []}
            self.output.append(item)
            out.append(
                self._event("response.output_item.added", output_index=self.text_at, item=item)
            )
            item["content"].append(text_part(""))
            out.append(self._part("response.content_part.added", item["content"][0]))
        self.output[self.text_at]["content"][0]["text"] += piece
        out.append(self._part("response.output_text.delta", None, delta=piece, logprobs=[]))
        return out

    def _part(self, kind: str, part: dict | None, **fields) -> bytes:
        item = self.output[self.text_at]
        if part is not None:
            fields["part"] = dict(part)
        return self._event(
            kind, item_id=item["id"], output_index=self.text_at, content_index=0, **fields
        )

    def _call(self, call: dict) -> list[bytes]:
        out: list[bytes] = []
        index = call.get("index", 0)
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        if index not in self.calls:
            out.extend(self._close_reasoning() + self._close_text("completed"))
            self.calls[index] = len(self.output)
            item = call_item(
                new_id("fc"), call.get("id") or new_id("call"), function, "in_progress"
            ) | {"arguments": ""}
            self.output.append(item)
            out.append(
                self._event("response.output_item.added", output_index=self.calls[index], item=item)
            )
        item = self.output[self.calls[index]]
        if isinstance(function.get("arguments"), str) and function["arguments"]:
            item["arguments"] += function["arguments"]
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=self.calls[index],
                    delta=function["arguments"],
                )
            )
        return out

    # --- The end --------------------------------------------------------------------------

    def _close_text(self, status: str) -> list[bytes]:
        if self.text_at is None:
            return []
        item = self.output[self.text_at]
        part = item["content"][0]
        out = [
            self._part("response.output_text.done", None, text=part["text"], logprobs=[]),
            self._part("response.content_part.done", part),
        ]
        item["status"] = status
        out.append(self._event("response.output_item.done", output_index=self.text_at, item=item))
        self.text_at = None
        return out

    def _close_calls(self, status: str) -> list[bytes]:
        out = []
        for index in self.calls.values():
            item = self.output[index]
            item["status"] = status
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            out.append(self._event("response.output_item.done", output_index=index, item=item))
        self.calls = {}
        return out

    def finish(self, usage: Usage) -> list[bytes]:
        """The closing events, once the chat stream ended (``usage``: what was billed)."""
        if self.failure:
            status, kind = "failed", "response.failed"
        else:
            status = status_of(self.finish_reason)
            kind = f"response.{status}"
        item_status = "completed" if status == "completed" else "incomplete"
        out = self._close_reasoning()
        out += self._close_text(item_status) + self._close_calls(item_status)
        error = {"code": "server_error", "message": self.failure} if self.failure else None
        self.response = self._snapshot(
            status,
            usage=usage_block(usage),
            finish_reason=self.finish_reason,
            error=error,
        )
        out.append(self._event(kind, response=self.response))
        return out


def replay(response: dict) -> list[bytes]:
    """A stored response retold as its stream: created, in_progress, each output item
    (added, its deltas whole, done) and its final event."""
    events = _Replay()
    snapshot = {**response, "status": "in_progress", "output": [], "usage": None}
    out = [
        events.event("response.created", response=snapshot),
        events.event("response.in_progress", response=snapshot),
    ]
    for index, item in enumerate(response.get("output") or ()):
        out += events.item(index, item)
    status = response.get("status")
    final = status if status in ("completed", "incomplete", "failed") else "completed"
    return out + [events.event(f"response.{final}", response=response)]


class _Replay:
    """The numbering and the per-item events of a replayed response."""

    def __init__(self) -> None:
        self.sequence = 0

    def event(self, kind: str, **fields) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse(event)

    def item(self, index: int, item: dict) -> list[bytes]:
        kind = item.get("type")
        where = {"item_id": item.get("id"), "output_index": index}
        empty = {
            "message": {**item, "status": "in_progress", "content": []},
            "function_call": {**item, "status": "in_progress", "arguments": ""},
            "reasoning": {**item, "summary": []},
        }.get(kind, item)
        out = [self.event("response.output_item.added", output_index=index, item=empty)]
        if kind == "message":
            out += self._parts(item, where)
        elif kind == "function_call":
            arguments = item.get("arguments") or ""
            out.append(
                self.event("response.function_call_arguments.delta", **where, delta=arguments)
            )
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    **where,
                    name=item.get("name"),
                    arguments=arguments,
                )
            )
        elif kind == "reasoning":
            out += self._summaries(item, where)
        out.append(self.event("response.output_item.done", output_index=index, item=item))
        return out

    def _parts(self, item: dict, where: dict) -> list[bytes]:
        out = []
        for number, part in enumerate(item.get("content") or ()):
            at = {**where, "content_index": number}
            text = part.get("text") or ""
            out.append(self.event("response.content_part.added", **at, part={**part, "text": ""}))
            if part.get("type") == "output_text":
                out.append(self.event("response.output_text.delta", **at, delta=text, logprobs=[]))
                out.append(self.event("response.output_text.done", **at, text=text, logprobs=[]))
            out.append(self.event("response.content_part.done", **at, part=part))
        return out

    def _summaries(self, item: dict, where: dict) -> list[bytes]:
        out = []
        for number, part in enumerate(item.get("summary") or ()):
            at = {**where, "summary_index": number}
            text = part.get("text") or ""
            added = summary_part("")
            out.append(self.event("response.reasoning_summary_part.added", **at, part=added))
            out.append(self.event("response.reasoning_summary_text.delta", **at, delta=text))
            out.append(self.event("response.reasoning_summary_text.done", **at, text=text))
            out.append(self.event("response.reasoning_summary_part.done", **at, part=part))
        return out
