"""Tests for the OpenAI-spec validation helper (``tests/openai_schema.py``).

Each target schema gets a realistic valid payload and at least one invalid one, so we know the
validator can both pass and fail. No database is touched.
"""

from __future__ import annotations

import copy

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from tests import openai_schema
from tests.openai_schema import errors, validate

CREATED = 1741570283


def without(payload: dict, *path: str | int) -> dict:
    """Deep copy of ``payload`` with the key at ``path`` removed."""
    result = copy.deepcopy(payload)
    node = result
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return result


def replaced(payload: dict, value, *path: str | int) -> dict:
    """Deep copy of ``payload`` with the value at ``path`` replaced."""
    result = copy.deepcopy(payload)
    node = result
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return result


def assert_invalid(payload, schema_name: str, fragment: str) -> None:
    with pytest.raises(AssertionError) as excinfo:
        validate(payload, schema_name)
    message = str(excinfo.value)
    assert schema_name in message
    assert fragment in message, message
    assert errors(payload, schema_name)


# --- fixtures (plain dicts) -------------------------------------------------------------------

USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 5,
    "total_tokens": 17,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}

CHAT_COMPLETION = {
    "id": "chatcmpl-abc123",
    "object": "chat.completion",
    "created": CREATED,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there!", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": USAGE,
}


def chunk(choices: list, **extra) -> dict:
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "gpt-4o-mini",
        "choices": choices,
        **extra,
    }


FIRST_CHUNK = chunk(
    [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
)
CONTENT_CHUNK = chunk(
    [{"index": 0, "delta": {"content": "Hello"}, "logprobs": None, "finish_reason": None}]
)
FINAL_CHUNK = chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
USAGE_CHUNK = chunk([], usage={"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17})

COMPLETION = {
    "id": "cmpl-abc123",
    "object": "text_completion",
    "created": CREATED,
    "model": "gpt-3.5-turbo-instruct",
    "choices": [
        {"text": "This is a test", "index": 0, "logprobs": None, "finish_reason": "length"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
}

EMBEDDINGS = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.0023064255, -0.009327292]}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}

IMAGES = {"created": CREATED, "data": [{"url": "https://example.com/cat.png"}]}

MODEL = {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"}

MODELS = {"object": "list", "data": [MODEL, {**MODEL, "id": "text-embedding-3-small"}]}

ERROR = {
    "error": {
        "message": "The model `nope` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
}


# --- chat completions -------------------------------------------------------------------------


def test_it_accepts_a_minimal_chat_completion():
    validate(CHAT_COMPLETION, "CreateChatCompletionResponse")
    assert errors(CHAT_COMPLETION, "CreateChatCompletionResponse") == []


def test_it_accepts_a_chat_completion_without_usage():
    validate(without(CHAT_COMPLETION, "usage"), "CreateChatCompletionResponse")


def test_it_accepts_a_chat_completion_with_tool_calls():
    message = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    payload = replaced(CHAT_COMPLETION, message, "choices", 0, "message")
    payload = replaced(payload, "tool_calls", "choices", 0, "finish_reason")
    validate(payload, "CreateChatCompletionResponse")


@pytest.mark.parametrize("field", ["id", "object", "created", "model", "choices"])
def test_it_rejects_a_chat_completion_missing_a_required_field(field):
    assert_invalid(
        without(CHAT_COMPLETION, field), "CreateChatCompletionResponse", f"'{field}' is a required"
    )


@pytest.mark.parametrize("field", ["index", "message", "finish_reason", "logprobs"])
def test_it_rejects_a_chat_choice_missing_a_required_field(field):
    payload = without(CHAT_COMPLETION, "choices", 0, field)
    assert_invalid(payload, "CreateChatCompletionResponse", f"'{field}' is a required")


@pytest.mark.parametrize("field", ["role", "content", "refusal"])
def test_it_rejects_a_chat_message_missing_a_required_field(field):
    payload = without(CHAT_COMPLETION, "choices", 0, "message", field)
    assert_invalid(payload, "CreateChatCompletionResponse", f"'{field}' is a required")


def test_it_rejects_a_chat_completion_with_wrong_types():
    assert_invalid(
        replaced(CHAT_COMPLETION, "1741570283", "created"),
        "CreateChatCompletionResponse",
        "$.created",
    )
    assert_invalid(
        replaced(CHAT_COMPLETION, "chat.completion.chunk", "object"),
        "CreateChatCompletionResponse",
        "$.object",
    )
    assert_invalid(
        replaced(CHAT_COMPLETION, "done", "choices", 0, "finish_reason"),
        "CreateChatCompletionResponse",
        "finish_reason",
    )
    assert_invalid(
        replaced(CHAT_COMPLETION, "user", "choices", 0, "message", "role"),
        "CreateChatCompletionResponse",
        "role",
    )


def test_it_rejects_chat_usage_without_total_tokens():
    payload = without(CHAT_COMPLETION, "usage", "total_tokens")
    assert_invalid(payload, "CreateChatCompletionResponse", "'total_tokens' is a required")


# --- chat completion chunks -------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [FIRST_CHUNK, CONTENT_CHUNK, FINAL_CHUNK, USAGE_CHUNK],
    ids=["first", "content", "final", "usage"],
)
def test_it_accepts_a_stream_of_chat_chunks(payload):
    validate(payload, "CreateChatCompletionStreamResponse")


def test_it_accepts_chunks_with_null_usage_and_obfuscation():
    # `usage: null` on every chunk but the last is what include_usage streams send.
    validate(
        {**CONTENT_CHUNK, "usage": None, "obfuscation": "p9K3"},
        "CreateChatCompletionStreamResponse",
    )


def test_it_accepts_a_chunk_without_logprobs():
    # Unlike the non-streaming choice, `logprobs` is optional in a chunk choice.
    validate(without(CONTENT_CHUNK, "choices", 0, "logprobs"), "CreateChatCompletionStreamResponse")


def test_it_accepts_a_tool_call_delta_chunk():
    delta = {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "f", "arguments": ""},
            }
        ]
    }
    validate(
        replaced(CONTENT_CHUNK, delta, "choices", 0, "delta"), "CreateChatCompletionStreamResponse"
    )


