"""OpenAI-protocol calls served by Anthropic-style upstreams (``api_style`` anthropic, issue 15):
golden tables for the reverse translation (chat body -> Messages body, Message -> chat
completion, Messages stream -> chat chunks), then the OpenAI SDK, /v1/responses and the
chat page against models whose upstreams speak only Messages."""

import asyncio
import json
from decimal import Decimal

import httpx
import openai
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from ai.gateway.anthropic import ChatChunkRelay, chat_completion, messages_body, openai_error
from ai.gateway.pricing import usage_from_block
from ai.models import ApiStyle, Message, UsageEvent
from panel.asgi import application
from panel.errors import InvalidRequest, UpstreamError
from tests.ai.conftest import make_model, wait_for_usage
from tests.factories import UpstreamFactory

UPSTREAM_KEY = "sk-ant-upstream"
HI = [{"role": "user", "content": "Hello there"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ANTHROPIC_WEATHER = {
    "name": "get_weather",
    "input_schema": WEATHER["function"]["parameters"],
    "description": "The weather in a city.",
}
CALL = {
    "id": "toolu_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
CACHED = {"prompt_tokens": 10, "cached_tokens": 4, "cache_write_tokens": 3}


def _text(text):
    return {"type": "text", "text": text}


# --- Golden: chat completion body -> Messages body -----------------------------------------

REQUESTS = [
    (
        "plain, the default max_tokens",
        {"messages": HI},
        {"max_tokens": 4096, "messages": [{"role": "user", "content": [_text("Hello there")]}]},
    ),
    (
        "system and developer messages join in system; empty texts left out",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [_text("Be kind.")]},
                {"role": "user", "content": [_text(""), _text("Hi")]},
            ],
            "max_completion_tokens": 50,
        },
        {
            "max_tokens": 50,
            "system": "Be brief.\n\nBe kind.",
            "messages": [{"role": "user", "content": [_text("Hi")]}],
        },
    ),
    (
        "images: data URL as base64, https as url",
        {
            "max_tokens": 9,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        _text("What is this?"),
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
                    ],
                }
            ],
        },
        {
            "max_tokens": 9,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        _text("What is this?"),
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                    ],
                }
            ],
        },
    ),
    (
        "tool calls and results; one role's run merged into one turn",
        {
            "messages": [
                *HI,
                {"role": "user", "content": "And Paris?"},
                {
                    "role": "assistant",
                    "content": "Looking.",
                    "tool_calls": [
                        CALL,
                        {
                            **CALL,
                            "id": "toolu_2",
                            "function": {"name": "get_weather", "arguments": "not json"},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": [_text("Rainy")]},
                {"role": "user", "content": "Thanks"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": ""},
            ],
        },
        {
            "max_tokens": 4096,
            "messages": [
                {"role": "user", "content": [_text("Hello there"), _text("And Paris?")]},
                {
                    "role": "assistant",
                    "content": [
                        _text("Looking."),
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "Rainy"},
                        _text("Thanks"),
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        }
                    ],
                },
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]},
            ],
        },
    ),
    (
        "tools and a named tool_choice; parallel calls off",
        {
            "messages": HI,
            "tools": [WEATHER],
            "parallel_tool_calls": False,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
        {
            "max_tokens": 4096,
            "messages": [{"role": "user", "content": [_text("Hello there")]}],
            "tools": [ANTHROPIC_WEATHER],
            "tool_choice": {
                "type": "tool",
                "name": "get_weather",
                "disable_parallel_tool_use": True,
            },
        },
    ),
    (
        "required is any; a tool without parameters gets an object schema",
        {
            "messages": HI,
            "tools": [{"type": "function", "function": {"name": "now"}}],
            "tool_choice": "required",
        },
        {
            "max_tokens": 4096,
            "messages": [{"role": "user", "content": [_text("Hello there")]}],
            "tools": [{"name": "now", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
        },
    ),
    (
        "a tool_choice without tools is left out",
        {"messages": HI, "tool_choice": "none"},
        {"max_tokens": 4096, "messages": [{"role": "user", "content": [_text("Hello there")]}]},
    ),
    (
        "sampling, stop, user and stream; fields with no equivalent dropped",
        {
            "messages": HI,
            "max_tokens": 100,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": "END",
            "user": "u-7",
            "stream": True,
            "stream_options": {"include_usage": True},
            "n": 1,
            "seed": 3,
            "presence_penalty": 0.1,
            "response_format": {"type": "json_object"},
            "logprobs": True,
        },
        {
            "max_tokens": 100,
            "messages": [{"role": "user", "content": [_text("Hello there")]}],
            "temperature": 0.5,
            "top_p": 0.9,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u-7"},
            "stream": True,
        },
    ),
    (
        "reasoning_effort turns on thinking; temperature left out",
        {"messages": HI, "max_tokens": 8000, "reasoning_effort": "medium", "temperature": 0.2},
        {
            "max_tokens": 8000,
            "messages": [{"role": "user", "content": [_text("Hello there")]}],
            "thinking": {"type": "enabled", "budget_tokens": 4096},
        },
    ),
    (
        "a thinking budget is capped below max_tokens, and none under 1024",
        {"messages": HI, "max_tokens": 600, "reasoning_effort": "high", "temperature": 0.2},
        {
            "max_tokens": 600,
            "messages": [{"role": "user", "content": [_text("Hello there")]}],
            "temperature": 0.2,
        },
    ),
]


@pytest.mark.parametrize("chat, expected", [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS])
def test_a_chat_body_becomes_this_messages_body(chat, expected):
    assert messages_body(chat, model="claude-x") == {"model": "claude-x", **expected}


def test_the_models_max_output_is_the_default_max_tokens():
    body = messages_body({"messages": HI}, model="m", default_max_tokens=1234)
    assert body["max_tokens"] == 1234
    body = messages_body({"messages": HI, "max_tokens": 7}, model="m", default_max_tokens=1234)
    assert body["max_tokens"] == 7


@pytest.mark.parametrize(
    "chat, param",
    [
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ]
            },
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 3}]}]},
            "messages[0].content[0].image_url.url",
        ),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "a"}]}]},
            "messages[0].tool_calls[0].function.name",
        ),
        ({"messages": [{"role": "assistant", "tool_calls": "x"}]}, "messages[0].tool_calls"),
        (
            {"messages": [{"role": "system", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": HI, "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"messages": HI, "tools": ["x"]}, "tools[0].type"),
        ({"messages": HI, "tools": {"a": 1}}, "tools"),
        ({"messages": HI, "tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ],
)
def test_a_body_with_no_messages_form_is_refused_naming_the_field(chat, param):
    with pytest.raises(InvalidRequest) as caught:
        messages_body(chat, model="m")
    assert caught.value.param == param
    assert "Anthropic" in caught.value.message


# --- Golden: Message -> chat completion -----------------------------------------------------

ANTHROPIC_USAGE = {
    "input_tokens": 3,
    "output_tokens": 20,
    "cache_read_input_tokens": 4,
    "cache_creation_input_tokens": 3,
}
CHAT_USAGE = {
    "prompt_tokens": 10,
    "completion_tokens": 20,
    "total_tokens": 30,
    "prompt_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 3},
}


def test_a_message_becomes_a_chat_completion_with_openais_usage():
    message = {
        "id": "msg_01abc",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [
            {"type": "thinking", "thinking": "Hmm.", "signature": "s"},
            _text("Hello "),
            _text("there."),
        ],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": ANTHROPIC_USAGE,
    }
    assert chat_completion(message, created=7) == {
        "id": "chatcmpl-01abc",
        "object": "chat.completion",
        "created": 7,
        "model": "claude-x",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello there.",
                    "reasoning_content": "Hmm.",
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": CHAT_USAGE,
    }
    # The gateway reads its own block back as the upstream's: the same tokens, the same bill.
    assert usage_from_block(CHAT_USAGE) == usage_from_block(ANTHROPIC_USAGE)


@pytest.mark.parametrize(
    "stop_reason, finish",
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        (None, "stop"),
    ],
)
def test_a_stop_reason_becomes_its_finish_reason(stop_reason, finish):
    reply = chat_completion({"content": [_text("x")], "stop_reason": stop_reason}, created=0)
    assert reply["choices"][0]["finish_reason"] == finish


def test_tool_use_blocks_become_tool_calls_and_no_usage_stays_absent():
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
    reply = chat_completion({"id": "msg_1", "content": [use], "stop_reason": "tool_use"}, created=0)
    message = reply["choices"][0]["message"]
    assert message == {"role": "assistant", "content": None, "tool_calls": [CALL]}
    assert "usage" not in reply
    garbage = chat_completion({"content": "nonsense", "usage": {"input_tokens": -1}}, created=0)
    assert garbage["choices"][0]["message"] == {"role": "assistant", "content": ""}
    assert "usage" not in garbage


def test_an_anthropic_error_becomes_openais_envelope():
    refusal = {"type": "error", "error": {"type": "invalid_request_error", "message": "Bad."}}
    assert openai_error(400, refusal) == {
        "error": {"message": "Bad.", "type": "invalid_request_error", "param": None, "code": None}
    }
    fallback = openai_error(413, None)["error"]
    assert fallback["message"] == "The upstream refused the request (HTTP 413)."


# --- Golden: Messages stream -> chat chunks ---------------------------------------------------


def _sse(kind, data):
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def _chunks(out):
    return [json.loads(e.removeprefix(b"data: ")) for e in out if not e.startswith(b"data: [DONE]")]


START = _sse(
    "message_start",
    {
        "type": "message_start",
        "message": {"id": "msg_9", "model": "x", "usage": {**ANTHROPIC_USAGE, "output_tokens": 1}},
    },
)


def _relay(include_usage=False):
    return ChatChunkRelay(public_model="claude", include_usage=include_usage, created=5)


def test_a_text_stream_becomes_chunks_with_the_usage_chunk_and_done():
    relay = _relay(include_usage=True)
    events = [
        START,
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": _text("")},
        ),
        _sse("ping", {"type": "ping"}),
        _sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hel"},
            },
        ),
        _sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "lo"},
            },
        ),
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens"},
                "usage": {"output_tokens": 20},
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    out = relay.relay_batch(events)
    assert out[-1] == b"data: [DONE]\n\n" and relay.saw_done
    chunks = _chunks(out)
    assert {(c["id"], c["model"], c["created"], c["object"]) for c in chunks} == {
        ("chatcmpl-9", "claude", 5, "chat.completion.chunk")
    }
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, None, "length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == CHAT_USAGE
    assert relay.content_events == 2
    assert relay.usage == usage_from_block(ANTHROPIC_USAGE) and not relay.usage.is_estimated


