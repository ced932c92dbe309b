"""Bad input on the gateway's routes: a 400 in the envelope naming the field, never a 500."""

import json

import httpx
import pytest

from accounts.models import Tier
from ai.models import UsageEvent
from panel.parsers import MAX_JSON_DEPTH
from tests.ai.conftest import make_model, wait_for_usage

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "Hi"}]
POST_ROUTES = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/images/generations",
    "/api/v1/ai/chat/completions",
    "/api/v1/ai/inference",
    "/api/v1/ai/embeddings",
    "/api/ai/chat",
    "/api/ai/studio",
]


def _post(world, path="/v1/chat/completions", headers=None, **kwargs):
    headers = {
        "Authorization": f"Bearer {world.alice_key}",
        "Content-Type": "application/json",
        **(headers or {}),
    }
    return httpx.post(f"{world.url}{path}", headers=headers, timeout=10, **kwargs)


def _nested(depth: int) -> bytes:
    return b'{"model": "acme-chat", "messages": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("path", POST_ROUTES)
def test_it_refuses_json_nested_a_thousand_levels_deep_on_every_post_route(world, alice, path):
    alice.tier = Tier.PAID  # studio reads the body only for the paid tier
    alice.save()
    for depth in (1_000, 100_000):
        response = _post(world, path, content=_nested(depth))
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_json"
    assert not UsageEvent.objects.exists()


def test_it_never_fails_on_any_nesting_depth_near_the_limits(world):
    # Parsing the body and encoding it again for the upstream happen at different
    # stack depths: no depth may parse and then fail to encode. Nesting up to
    # MAX_JSON_DEPTH in a field the gateway passes on is served.
    statuses = {}
    for depth in [*range(2, MAX_JSON_DEPTH + 3), *range(900, 1_010)]:
        body = b'{"messages": [{"role": "user", "content": "Hi"}], "metadata": '
        response = _post(world, content=body + b"[" * depth + b"]" * depth + b"}")
        statuses[depth] = response.status_code
    assert {d for d, status in statuses.items() if status == 200} == set(range(2, MAX_JSON_DEPTH))
    assert {s for d, s in statuses.items() if d >= MAX_JSON_DEPTH} == {400}


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        ("/v1/chat/completions", {"messages": True}, "messages"),
        ("/v1/chat/completions", {"messages": 5}, "messages"),
        ("/v1/chat/completions", {"messages": "Hi"}, "messages"),
        ("/v1/chat/completions", {"messages": None}, "messages"),
        ("/v1/chat/completions", {"messages": [5]}, "messages[0]"),
        ("/v1/chat/completions", {"messages": [{"content": "Hi"}]}, "messages[0].role"),
        ("/v1/chat/completions", {"messages": [{"role": 1, "content": "Hi"}]}, "messages[0].role"),
        (
            "/v1/chat/completions",
            {"messages": [*HI, {"role": "user", "content": 5}]},
            "messages[1].content",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, 7]}]},
            "messages[0].content[1]",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "messages[0].content[0].text",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]},
            "messages[0].content[0].text",
        ),
        ("/v1/chat/completions", {"messages": HI, "stream": "yes"}, "stream"),
        ("/v1/chat/completions", {"messages": HI, "stream": 1}, "stream"),
        (
            "/v1/chat/completions",
            {"messages": HI, "stream": True, "stream_options": 1},
            "stream_options",
        ),
        ("/v1/chat/completions", {"messages": HI, "n": 0}, "n"),
        ("/v1/chat/completions", {"messages": HI, "n": 10**30}, "n"),
        ("/v1/chat/completions", {"messages": HI, "n": "2"}, "n"),
        ("/v1/chat/completions", {"messages": HI, "n": True}, "n"),
        ("/v1/chat/completions", {"messages": HI, "modelId": 1.5}, "modelId"),
        ("/v1/chat/completions", {"messages": HI, "modelId": True}, "modelId"),
        ("/v1/completions", {"prompt": 5}, "prompt"),
        ("/v1/completions", {"prompt": {"text": "Hi"}}, "prompt"),
        ("/v1/completions", {"prompt": "Hi", "stream": "true"}, "stream"),
        ("/v1/embeddings", {"model": "acme-embed", "input": True}, "input"),
        ("/v1/embeddings", {"model": "acme-embed", "input": None}, "input"),
        ("/v1/images/generations", {"model": "acme-image", "prompt": "a cat", "n": -1}, "n"),
        ("/v1/images/generations", {"model": "acme-image", "prompt": "a cat", "n": 10**6}, "n"),
        (
            "/api/v1/ai/inference",
            {"messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
        ),
    ],
)
def test_it_answers_a_field_of_the_wrong_type_with_a_400_naming_it(
    world, fake_upstream, path, fields, param
):
    response = _post(world, path, json=fields)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert set(error) == {"message", "type", "param", "code"}
    assert not fake_upstream.requests()
    assert not UsageEvent.objects.exists()


