"""Bearer keys on the request path: what a lookup costs, and what a flood of bad keys costs."""

import pytest
from asgiref.sync import async_to_sync
from django.test import RequestFactory

from accounts.authentication import authenticate
from accounts.services import apikey_create, apikey_generate
from panel.errors import AuthenticationFailed
from panel.localcache import registry_cache

pytestmark = pytest.mark.django_db


def _authenticate(token: str):
    request = RequestFactory().post("/v1/chat/completions", HTTP_AUTHORIZATION=f"Bearer {token}")
    # Run from this thread, the loaders' queries run on the test's own connection.
    return async_to_sync(authenticate)(request, permission="proxy")


@pytest.mark.parametrize(
    "token",
    [
        "sb-nope",
        "sk-" + "a" * 43,  # someone else's prefix
        "sb-" + "a" * 42,  # one character short
        "sb-" + "a" * 44,  # one too many
        "sb-" + "a" * 42 + "!",  # not url-safe base64
    ],
)
def test_a_token_that_cannot_be_ours_is_refused_without_a_query(token, django_assert_num_queries):
    with django_assert_num_queries(0), pytest.raises(AuthenticationFailed):
        _authenticate(token)


def test_a_flood_of_random_keys_costs_one_query_each_and_stays_within_the_cache_bound(
    alice, settings, django_assert_num_queries, monkeypatch
):
    settings.GATEWAY_CACHE_MAX_ENTRIES = 100
    monkeypatch.setattr(registry_cache, "clock", lambda: 1000.0)  # nothing expires meanwhile
    _, real = apikey_create(user=alice, name="real")
    assert _authenticate(real).user_id == alice.pk
    flood = [apikey_generate() for _ in range(3000)]

    with django_assert_num_queries(len(flood)):
        for token in flood:
            with pytest.raises(AuthenticationFailed):
                _authenticate(token)

    assert len(registry_cache) == 1 + 100  # the real key, and the latest unknown ones
    with django_assert_num_queries(0):
        assert _authenticate(real).user_id == alice.pk  # still cached: never pushed out
        with pytest.raises(AuthenticationFailed):
            _authenticate(flood[-1])  # a repeated unknown key is answered from the cache
    with django_assert_num_queries(1), pytest.raises(AuthenticationFailed):
        _authenticate(flood[0])  # long evicted: looked up again, once