def test_tool_use_blocks_become_tool_call_deltas_without_a_usage_chunk_unless_asked():
    relay = _relay()
    events = [
        START,
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": _text("")},
        ),
        _sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Let me see."},
            },
        ),
        _sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {},
                },
            },
        ),
        _sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"city": '},
            },
        ),
        _sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'},
            },
        ),
        _sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
            },
        ),
        _sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": ""},
            },
        ),
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use"},
                "usage": {"output_tokens": 9},
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    chunks = _chunks(relay.relay_batch(events))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[2:6] == [
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "now", "arguments": ""},
                }
            ]
        },
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all("usage" not in c for c in chunks)
    assert relay.usage.completion_tokens == 9


def test_a_cut_stream_counts_its_prompt_and_a_token_a_delta():
    relay = _relay()
    delta = _sse(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a"}},
    )
    relay.relay_batch([START, delta, delta, delta])
    assert not relay.saw_done
    usage = relay.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.is_estimated) == (10, 3, True)
    error = json.loads(relay.error_event(UpstreamError("cut")).removeprefix(b"data: "))
    assert error["error"]["message"] == "cut"


def test_an_anthropic_error_event_is_the_streams_error():
    relay = _relay()
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert relay.relay_batch([START, _sse("error", overloaded)])[1:] == []
    event = relay.error_event(UpstreamError("The upstream failed mid-stream."))
    error = json.loads(event.removeprefix(b"data: "))["error"]
    assert error["message"] == "The upstream failed mid-stream: Overloaded"
    assert error["code"] == "upstream_error"