@pytest.mark.parametrize("field", ["delta", "finish_reason", "index"])
def test_it_rejects_a_chunk_choice_missing_a_required_field(field):
    payload = without(CONTENT_CHUNK, "choices", 0, field)
    assert_invalid(payload, "CreateChatCompletionStreamResponse", f"'{field}' is a required")


def test_it_rejects_bad_chunks():
    assert_invalid(
        replaced(CONTENT_CHUNK, "chat.completion", "object"),
        "CreateChatCompletionStreamResponse",
        "$.object",
    )
    assert_invalid(
        without(FIRST_CHUNK, "id"), "CreateChatCompletionStreamResponse", "'id' is a required"
    )
    assert_invalid(
        replaced(FINAL_CHUNK, "finished", "choices", 0, "finish_reason"),
        "CreateChatCompletionStreamResponse",
        "finish_reason",
    )
    assert_invalid(
        replaced(USAGE_CHUNK, {"prompt_tokens": 1}, "usage"),
        "CreateChatCompletionStreamResponse",
        "usage",
    )
    assert_invalid(
        replaced(CONTENT_CHUNK, 7, "choices", 0, "delta", "content"),
        "CreateChatCompletionStreamResponse",
        "content",
    )


# --- legacy completions -----------------------------------------------------------------------


def test_it_accepts_a_minimal_completion():
    validate(COMPLETION, "CreateCompletionResponse")
    validate(without(COMPLETION, "usage"), "CreateCompletionResponse")


@pytest.mark.parametrize("field", ["id", "object", "created", "model", "choices"])
def test_it_rejects_a_completion_missing_a_required_field(field):
    assert_invalid(
        without(COMPLETION, field), "CreateCompletionResponse", f"'{field}' is a required"
    )


@pytest.mark.parametrize("field", ["text", "index", "logprobs", "finish_reason"])
def test_it_rejects_a_completion_choice_missing_a_required_field(field):
    payload = without(COMPLETION, "choices", 0, field)
    assert_invalid(payload, "CreateCompletionResponse", f"'{field}' is a required")


def test_it_rejects_a_completion_with_a_null_finish_reason():
    # Unlike a chat chunk choice, a completion choice has a non-nullable finish_reason.
    payload = replaced(COMPLETION, None, "choices", 0, "finish_reason")
    assert_invalid(payload, "CreateCompletionResponse", "finish_reason")


# --- embeddings -------------------------------------------------------------------------------


def test_it_accepts_a_minimal_embedding_response():
    validate(EMBEDDINGS, "CreateEmbeddingResponse")


@pytest.mark.parametrize("field", ["object", "model", "data", "usage"])
def test_it_rejects_an_embedding_response_missing_a_required_field(field):
    assert_invalid(
        without(EMBEDDINGS, field), "CreateEmbeddingResponse", f"'{field}' is a required"
    )


def test_it_rejects_bad_embeddings():
    assert_invalid(
        without(EMBEDDINGS, "data", 0, "index"), "CreateEmbeddingResponse", "'index' is a required"
    )
    assert_invalid(
        replaced(EMBEDDINGS, ["0.1"], "data", 0, "embedding"),
        "CreateEmbeddingResponse",
        "embedding",
    )
    assert_invalid(
        without(EMBEDDINGS, "usage", "total_tokens"),
        "CreateEmbeddingResponse",
        "'total_tokens' is a required",
    )


# --- images -----------------------------------------------------------------------------------


def test_it_accepts_a_minimal_images_response():
    validate(IMAGES, "ImagesResponse")
    validate({"created": CREATED}, "ImagesResponse")  # only `created` is required
    validate(
        {
            "created": CREATED,
            "data": [{"b64_json": "iVBORw0KGgo="}],
            "size": "1024x1024",
            "output_format": "png",
            "usage": {
                "total_tokens": 100,
                "input_tokens": 50,
                "output_tokens": 50,
                "input_tokens_details": {"text_tokens": 10, "image_tokens": 40},
            },
        },
        "ImagesResponse",
    )