def test_it_still_serves_every_shape_of_valid_input(world):
    parts = [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "x"}}]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": parts},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "user", "content": "Go on"},
    ]
    bodies = [
        ("/v1/chat/completions", {"messages": messages, "stream": False, "n": 1}),
        ("/v1/chat/completions", {"messages": HI, "stream": None, "stream_options": None}),
        ("/v1/completions", {"prompt": ["Hi", "there"]}),
        ("/v1/embeddings", {"model": "acme-embed", "input": ["a", "b"]}),
        ("/v1/images/generations", {"model": "acme-image", "prompt": "a cat", "n": 2}),
    ]
    for path, body in bodies:
        response = _post(world, path, json=body)
        assert response.status_code == 200, (path, response.text)
    assert len(wait_for_usage(len(bodies))) == len(bodies)


def test_it_streams_only_when_stream_is_true(world):
    response = _post(world, json={"messages": HI, "stream": True})
    assert response.headers["content-type"] == "text/event-stream"
    assert response.text.rstrip().endswith("data: [DONE]")
    response = _post(world, json={"messages": HI, "stream": False})
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.text)["object"] == "chat.completion"


@pytest.mark.parametrize(
    ("query", "param"),
    [("from=2024-13-45", "from"), ("to=2024-02-30", "to"), ("from=2024-01-01T25:00", "from")],
)
def test_it_refuses_an_impossible_usage_date_with_a_400(world, query, param):
    response = httpx.get(
        f"{world.url}/api/ai/usage?{query}",
        headers={"Authorization": f"Bearer {world.alice_key}"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_it_serves_a_model_whose_upstream_name_is_not_latin_1(world, acme, fake_upstream):
    make_model("intl", owner=acme, base_urls=[fake_upstream.base_url()])
    from ai.models import Upstream

    Upstream.objects.filter(name="intl-0").update(name="Zürich – 東京")
    response = _post(world, json={"model": "intl", "messages": HI})
    assert response.status_code == 200
    assert response.json()["x_switchboard"]["deployment_id"] == "Zürich – 東京"


def test_a_host_outside_allowed_hosts_is_refused_every_time(world):
    # The gateway remembers hosts it found allowed (issue 20); a refused one is never
    # remembered, before or after an allowed one was.
    body = {"model": "acme-chat", "messages": HI}
    for host in ("evil.example", "127.0.0.1", "evil.example", "evil.example"):
        response = _post(world, json=body, headers={"Host": host})
        if host == "evil.example":
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "bad_host"
        else:
            assert response.status_code == 200, response.text
    assert UsageEvent.objects.count() == 1


def test_a_host_allowed_once_is_refused_when_the_setting_drops_it(world, settings):
    body = {"model": "acme-chat", "messages": HI}
    assert _post(world, json=body).status_code == 200
    settings.ALLOWED_HOSTS = ["only.example"]
    response = _post(world, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_host"


@pytest.mark.parametrize(
    ("raw", "sent"),
    [
        # What orjson refuses falls back to the json module (panel.fastjson): served as before.
        (b'{"n": 123456789012345678901234567890}', {"n": 123456789012345678901234567890}),
        (b'{"n": -18446744073709551617}', {"n": -18446744073709551617}),
        (b'{"s": "caf\\u00e9 \\ud83d\\ude00"}', {"s": "café 😀"}),
    ],
)
def test_bodies_orjson_refuses_are_served_as_before(world, fake_upstream, raw, sent):
    fake_upstream.clear()
    body = b'{"model": "acme-chat", "messages": [{"role": "user", "content": "Hi"}], "metadata": '
    response = _post(world, content=body + raw + b"}")
    assert response.status_code == 200, response.text
    [request] = fake_upstream.requests()
    assert request["json"]["metadata"] == sent


def test_a_lone_surrogate_is_refused_or_served_never_a_500(world):
    body = b'{"model": "acme-chat", "messages": [{"role": "user", "content": "\\ud800"}]}'
    response = _post(world, content=body)
    assert response.status_code in (200, 400), response.text
    assert response.headers["content-type"].startswith("application/json")