# --- Through the gateway --------------------------------------------------------------------


def _claude(acme, *urls_and_styles, name="claude"):
    """A chat model whose upstreams (in order) have these base URLs and API styles."""
    model = make_model(name, owner=acme, base_urls=[])
    for priority, (url, style) in enumerate(urls_and_styles):
        UpstreamFactory(
            model=model,
            name=f"{name}-{priority}",
            base_url=url,
            priority=priority,
            provider_model_id="claude-upstream-id",
            api_style=style,
            api_key=UPSTREAM_KEY,
        )
    model.input_price_per_million, model.output_price_per_million = Decimal(2), Decimal(8)
    model.cached_input_price_per_million = Decimal("0.5")
    model.cache_write_price_per_million = Decimal("2.5")
    model.save()
    return model


def _client(world, key=None):
    return openai.OpenAI(base_url=world.base(), api_key=key or world.alice_key, max_retries=0)


def _header(sent, name):
    return next((v for k, v in sent["headers"].items() if k.lower() == name), None)


db = pytest.mark.django_db(transaction=True)


@db
def test_a_chat_completion_is_served_by_messages_and_billed_exactly(world, acme, fake_upstream):
    _claude(acme, (fake_upstream.base_url(**CACHED), ApiStyle.ANTHROPIC))
    fake_upstream.clear()
    reply = _client(world).chat.completions.create(
        model="claude",
        messages=[{"role": "system", "content": "Be brief."}, *HI],
        max_tokens=100,
        user="u-7",
    )
    assert (reply.model, reply.object) == ("claude", "chat.completion")
    choice = reply.choices[0]
    assert choice.message.content.startswith("tok0 tok1 ") and choice.finish_reason == "stop"
    usage = reply.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (10, 20, 30)
    assert usage.prompt_tokens_details.cached_tokens == 4
    [sent] = fake_upstream.requests()
    assert sent["path"].endswith("/v1/messages")
    assert sent["json"] == {
        "model": "claude-upstream-id",
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [_text("Hello there")]}],
        "metadata": {"user_id": "u-7"},
    }
    assert _header(sent, "anthropic-version") == "2023-06-01"
    assert _header(sent, "x-api-key") and not sent["authorization"]["present"]
    [event] = wait_for_usage(1)
    assert (event.route, event.status, event.is_estimated) == ("chat.completions", "ok", False)
    assert (event.prompt_tokens, event.cache_read_tokens, event.cache_write_tokens) == (10, 4, 3)
    assert event.completion_tokens == 20
    # 3 uncached x 2 + 4 read x 0.5 + 3 written x 2.5 + 20 out x 8 = 175.5 micro-credits.
    assert event.cost == Decimal("0.000176")
    assert reply.model_extra["x_switchboard"]["request_id"] == event.request_id