def test_it_rejects_bad_images_responses():
    assert_invalid(without(IMAGES, "created"), "ImagesResponse", "'created' is a required")
    assert_invalid(replaced(IMAGES, {"url": 1}, "data", 0), "ImagesResponse", "url")
    assert_invalid(replaced(IMAGES, "512x512", "size"), "ImagesResponse", "size")


# --- models -----------------------------------------------------------------------------------


def test_it_accepts_a_model_and_a_model_list():
    validate(MODEL, "Model")
    validate(MODELS, "ListModelsResponse")
    validate({"object": "list", "data": []}, "ListModelsResponse")


@pytest.mark.parametrize("field", ["id", "object", "created", "owned_by"])
def test_it_rejects_a_model_missing_a_required_field(field):
    assert_invalid(without(MODEL, field), "Model", f"'{field}' is a required")
    assert_invalid(
        without(MODELS, "data", 0, field), "ListModelsResponse", f"'{field}' is a required"
    )


def test_it_rejects_bad_model_lists():
    assert_invalid(without(MODELS, "data"), "ListModelsResponse", "'data' is a required")
    assert_invalid(replaced(MODELS, "models", "object"), "ListModelsResponse", "$.object")
    assert_invalid(replaced(MODEL, "2024", "created"), "Model", "$.created")


# --- errors -----------------------------------------------------------------------------------


def test_it_accepts_the_error_envelope():
    validate(ERROR, "ErrorResponse")
    validate(replaced(ERROR, None, "error", "code"), "ErrorResponse")


def test_it_allows_extra_fields_in_the_error_envelope():
    # Neither ErrorResponse nor Error sets additionalProperties, so extras are allowed.
    validate({**ERROR, "available_models": ["gpt-4o-mini"]}, "ErrorResponse")
    validate(replaced(ERROR, "req_123", "error", "request_id"), "ErrorResponse")


@pytest.mark.parametrize("field", ["message", "type", "param", "code"])
def test_it_rejects_an_error_missing_a_required_field(field):
    # `param` and `code` may be null but must be present.
    assert_invalid(without(ERROR, "error", field), "ErrorResponse", f"'{field}' is a required")


def test_it_rejects_bad_error_envelopes():
    assert_invalid({"detail": "Not found."}, "ErrorResponse", "'error' is a required")
    assert_invalid(replaced(ERROR, 404, "error", "code"), "ErrorResponse", "code")
    assert_invalid({"error": "boom"}, "ErrorResponse", "$.error")


# --- the helper itself ------------------------------------------------------------------------


def test_errors_lists_every_problem_with_its_path():
    payload = {"object": "chat.completion", "created": "yesterday", "choices": []}
    found = errors(payload, "CreateChatCompletionResponse")
    assert "$: 'id' is a required property" in found
    assert "$: 'model' is a required property" in found
    assert "$.created: 'yesterday' is not of type 'integer'" in found


def test_validate_reports_the_schema_name_and_path():
    with pytest.raises(AssertionError, match=r"not a valid Model: \$\.owned_by: 3 is not of type"):
        validate({**MODEL, "owned_by": 3}, "Model")


def test_it_rejects_an_unknown_schema_name():
    with pytest.raises(KeyError, match="NoSuchSchema"):
        validate({}, "NoSuchSchema")


def test_formats_are_not_asserted():
    validate({**IMAGES, "data": [{"url": "not a uri"}]}, "ImagesResponse")


def test_nullable_is_rewritten_for_the_stream_schema():
    """The stream schema still uses OpenAPI 3.0 `nullable: true`; without the rewrite, plain
    2020-12 would reject the `finish_reason: null` that every non-final chunk carries."""
    raw = openai_schema._load_raw_spec()
    registry = Registry().with_resource("urn:raw", DRAFT202012.create_resource(raw))
    raw_validator = Draft202012Validator(
        {"$ref": "urn:raw#/components/schemas/CreateChatCompletionStreamResponse"},
        registry=registry,
    )
    assert not raw_validator.is_valid(CONTENT_CHUNK)
    assert errors(CONTENT_CHUNK, "CreateChatCompletionStreamResponse") == []


def test_denullable_rewrites_types_enums_and_refs():
    schema = {
        "properties": {
            "a": {"type": "string", "enum": ["x"], "nullable": True},
            "b": {"$ref": "#/components/schemas/B", "nullable": True, "description": "d"},
            "c": {"type": "integer", "nullable": False},
            "nullable": {"type": "boolean"},
        }
    }
    assert openai_schema._denullable(schema) == {
        "properties": {
            "a": {"type": ["string", "null"], "enum": ["x", None]},
            "b": {
                "anyOf": [
                    {"$ref": "#/components/schemas/B", "description": "d"},
                    {"type": "null"},
                ]
            },
            "c": {"type": "integer"},
            "nullable": {"type": "boolean"},
        }
    }


def test_no_nullable_keyword_survives_preprocessing():
    def walk(node):
        if isinstance(node, dict):
            assert not isinstance(node.get("nullable"), bool)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(openai_schema.spec()["components"]["schemas"])
