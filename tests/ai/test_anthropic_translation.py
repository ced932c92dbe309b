"""Golden tables for the Anthropic translation: Messages request -> the chat body sent
upstream; chat reply -> Message; chat stream -> Anthropic's events."""

import json

import pytest

from ai.gateway.anthropic import MessageStream, chat_body, chat_translation, message_reply
from ai.gateway.pricing import Usage, usage_from_block
from panel.errors import InvalidRequest

USER = {"role": "user", "content": "Hi"}
BASE = {"model": "m", "max_tokens": 50}
IMAGE_B64 = {"type": "base64", "media_type": "image/png", "data": "iVBORw0"}
TOOL_CALL = {
    "id": "toolu_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}

REQUESTS = [
    ("plain", {"messages": [USER]}, {"messages": [USER]}),
    (
        "system as text",
        {"system": "Be brief.", "messages": [USER]},
        {"messages": [{"role": "system", "content": "Be brief."}, USER]},
    ),
    (
        "system as blocks, cache_control ignored",
        {
            "system": [
                {"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "B"},
            ],
            "messages": [USER],
        },
        {"messages": [{"role": "system", "content": "A\n\nB"}, USER]},
    ),
    (
        "one text block is a plain string",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]},
        {"messages": [USER]},
    ),
    (
        "images: base64 and url",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        {"type": "image", "source": IMAGE_B64},
                        {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}},
                    ],
                }
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw0"},
                        },
                        {"type": "image_url", "image_url": {"url": "https://x/a.png"}},
                    ],
                }
            ]
        },
    ),
    (
        "assistant tool_use and user tool_result (with an error and an image)",
        {
            "messages": [
                USER,
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "s"},
                        {"type": "text", "text": "Let me look."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "is_error": True,
                            "content": [
                                {"type": "text", "text": "timeout"},
                                {"type": "image", "source": IMAGE_B64},
                            ],
                        }
                    ],
                },
            ]
        },
        {
            "messages": [
                USER,
                {"role": "assistant", "content": "Let me look.", "tool_calls": [TOOL_CALL]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: timeout"},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0"}}
                    ],
                },
            ]
        },
    ),
    (
        "tool results only: no empty user message",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "a", "content": "1"},
                        {"type": "tool_result", "tool_use_id": "b"},
                    ],
                }
            ]
        },
        {
            "messages": [
                {"role": "tool", "tool_call_id": "a", "content": "1"},
                {"role": "tool", "tool_call_id": "b", "content": ""},
            ]
        },
    ),
    (
        "tools, a named tool choice without parallel calls",
        {
            "messages": [USER],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        },
        {
            "messages": [USER],
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "parallel_tool_calls": False,
        },
    ),
    (
        "tool choices any and none",
        {"messages": [USER], "tool_choice": {"type": "none"}},
        {"messages": [USER], "tool_choice": "none"},
    ),
    (
        "sampling, stops, metadata, thinking; unknown fields ignored",
        {
            "messages": [USER],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 5,
            "stop_sequences": ["X"],
            "metadata": {"user_id": "u1"},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "future_field": {"x": 1},
        },
        {
            "messages": [USER],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 5,
            "stop": ["X"],
            "user": "u1",
            "reasoning_effort": "low",
        },
    ),
    (
        "stream asks upstream for usage",
        {"messages": [USER], "stream": True},
        {"messages": [USER], "stream": True, "stream_options": {"include_usage": True}},
    ),
]