@db
def test_a_stream_is_served_by_messages_with_the_usage_chunk(world, acme, fake_upstream):
    _claude(acme, (fake_upstream.base_url(**CACHED), ApiStyle.ANTHROPIC))
    fake_upstream.clear()
    stream = _client(world).chat.completions.create(
        model="claude", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f"tok{i} " for i in range(20))
    assert {c.model for c in chunks} == {"claude"}
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (10, 20)
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 4
    [sent] = fake_upstream.requests()
    assert sent["json"]["stream"] is True and "stream_options" not in sent["json"]
    [event] = wait_for_usage(1)
    assert (event.status, event.is_stream, event.is_estimated) == ("ok", True, False)
    assert (event.prompt_tokens, event.cache_read_tokens, event.completion_tokens) == (10, 4, 20)
    assert event.cost == Decimal("0.000176")


@db
def test_a_stream_without_include_usage_gets_no_usage_chunk(world, acme, fake_upstream):
    _claude(acme, (fake_upstream.base_url(), ApiStyle.ANTHROPIC))
    chunks = list(_client(world).chat.completions.create(model="claude", messages=HI, stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    [event] = wait_for_usage(1)
    assert (event.status, event.is_estimated, event.completion_tokens) == ("ok", False, 20)


@pytest.mark.parametrize("stream", [False, True])
@db
def test_tools_make_a_round_trip(world, acme, fake_upstream, stream):
    _claude(acme, (fake_upstream.base_url(tool_calls=1), ApiStyle.ANTHROPIC))
    fake_upstream.clear()
    client = _client(world)
    question = [{"role": "user", "content": "Weather in Paris?"}]
    request = {"model": "claude", "tools": [WEATHER], "tool_choice": "required"}
    if stream:
        chunks = list(client.chat.completions.create(**request, messages=question, stream=True))
        [start, *rest] = [
            c.choices[0].delta.tool_calls[0]
            for c in chunks
            if c.choices and c.choices[0].delta.tool_calls
        ]
        call_id, name = start.id, start.function.name
        arguments = "".join(d.function.arguments for d in rest)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
        assert finish == ["tool_calls"]
    else:
        reply = client.chat.completions.create(**request, messages=question)
        assert reply.choices[0].finish_reason == "tool_calls"
        [call] = reply.choices[0].message.tool_calls
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
    assert (name, json.loads(arguments)) == ("get_weather", {"call": 0})
    assert call_id.startswith("toolu_")
    answered = [
        *question,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "Sunny, 21C"},
    ]
    final = client.chat.completions.create(**request, messages=answered)
    assert final.choices[0].message.content.startswith("tok0 ")
    assert final.choices[0].finish_reason == "stop"
    first, second = (r["json"] for r in fake_upstream.requests())
    assert first["tools"] == [ANTHROPIC_WEATHER] and first["tool_choice"] == {"type": "any"}
    assert second["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": call_id, "name": "get_weather", "input": {"call": 0}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "Sunny, 21C"}],
        },
    ]


