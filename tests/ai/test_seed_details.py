"""Seed details: the /api/ai/openai base URL (seed 000), botserver's `input` (seed 004) and
`available_models` where the SDKs' typed errors can read it."""

import httpx
import openai
import pytest

from ai.models import UsageEvent
from tests.ai.conftest import wait_for_usage
from tests.openai_schema import validate

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "Hi"}]


def _client(world, key=None, base="/api/ai/openai"):
    return openai.OpenAI(base_url=world.base(base), api_key=key or world.alice_key, max_retries=0)


def _inference(world, body, key=None):
    return httpx.post(
        f"{world.url}/api/v1/ai/inference",
        headers={"Authorization": f"Bearer {key or world.alice_key}"},
        json=body,
        timeout=10,
    )


# --- /api/ai/openai, the base URL seed 000 documents ---------------------------------------


def test_it_serves_the_openai_sdk_at_seed_000s_base_url_without_v1(world):
    client = _client(world)
    completion = client.chat.completions.create(model="acme-chat", messages=HI)
    assert completion.choices[0].message.content.startswith("tok0 ")
    chunks = list(client.chat.completions.create(model="acme-chat", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("tok0")
    assert client.embeddings.create(model="acme-embed", input="a").data[0].index == 0
    assert [m.id for m in client.models.list()] == ["acme-chat", "acme-embed", "acme-image"]
    assert client.models.retrieve("acme-chat").id == "acme-chat"
    assert [e.route for e in wait_for_usage(3)] == ["chat.completions"] * 2 + ["embeddings"]


def test_it_shows_an_outsider_nothing_at_seed_000s_base_url(world):
    client = _client(world, key=world.charlie_key)
    assert [m.id for m in client.models.list()] == ["charlie-chat"]
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="acme-chat", messages=HI)
    assert caught.value.body["available_models"] == ["charlie-chat"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("acme-chat")
    assert not UsageEvent.objects.exists()


def test_it_answers_an_unknown_path_below_seed_000s_base_url_with_a_json_404(world):
    response = httpx.get(f"{world.url}/api/ai/openai/nope", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --- available_models inside the error object -------------------------------------------


def test_it_puts_the_available_models_inside_the_error_and_beside_it(world):
    with pytest.raises(openai.NotFoundError) as caught:
        _client(world, base="/v1").chat.completions.create(model="nope", messages=HI)
    expected = ["acme-chat", "acme-embed", "acme-image"]
    assert caught.value.body["available_models"] == expected  # the SDK's `error` object
    assert caught.value.code == "model_not_found"
    body = caught.value.response.json()
    assert body["available_models"] == expected
    validate(body, "ErrorResponse")


def test_it_puts_the_available_models_inside_the_error_of_a_model_lookup(world):
    with pytest.raises(openai.NotFoundError) as caught:
        _client(world, base="/v1", key=world.charlie_key).models.retrieve("acme-chat")
    assert caught.value.body["available_models"] == ["charlie-chat"]


# --- botserver's inference with `input` ------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("Hello there", "Hello there"),
        (
            ["Hello", "there"],
            [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}],
        ),
        (
            ["Look:", {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}],
            [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        ),
    ],
)
def test_it_turns_inference_input_into_one_user_message(world, fake_upstream, given, sent):
    response = _inference(world, {"model": "acme-chat", "input": given, "temperature": 0.5})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].startswith("tok0 ")
    upstream = fake_upstream.requests()[-1]["json"]
    assert upstream["messages"] == [{"role": "user", "content": sent}]
    assert "input" not in upstream
    assert upstream["temperature"] == 0.5
    assert wait_for_usage(1)[0].route == "chat.completions"


def test_it_streams_an_inference_with_input(world):
    response = _inference(world, {"input": "Hi", "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.text.rstrip().endswith("data: [DONE]")


def test_it_still_takes_messages_on_inference(world, fake_upstream):
    assert _inference(world, {"messages": HI}).status_code == 200
    assert fake_upstream.requests()[-1]["json"]["messages"] == HI


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "Hi", "messages": HI}, "input"),
        ({"input": 5}, "input"),
        ({"input": []}, "input"),
        ({"input": None}, "input"),
        ({"input": {"text": "Hi"}}, "input"),
        ({"input": [5]}, "messages[0].content[0]"),
        ({"input": [{"type": "text", "text": 5}]}, "messages[0].content[0].text"),
        ({}, "messages"),
    ],
)
def test_it_refuses_bad_inference_input_with_a_400_naming_it(world, fake_upstream, body, param):
    fake_upstream.clear()
    response = _inference(world, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert not fake_upstream.requests()
    assert not UsageEvent.objects.exists()


def test_it_shows_an_outsider_nothing_on_inference_with_input(world, fake_upstream):
    fake_upstream.clear()
    response = _inference(world, {"model": "acme-chat", "input": "Hi"}, key=world.charlie_key)
    assert response.status_code == 404
    assert response.json()["error"]["available_models"] == ["charlie-chat"]
    assert not fake_upstream.requests()