@pytest.mark.parametrize(("name", "given", "sent"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_it_translates_a_messages_request_to_the_chat_body_sent_upstream(name, given, sent):
    assert chat_body({**BASE, **given}) == {**BASE, **sent}


def test_it_translates_a_count_tokens_body_without_max_tokens():
    assert chat_body({"model": "m", "messages": [USER]}, counting=True) == {
        "model": "m",
        "messages": [USER],
    }


def _choice(message, finish="stop", **extra):
    return {"index": 0, "message": message, "finish_reason": finish, **extra}


REPLIES = [
    (
        "text",
        {"choices": [_choice({"role": "assistant", "content": "Hello"})]},
        {},
        Usage(10, 3),
        [{"type": "text", "text": "Hello"}],
        ("end_turn", None),
    ),
    (
        "cut at max tokens",
        {"choices": [_choice({"content": "Hel"}, "length")]},
        {},
        Usage(10, 3),
        [{"type": "text", "text": "Hel"}],
        ("max_tokens", None),
    ),
    (
        "tool calls, text first",
        {"choices": [_choice({"content": "Looking", "tool_calls": [TOOL_CALL]}, "tool_calls")]},
        {},
        Usage(10, 3),
        [
            {"type": "text", "text": "Looking"},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
        ],
        ("tool_use", None),
    ),
    (
        "a tool call a server finished with stop; arguments that are no object",
        {
            "choices": [
                _choice(
                    {
                        "content": None,
                        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1"}}],
                    }
                )
            ]
        },
        {},
        Usage(10, 3),
        [{"type": "tool_use", "id": "c", "name": "f", "input": {}}],
        ("tool_use", None),
    ),
    (
        "vLLM names the stop sequence",
        {"choices": [_choice({"content": "a"}, stop_reason="END")]},
        {"stop": ["END"]},
        Usage(10, 3),
        [{"type": "text", "text": "a"}],
        ("stop_sequence", "END"),
    ),
    (
        "content filter",
        {"choices": [_choice({"content": ""}, "content_filter")]},
        {},
        Usage(10, 0),
        [],
        ("refusal", None),
    ),
]


@pytest.mark.parametrize(
    ("name", "payload", "chat", "usage", "content", "stop"), REPLIES, ids=[r[0] for r in REPLIES]
)
def test_it_translates_a_chat_reply_to_a_message(name, payload, chat, usage, content, stop):
    message = message_reply(payload, chat=chat, usage=usage, message_id="msg_1", model="pub")
    assert message == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "pub",
        "content": content,
        "stop_reason": stop[0],
        "stop_sequence": stop[1],
        "usage": {
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    }


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        # OpenAI's prompt_tokens include the cached ones; Anthropic's input_tokens do not.
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 60},
            },
            (40, 5, 60),
        ),
        ({"prompt_tokens": 100, "completion_tokens": 5}, (100, 5, 0)),
        # A cached count above the prompt is the upstream's error: never a negative input.
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": 60},
            },
            (0, 1, 10),
        ),
        ({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": "x"}}, (10, 0, 0)),
    ],
)
def test_it_splits_cached_tokens_out_of_the_input(block, expected):
    payload = {"choices": [_choice({"content": "a"})], "usage": block}
    usage = usage_from_block(block)
    got = message_reply(payload, chat={}, usage=usage, message_id="m", model="p")["usage"]
    assert (
        got["input_tokens"],
        got["output_tokens"],
        got["cache_read_input_tokens"],
    ) == expected
    assert got["cache_creation_input_tokens"] == 0


# --- streams --------------------------------------------------------------------------------