@pytest.mark.parametrize("stream", [False, True])
@db
def test_it_fails_over_from_a_failing_anthropic_upstream_to_an_openai_one(
    world, acme, fake_upstream, stream
):
    _claude(
        acme,
        (fake_upstream.base_url(status=529), ApiStyle.ANTHROPIC),
        (fake_upstream.base_url(), ApiStyle.OPENAI),
    )
    fake_upstream.clear()
    text = _ask(world, stream)
    assert text.startswith("tok0 ")
    first, second = fake_upstream.requests()
    assert first["path"].endswith("/v1/messages")
    assert second["path"].endswith("/v1/chat/completions") and second["json"]["messages"] == HI
    [event] = wait_for_usage(1)
    assert (event.status, event.attempts) == ("ok", 2)


@pytest.mark.parametrize("stream", [False, True])
@db
def test_it_fails_over_from_an_openai_upstream_to_an_anthropic_one(
    world, acme, fake_upstream, stream
):
    _claude(
        acme,
        (fake_upstream.base_url(status=503), ApiStyle.OPENAI),
        (fake_upstream.base_url(**CACHED), ApiStyle.ANTHROPIC),
    )
    fake_upstream.clear()
    assert _ask(world, stream).startswith("tok0 ")
    first, second = fake_upstream.requests()
    assert first["path"].endswith("/v1/chat/completions")
    assert second["path"].endswith("/v1/messages") and "stream_options" not in second["json"]
    [event] = wait_for_usage(1)
    assert (event.status, event.attempts, event.cache_read_tokens, event.is_estimated) == (
        "ok",
        2,
        4,
        False,
    )


