"""The OpenAI SDK against the running gateway, responses checked against OpenAI's spec."""

import base64

import httpx
import openai
import pytest

from tests.ai.conftest import wait_for_usage
from tests.openai_schema import validate

pytestmark = pytest.mark.django_db(transaction=True)

BASES = ["/v1", "/api/v1", "/api/ai/openai/v1"]


def _client(world, key=None, base="/v1"):
    return openai.OpenAI(base_url=world.base(base), api_key=key or world.alice_key, max_retries=0)


@pytest.mark.parametrize("base", BASES)
def test_it_answers_a_chat_completion_under_every_base_url(world, base):
    completion = _client(world, base=base).chat.completions.create(
        model="acme-chat", messages=[{"role": "user", "content": "Hello there"}]
    )
    assert completion.model == "acme-chat"
    assert completion.choices[0].message.content.startswith("tok0 ")
    assert completion.usage.total_tokens > 0


def test_it_returns_a_chat_completion_that_matches_openais_schema(world):
    response = httpx.post(
        f"{world.base()}/chat/completions",
        headers={"Authorization": f"Bearer {world.alice_key}"},
        json={"model": "acme-chat", "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert response.status_code == 200
    body = response.json()
    validate(body, "CreateChatCompletionResponse")
    assert body["model"] == "acme-chat"
    assert body["x_switchboard"]["deployment_id"] == "acme-chat-primary"
    assert isinstance(body["x_switchboard"]["response_time_ms"], int)
    assert response.headers["x-request-id"].startswith("req_")
    assert response.headers["x-switchboard-upstream"] == "acme-chat-primary"
    assert int(response.headers["x-switchboard-upstream-ms"]) >= 0


def test_it_streams_chunks_that_match_openais_schema(world):
    stream = _client(world).chat.completions.create(
        model="acme-chat",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
    )
    chunks = list(stream)
    assert len(chunks) >= 20
    for chunk in chunks:
        validate(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
        assert chunk.model == "acme-chat"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("tok0 tok1 ")
    assert all(c.usage is None for c in chunks), "usage chunk leaked without include_usage"


def test_it_sends_the_usage_chunk_when_the_client_asks(world):
    stream = _client(world).chat.completions.create(
        model="acme-chat",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 20


async def test_it_works_with_the_async_client(world):
    client = openai.AsyncOpenAI(base_url=world.base(), api_key=world.alice_key, max_retries=0)
    completion = await client.chat.completions.create(
        model="acme-chat", messages=[{"role": "user", "content": "Hi"}]
    )
    assert completion.choices[0].finish_reason == "stop"
    stream = await client.chat.completions.create(
        model="acme-chat", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    pieces = [chunk async for chunk in stream]
    assert len(pieces) > 3
    await client.close()


def test_it_answers_a_legacy_completion(world):
    completion = _client(world).completions.create(model="acme-chat", prompt="Once upon")
    validate(completion.model_dump(exclude_unset=True), "CreateCompletionResponse")
    assert completion.model == "acme-chat"
    assert completion.choices[0].text.startswith("tok0")


def test_it_streams_a_legacy_completion(world):
    chunks = list(
        _client(world).completions.create(model="acme-chat", prompt="Once upon", stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices).startswith("tok0 tok1")


def test_it_creates_embeddings(world):
    result = _client(world).embeddings.create(model="acme-embed", input=["a", "b"])
    validate(result.model_dump(exclude_unset=True), "CreateEmbeddingResponse")
    assert [d.index for d in result.data] == [0, 1]
    assert result.model == "acme-embed"


def test_it_generates_images(world):
    result = _client(world).images.generate(model="acme-image", prompt="a cat", n=2)
    validate(result.model_dump(exclude_unset=True), "ImagesResponse")
    assert base64.b64decode(result.data[0].b64_json).startswith(b"\x89PNG")
    events = wait_for_usage(1)
    assert events[0].images == 2
    assert str(events[0].cost) == "0.080000"


def test_it_lists_only_the_models_the_caller_may_use(world):
    listed = _client(world).models.list()
    validate(listed.model_dump(exclude_unset=True), "ListModelsResponse")
    assert [m.id for m in listed.data] == ["acme-chat", "acme-embed", "acme-image"]
    model = _client(world).models.retrieve("acme-chat")
    validate(model.model_dump(exclude_unset=True), "Model")


def test_it_raises_the_sdks_authentication_error_for_a_bad_key(world):
    with pytest.raises(openai.AuthenticationError) as caught:
        _client(world, key="sb-wrong").models.list()
    validate(caught.value.body and {"error": caught.value.body}, "ErrorResponse")
    assert caught.value.code == "invalid_api_key"


def test_it_raises_not_found_with_the_available_models(world):
    with pytest.raises(openai.NotFoundError) as caught:
        _client(world).chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.code == "model_not_found"
    assert caught.value.response.json()["available_models"] == [
        "acme-chat",
        "acme-embed",
        "acme-image",
    ]
    validate(caught.value.response.json(), "ErrorResponse")


def test_it_raises_permission_denied_for_a_key_without_proxy(world):
    with pytest.raises(openai.PermissionDeniedError):
        _client(world, key=world.read_only_key).chat.completions.create(
            model="acme-chat", messages=[{"role": "user", "content": "Hi"}]
        )


def test_it_raises_bad_request_for_the_wrong_kind_of_model(world):
    with pytest.raises(openai.BadRequestError) as caught:
        _client(world).chat.completions.create(
            model="acme-embed", messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.code == "invalid_model_type"


def test_it_answers_503_when_the_model_has_no_enabled_upstream(world):
    world.chat.upstreams.update(is_enabled=False)
    world.chat.save()  # a change through the ORM signals the caches
    with pytest.raises(openai.InternalServerError) as caught:
        _client(world).chat.completions.create(
            model="acme-chat", messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.status_code == 503
    assert caught.value.code == "model_not_available"


def test_a_stream_read_to_its_done_is_answered_whenever_the_upstream_hangs_up(world):
    # Some servers (llama-cpp-python's) keep the connection open after [DONE]; the
    # SDK hangs up as soon as it reads [DONE]: the reply was whole all the same.
    stream = _client(world).chat.completions.create(
        model="acme-chat",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        extra_body={"fake_upstream": {"linger_ms": 5000}},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    (event,) = wait_for_usage(1)
    assert (event.status, event.is_estimated) == ("ok", False)
    assert event.completion_tokens == 20


def test_streams_one_after_another_reuse_the_upstream_connection(world, fake_upstream):
    # The relay stops at [DONE]; it still reads the body's end that follows at once,
    # so the connection goes back to the pool instead of being closed.
    client = _client(world)
    for _ in range(3):
        stream = client.chat.completions.create(
            model="acme-chat", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    chats = [r for r in fake_upstream.requests() if r["path"].endswith("/chat/completions")]
    assert len(chats) == 3
    assert len({r["peer"] for r in chats}) == 1
    assert len(wait_for_usage(3)) == 3