def _chunk(delta=None, finish=None, **extra):
    chunk = {"id": "c", "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}
    return b"data: " + json.dumps({**chunk, **extra}).encode() + b"\n\n"


def _events(chunks: list[bytes], chat=None) -> list[tuple[str, dict]]:
    stream = MessageStream(chat=chat or {}, message_id="msg_1", model="pub", prompt_estimate=7)
    out = stream.start() + [piece for chunk in chunks for piece in stream.translate(chunk)]
    events = []
    for piece in out:
        kind, data = piece.decode().split("\n", 1)
        assert kind.startswith("event: ") and data.startswith("data: ") and data.endswith("\n\n")
        payload = json.loads(data[6:])
        assert payload["type"] == kind[7:]
        events.append((kind[7:], payload))
    return events


USAGE_CHUNK = b'data: {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 2}}}\n\n'
DONE = b"data: [DONE]\n\n"


def test_it_translates_a_text_stream_to_anthropics_events():
    events = _events(
        [
            _chunk({"role": "assistant", "content": ""}),
            _chunk({"content": "Hel"}),
            _chunk({"content": "lo"}),
            _chunk(finish="stop"),
            USAGE_CHUNK,
            DONE,
        ]
    )
    assert [kind for kind, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert (start["id"], start["model"], start["content"]) == ("msg_1", "pub", [])
    assert start["usage"]["input_tokens"] == 7  # the estimate, until the upstream's usage
    assert events[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert [e[1]["delta"] for e in events[3:5]] == [
        {"type": "text_delta", "text": "Hel"},
        {"type": "text_delta", "text": "lo"},
    ]
    assert events[6][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {
            "input_tokens": 10,
            "output_tokens": 4,
            "cache_read_input_tokens": 2,
            "cache_creation_input_tokens": 0,
        },
    }


def test_it_translates_streamed_tool_calls_to_tool_use_blocks_after_text():
    call = {
        "index": 0,
        "id": "call_0",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    second = {"index": 1, "id": "call_1", "function": {"name": "g", "arguments": "{}"}}
    events = _events(
        [
            _chunk({"content": "Sure"}),
            _chunk({"tool_calls": [call]}),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
            _chunk({"tool_calls": [second]}),
            _chunk(finish="tool_calls"),
            DONE,
        ]
    )
    blocks = [(k, e.get("index"), e.get("content_block") or e.get("delta")) for k, e in events[2:]]
    assert blocks == [
        ("content_block_start", 0, {"type": "text", "text": ""}),
        ("content_block_delta", 0, {"type": "text_delta", "text": "Sure"}),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, {"type": "tool_use", "id": "call_0", "name": "f", "input": {}}),
        ("content_block_delta", 1, {"type": "input_json_delta", "partial_json": '{"a"'}),
        ("content_block_delta", 1, {"type": "input_json_delta", "partial_json": ": 1}"}),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, {"type": "tool_use", "id": "call_1", "name": "g", "input": {}}),
        ("content_block_delta", 2, {"type": "input_json_delta", "partial_json": "{}"}),
        ("content_block_stop", 2, None),
        ("message_delta", None, {"stop_reason": "tool_use", "stop_sequence": None}),
        ("message_stop", None, None),
    ]


def test_it_estimates_a_streams_usage_without_a_usage_block():
    events = _events(
        [_chunk({"content": "a"}), _chunk({"content": "b"}), _chunk(finish="length"), DONE]
    )
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert (delta["usage"]["input_tokens"], delta["usage"]["output_tokens"]) == (7, 2)


def test_it_ends_the_stream_with_an_error_event_and_ignores_what_follows():
    error = b'data: {"error": {"message": "The upstream failed mid-stream.", "type": "upstream_error"}}\n\n'
    events = _events([_chunk({"content": "a"}), error, _chunk({"content": "b"}), DONE])
    assert [k for k, _ in events][-2:] == ["content_block_delta", "error"]
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "The upstream failed mid-stream."},
    }


# --- what only an upstream speaking Messages can take; extended thinking -------------------

WEATHER_TOOL = {"name": "f", "input_schema": {"type": "object"}}
WEATHER_FUNCTION = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
DOCUMENT = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}


@pytest.mark.parametrize(
    ("given", "sent", "param"),
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, DOCUMENT]}]},
            {"messages": [USER]},
            "messages.0.content.1.type",
        ),
        (
            {"messages": [USER], "tools": [{"type": "web_search_20250305", "name": "web"}]},
            {"messages": [USER]},
            "tools.0.type",
        ),
        (
            {"messages": [USER], "mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]},
            {"messages": [USER]},
            "mcp_servers",
        ),
        ({"messages": [USER], "container": "cntr_1"}, {"messages": [USER]}, "container"),
        (
            {"messages": [USER], "thinking": {"type": "adaptive"}},
            {"messages": [USER]},
            "thinking.type",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}
                ]
            },
            {"messages": [{"role": "user", "content": ""}]},
            "messages.0.content.0.source.type",
        ),
    ],
)
def test_it_translates_what_it_can_and_keeps_the_refusal_of_what_it_cannot(given, sent, param):
    chat, untranslatable = chat_translation({**BASE, **given})
    assert chat == {**BASE, **sent}
    assert untranslatable.status_code == 400 and untranslatable.message.startswith(param)
    with pytest.raises(InvalidRequest) as caught:  # count_tokens' strict form
        chat_body({**BASE, **given})
    assert caught.value.message.startswith(param)


