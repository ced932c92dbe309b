"""Bearer keys: what a lookup costs, what a flood of bad keys costs, and that the gateway and
the management API refuse a key alike."""

from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.test import Client, RequestFactory
from django.utils import timezone

from accounts.authentication import authenticate
from accounts.models import Permission
from accounts.services import apikey_create, apikey_generate, apikey_revoke
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


# --- The gateway and the management API refuse a key alike --------------------------

MANAGEMENT = "/api/v1/auth/keys"  # DRF, the row
GATEWAY = "/v1/models"  # async, the cached snapshot


def _answer(path: str, header: str) -> tuple[int, dict | None]:
    response = Client().get(path, HTTP_AUTHORIZATION=header)
    return response.status_code, response.json() if response.status_code != 200 else None


@pytest.mark.parametrize(
    ("credential", "message"),
    [
        ("Basic abc", "The Authorization header must be 'Bearer <API key>'."),
        ("Bearer   ", "The Authorization header must be 'Bearer <API key>'."),
        ("Bearer sb-nope", "Incorrect API key provided."),
        ("Bearer unknown", "Incorrect API key provided."),
        ("Bearer revoked", "Incorrect API key provided."),
        ("Bearer expired", "Incorrect API key provided."),
        ("bearer   good  ", None),
    ],
)
def test_both_apis_answer_a_credential_alike(alice, credential, message):
    _, good = apikey_create(user=alice, name="good", permissions=[*Permission.values])
    revoked, plain_revoked = apikey_create(user=alice, name="revoked", permissions=["manage"])
    apikey_revoke(key=revoked)
    past = timezone.now() - timedelta(seconds=1)
    _, expired = apikey_create(user=alice, name="old", permissions=["manage"], expires_at=past)
    plains = {"good": good, "revoked": plain_revoked, "expired": expired}
    plains["unknown"] = apikey_generate()
    header = " ".join(plains.get(word, word) for word in credential.split(" "))

    answers = [_answer(MANAGEMENT, header), _answer(GATEWAY, header)]

    if message is None:
        assert answers == [(200, None)] * 2
    else:
        error = {"message": message, "type": "authentication_error", "param": None}
        assert answers == [(401, {"error": {**error, "code": "invalid_api_key"}})] * 2


def test_a_deactivated_owners_key_is_refused_by_both_apis(bob):
    _, plain = apikey_create(user=bob, name="bob", permissions=[*Permission.values])
    bob.is_active = False
    bob.save()
    header = f"Bearer {plain}"
    management, gateway = _answer(MANAGEMENT, header), _answer(GATEWAY, header)
    assert management[0] == gateway[0] == 401
    assert management[1]["error"]["message"] == "Incorrect API key provided."
    # The gateway refuses the caller's snapshot, after the key's.
    assert gateway[1]["error"]["message"] == "This account is disabled."


def test_a_deactivated_owners_key_reads_no_usage(bob, django_capture_on_commit_callbacks):
    _, plain = apikey_create(user=bob, name="bob", permissions=[*Permission.values])
    assert _answer("/api/ai/usage", f"Bearer {plain}")[0] == 200
    bob.is_active = False
    with django_capture_on_commit_callbacks(execute=True):  # the cached snapshot goes
        bob.save()
    status, body = _answer("/api/ai/usage", f"Bearer {plain}")
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
