"""Refused requests on the gateway's routes: one log line and one count each, no key."""

import re
import secrets

import httpx
import pytest

from accounts.models import APIKey
from ai.models import ModelLink
from orgs.models import Wallet
from tests.ai.conftest import clear_of_a_minute_turn
from tests.logcapture import log_lines  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "a prompt that is nobody's business"}]
REFUSED = "switchboard_gateway_refused_total"


def _scrape(world) -> str:
    return httpx.get(f"{world.url}/metrics", headers={"Authorization": "Bearer scrape-me"}).text


def _refused(text: str) -> dict[tuple[str, str], float]:
    """Every series of the refusal counter in a scrape, by (status, reason)."""
    series = {}
    for line in text.splitlines():
        if line.startswith(REFUSED + "{"):
            head, _, value = line.rpartition(" ")
            labels = dict(re.findall(r'(\w+)="([^"]*)"', head))
            series[(labels["status"], labels["reason"])] = float(value)
    return series


def _post(world, *, key=None, body=None, content=None):
    headers = {"Authorization": f"Bearer {key or world.alice_key}"}
    if content is not None:
        headers["Content-Type"] = "application/json"
    return httpx.post(
        f"{world.url}/v1/chat/completions",
        headers=headers,
        json=None if content is not None else (body or {"model": "acme-chat", "messages": HI}),
        content=content,
        timeout=10,
    )


def _a_wrong_key() -> str:
    return APIKey.PREFIX + secrets.token_urlsafe(32)


def _no_wallet(world, acme):
    ModelLink.objects.filter(organisation=acme).update(is_wallet_billed=True)
    Wallet.objects.all().delete()
    world.chat.save()  # signal the caches


def _one_request_a_minute(world, acme):
    ModelLink.objects.filter(model=world.chat).update(requests_per_minute=1)
    world.chat.save()
    clear_of_a_minute_turn()  # the refused request comes in the same minute
    assert _post(world).status_code == 200


# (what the case sets up, what it sends, the status and the reason it is refused with)
CASES = {
    "401 key": (None, {"key": "wrong"}, 401, "invalid_api_key"),
    "402 no balance": (_no_wallet, {}, 402, "insufficient_quota"),
    "403 permission": (None, {"key": "read_only"}, 403, "insufficient_permissions"),
    "404 model": (None, {"body": {"model": "no-such", "messages": HI}}, 404, "model_not_found"),
    "429 limit": (_one_request_a_minute, {}, 429, "rate_limit_exceeded"),
    "400 json": (None, {"content": b"{not json"}, 400, "invalid_json"),
    "413 too large": (
        None,
        {"content": b'{"x": "' + b"a" * 2048 + b'"}'},
        413,
        "request_too_large",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_refused_request_is_counted_once_and_logged_without_its_key(
    world,
    acme,
    settings,
    log_lines,  # noqa: F811
    case,
):
    setup, send, status, reason = case
    send = dict(send)
    settings.METRICS_TOKEN = "scrape-me"
    settings.REDIS_URL = ""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    if setup is not None:
        setup(world, acme)
    key = {"wrong": _a_wrong_key(), "read_only": world.read_only_key}.get(send.pop("key", ""))
    before = _refused(_scrape(world))
    reply = _post(world, key=key, **send)
    after = _refused(_scrape(world))

    assert reply.status_code == status
    assert reply.json()["error"]["code"] == reason
    grown = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert grown == {(str(status), reason): 1}
    lines = log_lines.events("gateway_refused")
    assert len(lines) == 1
    line = lines[0]
    assert line["http_status"] == status and line["reason"] == reason
    assert line["route"] == "/v1/chat/completions" and line["method"] == "POST"
    assert line["request_id"] == reply.headers["x-request-id"]
    assert line["level"] == "INFO" and line["logger"] == "switchboard.gateway"
    sent = key or world.alice_key
    assert line["key_prefix"] == sent[:12]
    for secret in (sent, sent[12:], world.alice_key, "nobody's business"):
        assert secret not in log_lines.text


def test_a_token_that_is_not_one_of_our_keys_is_not_logged_at_all(world, log_lines):  # noqa: F811
    for token in ("sk-proj-" + "x" * 40, "sb-short"):
        reply = _post(world, key=token)
        assert reply.status_code == 401
        assert token not in log_lines.text and token[:8] not in log_lines.text
    assert [line["key_prefix"] for line in log_lines.events("gateway_refused")] == [None, None]


def test_an_answered_request_is_not_counted_as_refused(world, settings):
    settings.METRICS_TOKEN = "scrape-me"
    before = _refused(_scrape(world))
    assert _post(world).status_code == 200
    assert _refused(_scrape(world)) == before