def test_it_drops_hints_that_chat_upstreams_do_without():
    tool = {**WEATHER_TOOL, "cache_control": {"type": "ephemeral"}}
    given = {**BASE, "messages": [USER], "tools": [tool], "service_tier": "auto"}
    chat, untranslatable = chat_translation(given)
    assert untranslatable is None
    assert chat == {**BASE, "messages": [USER], "tools": [WEATHER_FUNCTION]}


@pytest.mark.parametrize(
    ("budget", "effort"),
    [(1024, "low"), (4095, "low"), (4096, "medium"), (16383, "medium"), (16384, "high")],
)
def test_it_maps_a_thinking_budget_to_a_reasoning_effort(budget, effort):
    thinking = {"type": "enabled", "budget_tokens": budget}
    chat = chat_body({**BASE, "messages": [USER], "thinking": thinking})
    assert chat["reasoning_effort"] == effort


def test_disabled_thinking_asks_for_no_effort():
    chat = chat_body({**BASE, "messages": [USER], "thinking": {"type": "disabled"}})
    assert "reasoning_effort" not in chat


@pytest.mark.parametrize(
    ("given", "param"),
    [
        ({"thinking": "on"}, "thinking"),
        ({"thinking": {"budget_tokens": 2000}}, "thinking"),
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "enabled", "budget_tokens": "lots"}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "enabled", "budget_tokens": 0}}, "thinking.budget_tokens"),
        ({"tools": [{"type": 5, "name": "x"}]}, "tools.0.type"),
        (
            {"messages": [{"role": "user", "content": [{"text": "no type"}]}]},
            "messages.0.content.0",
        ),
    ],
)
def test_a_wrong_type_is_refused_for_every_upstream(given, param):
    with pytest.raises(InvalidRequest) as caught:
        chat_translation({**BASE, "messages": [USER], **given})
    assert caught.value.message.startswith(param)


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
def test_it_translates_reasoning_content_to_a_thinking_block(key):
    payload = {"choices": [_choice({"content": "42", key: "Let me think."})]}
    message = message_reply(payload, chat={}, usage=Usage(5, 9), message_id="m", model="p")
    assert message["content"] == [
        {"type": "thinking", "thinking": "Let me think.", "signature": ""},
        {"type": "text", "text": "42"},
    ]


def test_it_streams_reasoning_content_as_a_thinking_block_before_the_text():
    events = _events(
        [
            _chunk({"role": "assistant", "reasoning_content": "Hm"}),
            _chunk({"reasoning_content": "m."}),
            _chunk({"content": "42"}),
            _chunk(finish="stop"),
            DONE,
        ]
    )
    blocks = [(k, e.get("index"), e.get("content_block") or e.get("delta")) for k, e in events[2:]]
    assert blocks == [
        ("content_block_start", 0, {"type": "thinking", "thinking": "", "signature": ""}),
        ("content_block_delta", 0, {"type": "thinking_delta", "thinking": "Hm"}),
        ("content_block_delta", 0, {"type": "thinking_delta", "thinking": "m."}),
        ("content_block_delta", 0, {"type": "signature_delta", "signature": ""}),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, {"type": "text", "text": ""}),
        ("content_block_delta", 1, {"type": "text_delta", "text": "42"}),
        ("content_block_stop", 1, None),
        ("message_delta", None, {"stop_reason": "end_turn", "stop_sequence": None}),
        ("message_stop", None, None),
    ]