def _ask(world, stream):
    client = _client(world)
    if stream:
        chunks = client.chat.completions.create(model="claude", messages=HI, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return client.chat.completions.create(model="claude", messages=HI).choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
@db
def test_an_anthropic_refusal_reaches_the_client_in_openais_envelope(
    world, acme, fake_upstream, stream
):
    _claude(acme, (fake_upstream.base_url(status=400), ApiStyle.ANTHROPIC))
    with pytest.raises(openai.BadRequestError) as caught:
        _client(world).chat.completions.create(model="claude", messages=HI, stream=stream)
    assert caught.value.status_code == 400
    assert caught.value.response.json() == {
        "error": {
            "message": "fake upstream: injected error (status 400)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    [event] = wait_for_usage(1)
    assert (event.status, event.http_status) == ("upstream_error", 400)


@db
def test_a_body_with_no_messages_form_is_a_clear_400(world, acme, fake_upstream):
    _claude(acme, (fake_upstream.base_url(), ApiStyle.ANTHROPIC))
    fake_upstream.clear()
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    body = {"model": "claude", "messages": [{"role": "user", "content": [audio]}]}
    auth = {"Authorization": f"Bearer {world.alice_key}"}
    response = httpx.post(f"{world.base()}/chat/completions", json=body, headers=auth, timeout=10)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == (
        "invalid_request_error",
        "messages[0].content[0].type",
    )
    assert not fake_upstream.requests()
    [event] = wait_for_usage(1)
    assert (event.status, event.http_status) == ("upstream_error", 400)


@db
def test_a_stream_cut_midway_ends_in_an_error_event_and_bills_what_was_delivered(
    world, acme, fake_upstream
):
    _claude(acme, (fake_upstream.base_url(drop_after=3, **CACHED), ApiStyle.ANTHROPIC))
    body = {"model": "claude", "messages": HI, "stream": True}
    auth = {"Authorization": f"Bearer {world.alice_key}"}
    with httpx.stream(
        "POST", f"{world.base()}/chat/completions", json=body, headers=auth, timeout=10
    ) as response:
        events = [
            line.removeprefix("data: ")
            for line in response.iter_lines()
            if line.startswith("data: ")
        ]
    assert "[DONE]" not in events
    *chunks, last = [json.loads(e) for e in events]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "tok0 tok1 tok2 "
    assert last["error"]["code"] == "upstream_error"
    [event] = wait_for_usage(1)
    assert (event.status, event.is_estimated) == ("upstream_error", True)
    assert (event.prompt_tokens, event.cache_read_tokens, event.completion_tokens) == (10, 4, 3)


@db
def test_embeddings_and_completions_never_go_to_an_anthropic_upstream(world, acme, fake_upstream):
    _claude(acme, (fake_upstream.base_url(), ApiStyle.ANTHROPIC))
    fake_upstream.clear()
    auth = {"Authorization": f"Bearer {world.alice_key}"}
    body = {"model": "claude", "prompt": "Once upon"}
    response = httpx.post(f"{world.base()}/completions", json=body, headers=auth, timeout=10)
    assert response.status_code == 502
    assert response.json()["error"]["message"] == "No upstream of model 'claude' answered."
    assert not fake_upstream.requests()


@db
def test_it_shows_an_outsider_nothing(world, acme, fake_upstream):
    _claude(acme, (fake_upstream.base_url(), ApiStyle.ANTHROPIC))
    fake_upstream.clear()
    with pytest.raises(openai.NotFoundError) as caught:
        _client(world, key=world.charlie_key).chat.completions.create(model="claude", messages=HI)
    assert "claude" not in caught.value.body["available_models"]
    assert not fake_upstream.requests()
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize("stream", [False, True])
@db
def test_the_responses_api_reaches_an_anthropic_only_model(world, acme, fake_upstream, stream):
    _claude(acme, (fake_upstream.base_url(**CACHED), ApiStyle.ANTHROPIC))
    fake_upstream.clear()
    client = _client(world)
    request = {"model": "claude", "input": "Hello there", "instructions": "Be brief."}
    if stream:
        with client.responses.stream(**request) as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(**request)
    assert response.status == "completed" and response.model == "claude"
    assert response.output_text.startswith("tok0 tok1 ")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (10, 20)
    assert response.usage.input_tokens_details.cached_tokens == 4
    [sent] = fake_upstream.requests()
    assert sent["path"].endswith("/v1/messages")
    assert sent["json"]["system"] == "Be brief."
    assert sent["json"]["messages"] == [{"role": "user", "content": [_text("Hello there")]}]
    [event] = wait_for_usage(1)
    assert (event.route, event.status, event.cache_read_tokens) == ("responses", "ok", 4)
    assert event.cost == Decimal("0.000176")


# --- The chat page --------------------------------------------------------------------------


def _cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


@pytest.fixture
async def gateway_session():
    """The consumer runs the gateway on the test's own loop: close its client session there."""
    yield
    from ai.gateway.upstream import close_session

    await close_session()


@db
async def test_the_chat_page_streams_a_reply_from_an_anthropic_upstream(
    world, acme, alice, fake_upstream, gateway_session
):
    url = fake_upstream.base_url(**CACHED)
    model = await sync_to_async(_claude)(acme, (url, ApiStyle.ANTHROPIC))
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    headers.append((b"cookie", await sync_to_async(_cookie)(alice)))
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_json_to(
        {"type": "send", "model_id": model.id, "content": "Hello there", "system_prompt": "Be kind"}
    )
    seen = []
    while not seen or seen[-1]["type"] != "done":
        seen.append(await communicator.receive_json_from(timeout=10))
    await communicator.disconnect()
    deltas = [m["content"] for m in seen if m["type"] == "delta"]
    assert "".join(deltas) == "".join(f"tok{i} " for i in range(20))
    assert seen[-1]["status"] == "complete"
    reply = await Message.objects.aget(pk=seen[-1]["message"])
    assert reply.content == "".join(deltas)
    [sent] = await sync_to_async(fake_upstream.requests)()
    assert sent["path"].endswith("/v1/messages") and sent["json"]["system"] == "Be kind"
    for _ in range(100):
        event = await UsageEvent.objects.filter(model=model).afirst()
        if event:
            break
        await asyncio.sleep(0.05)
    assert (event.status, event.prompt_tokens, event.cache_read_tokens) == ("ok", 10, 4)
    assert event.completion_tokens == 20 and not event.is_estimated


@db
def test_inference_with_input_uses_the_models_max_output_as_max_tokens(world, acme, fake_upstream):
    model = _claude(acme, (fake_upstream.base_url(), ApiStyle.ANTHROPIC))
    model.config = {"max_output_tokens": 1000}
    model.save()
    fake_upstream.clear()
    auth = {"Authorization": f"Bearer {world.alice_key}"}
    body = {"model": "claude", "input": "Hello there"}
    response = httpx.post(f"{world.url}/api/v1/ai/inference", json=body, headers=auth, timeout=10)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"].startswith("tok0 ")
    [sent] = fake_upstream.requests()
    assert sent["json"]["max_tokens"] == 1000
    assert sent["json"]["messages"] == [{"role": "user", "content": [_text("Hello there")]}]


@pytest.mark.parametrize(
    "body, message",
    [
        ({"stream_options": {}}, "stream_options: Extra inputs are not permitted"),
        (
            {"messages": [*HI, *HI]},
            "messages: roles must alternate between 'user' and 'assistant'",
        ),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role: Input should"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages.0.content.0.type: Input tag is invalid",
        ),
    ],
)
def test_the_fake_anthropic_upstream_refuses_what_anthropic_refuses(fake_upstream, body, message):
    request = {"model": "x", "max_tokens": 5, "messages": HI, **body}
    response = httpx.post(fake_upstream.base_url() + "/messages", json=request, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(message)


@pytest.mark.parametrize(
    "stream, statuses, sent", [(False, ["miss", "hit"], 1), (True, ["miss", "miss"], 2)]
)
@db
def test_a_translated_reply_is_cached_and_a_translated_stream_is_not(
    world, acme, fake_upstream, stream, statuses, sent, settings
):
    # The database's cache (Redis would keep an earlier run's reply under the same ids).
    settings.REDIS_URL = ""
    model = _claude(acme, (fake_upstream.base_url(), ApiStyle.ANTHROPIC))
    model.response_cache_ttl = 300
    model.save()
    fake_upstream.clear()
    body = {"model": "claude", "messages": HI, "stream": stream}
    auth = {"Authorization": f"Bearer {world.alice_key}"}
    replies = [
        httpx.post(f"{world.base()}/chat/completions", json=body, headers=auth, timeout=10)
        for _ in range(2)
    ]
    assert [r.status_code for r in replies] == [200, 200]
    assert [r.headers.get("x-switchboard-cache") for r in replies] == statuses
    assert len(fake_upstream.requests()) == sent
    if not stream:
        first, second = (r.json()["choices"][0]["message"] for r in replies)
        assert first == second and first["content"].startswith("tok0 ")
