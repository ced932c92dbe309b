"""The exact response cache: per model and tenant, in the database or Redis, streams included."""

import os
import time
from datetime import timedelta

import httpx
import openai
import pytest
import redis
from django.utils import timezone

from ai.gateway import response_cache
from ai.models import CachedResponse, ModelLink, UsageEvent
from ai.tasks import responses_purge_task
from tests.ai.conftest import clear_of_a_minute_turn, wait_for_usage
from tests.factories import MembershipFactory, OrganisationFactory
from tests.servers import LOCAL_REDIS

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(params=["database", "redis"])
def cached(request, settings, world):
    """acme-chat with a 60 s response cache, kept in the database or in Redis."""
    if request.param == "database":
        settings.REDIS_URL = ""
    else:
        url = os.environ.get("REDIS_URL") or LOCAL_REDIS
        try:
            client = redis.Redis.from_url(url)
            client.ping()
        except redis.RedisError:
            pytest.skip("the Redis path needs a Redis server on 127.0.0.1:6379")
        for pattern in ("sb:rc:*", "sb:lim:*", "sb:wallet:*", "sb:breaker:*"):
            for key in client.scan_iter(pattern):
                client.delete(key)
        settings.REDIS_URL = url
    world.chat.response_cache_ttl = 60
    world.chat.save()
    return world


def _post(world, body, *, key=None, headers=None):
    return httpx.post(
        f"{world.base()}/chat/completions",
        headers={"Authorization": f"Bearer {key or world.alice_key}", **(headers or {})},
        json={"model": "acme-chat", "messages": HI, **body},
        timeout=10,
    )


def _stream_text(world, key=None, **kwargs) -> tuple[str, str]:
    client = openai.OpenAI(base_url=world.base(), api_key=key or world.alice_key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="acme-chat", messages=HI, stream=True, **kwargs
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, raw.headers.get("x-switchboard-cache", "")


def test_a_second_identical_request_is_a_hit_that_costs_nothing(cached, fake_upstream):
    first, second = _post(cached, {}), _post(cached, {"user": "someone"})
    assert first.headers["x-switchboard-cache"] == "miss"
    assert second.headers["x-switchboard-cache"] == "hit"
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["x_switchboard"]["cache"] == "hit"
    assert len(fake_upstream.requests()) == 1
    miss, hit = wait_for_usage(2)
    assert (miss.is_cache_hit, hit.is_cache_hit) == (False, True)
    assert miss.cost > 0 and hit.cost == 0
    assert (hit.prompt_tokens, hit.completion_tokens) == (miss.prompt_tokens, 20)
    assert hit.status == "ok" and hit.upstream_id is None


def test_a_stream_is_served_from_a_stored_reply_and_a_stream_is_stored(cached, fake_upstream):
    expected = "".join(f"tok{i} " for i in range(20))
    assert _stream_text(cached) == (expected, "miss")
    assert _stream_text(cached, stream_options={"include_usage": True}) == (expected, "hit")
    reply = _post(cached, {})
    assert reply.headers["x-switchboard-cache"] == "hit"
    assert reply.json()["choices"][0]["message"]["content"] == expected
    assert reply.json()["choices"][0]["finish_reason"] == "stop"
    assert len(fake_upstream.requests()) == 1
    events = wait_for_usage(3)
    assert [e.is_cache_hit for e in events] == [False, True, True]
    assert [e.completion_tokens for e in events] == [20, 20, 20]


def test_a_stream_is_stored_before_its_upstream_hangs_up(cached, fake_upstream):
    """The SDKs stop reading at [DONE]: a client asking again at once finds the reply, also
    when the upstream keeps the stream open a while after it (llama.cpp's server does)."""
    lingers = {"fake_upstream": {"linger_ms": 2000}}
    expected = "".join(f"tok{i} " for i in range(20))
    assert _stream_text(cached, extra_body=lingers) == (expected, "miss")
    assert _stream_text(cached, extra_body=lingers) == (expected, "hit")
    assert len(fake_upstream.requests()) == 1


def test_a_reply_never_crosses_tenants(cached, fake_upstream, charlie):
    globex = OrganisationFactory(name="Globex", slug="globex")
    MembershipFactory(user=charlie, organisation=globex)
    ModelLink.objects.create(model=cached.chat, organisation=globex)
    first = _post(cached, {})
    second = _post(cached, {}, key=cached.charlie_key)
    assert second.status_code == 200
    assert second.headers["x-switchboard-cache"] == "miss"
    assert second.json()["id"] != first.json()["id"]
    assert len(fake_upstream.requests()) == 2
    assert not UsageEvent.objects.filter(is_cache_hit=True).exists()


def test_a_different_body_is_a_miss(cached, fake_upstream):
    _post(cached, {"temperature": 0})
    assert _post(cached, {"temperature": 1}).headers["x-switchboard-cache"] == "miss"
    assert len(fake_upstream.requests()) == 2


def test_the_header_bypasses_the_cache(cached, fake_upstream):
    _post(cached, {})
    fresh = _post(cached, {}, headers={"x-switchboard-cache": "no-cache"})
    assert fresh.headers["x-switchboard-cache"] == "bypass"
    # no-cache stored the fresh reply; no-store neither reads nor writes.
    assert _post(cached, {}).json()["id"] == fresh.json()["id"]
    unstored = _post(cached, {}, headers={"x-switchboard-cache": "no-store"})
    assert unstored.json()["id"] != fresh.json()["id"]
    assert _post(cached, {}).json()["id"] == fresh.json()["id"]
    assert len(fake_upstream.requests()) == 3


def test_an_unknown_header_value_is_a_400(cached, fake_upstream):
    reply = _post(cached, {}, headers={"x-switchboard-cache": "forever"})
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "x-switchboard-cache"
    assert not fake_upstream.requests()


def test_a_failed_reply_is_not_stored(cached, fake_upstream):
    cached.chat.upstreams.update(base_url=fake_upstream.base_url(fail_first=1))
    cached.chat.save()
    assert _post(cached, {}).status_code == 502
    assert _post(cached, {}).headers["x-switchboard-cache"] == "miss"
    assert _post(cached, {}).headers["x-switchboard-cache"] == "hit"
    assert len(fake_upstream.requests()) == 2


def test_a_model_without_a_ttl_is_never_cached(world, fake_upstream):
    first, second = _post(world, {}), _post(world, {})
    assert "x-switchboard-cache" not in second.headers
    assert first.json()["id"] != second.json()["id"]
    assert len(fake_upstream.requests()) == 2


def test_a_hit_counts_against_the_links_request_limit(cached, fake_upstream):
    ModelLink.objects.filter(model=cached.chat).update(requests_per_minute=2)
    cached.chat.save()  # the registry snapshot reloads
    clear_of_a_minute_turn()
    assert [_post(cached, {}).status_code for _ in range(3)] == [200, 200, 429]
    assert len(fake_upstream.requests()) == 1


def test_expired_replies_are_ignored_then_purged(settings, world, fake_upstream):
    settings.REDIS_URL = ""
    world.chat.response_cache_ttl = 60
    world.chat.save()
    first = _post(world, {})
    for _ in range(200):
        if response_cache.is_idle() and CachedResponse.objects.exists():
            break
        time.sleep(0.01)
    CachedResponse.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    # Written, so no queued copy is left: the expired row is a miss.
    second = _post(world, {})
    assert second.json()["id"] != first.json()["id"]
    responses_purge_task()  # what beat runs hourly
    assert CachedResponse.objects.filter(expires_at__lte=timezone.now()).count() == 0


def test_anthropic_and_responses_streams_are_answered_from_the_cache(cached, fake_upstream):
    import anthropic

    client = anthropic.Anthropic(base_url=cached.url, api_key=cached.alice_key, max_retries=0)
    texts = []
    for _ in range(2):
        with client.messages.stream(model="acme-chat", max_tokens=100, messages=HI) as stream:
            texts.append("".join(stream.text_stream))
            final = stream.get_final_message()
        assert final.usage.output_tokens == 20
    assert texts[0] == texts[1] == "".join(f"tok{i} " for i in range(20))
    oa = openai.OpenAI(base_url=cached.base(), api_key=cached.alice_key, max_retries=0)
    replies = [oa.responses.create(model="acme-chat", input="Hi", store=False) for _ in range(2)]
    assert replies[0].output_text == replies[1].output_text
    events = list(oa.responses.create(model="acme-chat", input="Hi", stream=True, store=False))
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage.output_tokens == 20
    assert len(fake_upstream.requests()) == 2
    assert [e.is_cache_hit for e in wait_for_usage(5)] == [False, True, False, True, True]


def test_the_anthropic_and_responses_routes_take_the_header_in_their_error_shape(
    cached, fake_upstream
):
    headers = {"x-api-key": cached.alice_key, "x-switchboard-cache": "forever"}
    body = {"model": "acme-chat", "max_tokens": 10, "messages": HI}
    reply = httpx.post(f"{cached.url}/v1/messages", headers=headers, json=body, timeout=10)
    assert reply.status_code == 400 and reply.json()["type"] == "error"
    assert reply.json()["error"]["type"] == "invalid_request_error"
    headers = {"Authorization": f"Bearer {cached.alice_key}", "x-switchboard-cache": "no-store"}
    for _ in range(2):
        reply = httpx.post(
            f"{cached.base()}/responses",
            headers=headers,
            json={"model": "acme-chat", "input": "Hi", "store": False},
            timeout=10,
        )
        assert reply.status_code == 200
    assert len(fake_upstream.requests()) == 2


def test_refresh_asks_the_upstream_and_replaces_the_stored_reply(cached, fake_upstream):
    first = _post(cached, {})
    fresh = _post(cached, {}, headers={"x-switchboard-cache": "refresh"})
    assert fresh.status_code == 200
    assert fresh.headers["x-switchboard-cache"] == "refresh"
    assert fresh.json()["id"] != first.json()["id"]
    again = _post(cached, {})
    assert again.headers["x-switchboard-cache"] == "hit"
    assert again.json()["id"] == fresh.json()["id"]
    assert len(fake_upstream.requests()) == 2


def test_a_failed_refresh_keeps_the_stored_reply(cached, fake_upstream):
    stored = _post(cached, {})
    upstreams = cached.chat.upstreams.all()
    upstreams.update(base_url=fake_upstream.base_url(status=500))
    cached.chat.save()
    failed = _post(cached, {}, headers={"x-switchboard-cache": "refresh"})
    assert failed.status_code == 502
    assert failed.json()["error"]["type"]
    upstreams.update(base_url=fake_upstream.base_url())
    cached.chat.save()
    again = _post(cached, {})
    assert again.headers["x-switchboard-cache"] == "hit"
    assert again.json()["id"] == stored.json()["id"]
    assert len(fake_upstream.requests()) == 2


def test_a_refreshed_stream_replaces_the_stored_reply(cached, fake_upstream):
    first = _post(cached, {})
    assert _stream_text(cached, extra_headers={"x-switchboard-cache": "refresh"})[1] == "refresh"
    again = _post(cached, {})
    assert again.headers["x-switchboard-cache"] == "hit"
    assert again.json()["id"] != first.json()["id"]
    assert len(fake_upstream.requests()) == 2


def _embed(world, *, key=None, headers=None):
    return httpx.post(
        f"{world.base()}/embeddings",
        headers={"Authorization": f"Bearer {key or world.alice_key}", **(headers or {})},
        json={"model": "acme-embed", "input": ["a", "b"]},
        timeout=10,
    )


def test_embeddings_are_cached_per_tenant_and_refreshed(cached, fake_upstream, charlie):
    cached.embed.response_cache_ttl = 60
    cached.embed.save()
    globex = OrganisationFactory(name="Globex", slug="globex")
    MembershipFactory(user=charlie, organisation=globex)
    ModelLink.objects.create(model=cached.embed, organisation=globex)
    first, second = _embed(cached), _embed(cached)
    assert [r.headers["x-switchboard-cache"] for r in (first, second)] == ["miss", "hit"]
    assert second.json()["data"] == first.json()["data"]
    assert second.json()["model"] == "acme-embed"
    assert _embed(cached, key=cached.charlie_key).headers["x-switchboard-cache"] == "miss"
    refreshed = _embed(cached, headers={"x-switchboard-cache": "refresh"})
    assert refreshed.headers["x-switchboard-cache"] == "refresh"
    assert len(fake_upstream.requests()) == 3
    assert [e.is_cache_hit for e in wait_for_usage(4)] == [False, True, False, False]


def _image(world, response_format, *, key=None):
    return httpx.post(
        f"{world.base()}/images/generations",
        headers={"Authorization": f"Bearer {key or world.alice_key}"},
        json={"model": "acme-image", "prompt": "a cat", "response_format": response_format},
        timeout=10,
    )


def test_an_image_reply_with_its_images_is_cached_and_costs_nothing_on_a_hit(cached, fake_upstream):
    cached.image.response_cache_ttl = 60
    cached.image.save()
    first, second = _image(cached, "b64_json"), _image(cached, "b64_json")
    assert [r.headers["x-switchboard-cache"] for r in (first, second)] == ["miss", "hit"]
    assert second.json()["data"] == first.json()["data"]
    assert second.json()["x_switchboard"]["cache"] == "hit"
    assert "model" not in second.json()
    assert len(fake_upstream.requests()) == 1
    miss, hit = wait_for_usage(2)
    assert (miss.images, miss.cost > 0) == (1, True)
    assert (hit.is_cache_hit, hit.images, hit.cost) == (True, 0, 0)


def test_an_image_reply_by_url_is_never_cached(cached, fake_upstream):
    cached.image.response_cache_ttl = 60
    cached.image.save()
    replies = [_image(cached, "url") for _ in range(2)]
    assert [r.headers["x-switchboard-cache"] for r in replies] == ["miss", "miss"]
    assert all("url" in r.json()["data"][0] for r in replies)
    assert len(fake_upstream.requests()) == 2


def test_an_image_reply_never_crosses_tenants(cached, fake_upstream, charlie):
    cached.image.response_cache_ttl = 60
    cached.image.save()
    globex = OrganisationFactory(name="Globex", slug="globex")
    MembershipFactory(user=charlie, organisation=globex)
    ModelLink.objects.create(model=cached.image, organisation=globex)
    assert _image(cached, "b64_json").headers["x-switchboard-cache"] == "miss"
    outsider = _image(cached, "b64_json", key=cached.charlie_key)
    assert outsider.status_code == 200
    assert outsider.headers["x-switchboard-cache"] == "miss"
    assert len(fake_upstream.requests()) == 2
    assert not UsageEvent.objects.filter(is_cache_hit=True).exists()
