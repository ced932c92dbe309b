"""A small world for gateway tests: acme's models on the fake upstream, and keys."""

import time
from dataclasses import dataclass
from decimal import Decimal

import pytest

from accounts.services import apikey_create
from ai.models import AIModel, ModelKind, UsageEvent
from tests.factories import AIModelFactory, ModelLinkFactory, UpstreamFactory

UPSTREAM_SECRET = "sk-upstream-secret-for-tests"


@dataclass
class World:
    url: str
    chat: AIModel
    embed: AIModel
    image: AIModel
    charlie_model: AIModel
    alice_key: str
    bob_key: str
    charlie_key: str
    read_only_key: str

    def base(self, prefix: str = "/v1") -> str:
        return f"{self.url}{prefix}"


@pytest.fixture
def world(transactional_db, fake_upstream, asgi_server, alice, bob, charlie, acme):
    fake_upstream.clear()
    chat = AIModelFactory(
        name="acme-chat",
        kind=ModelKind.CHAT,
        input_price_per_million=Decimal("2"),
        output_price_per_million=Decimal("8"),
    )
    embed = AIModelFactory(name="acme-embed", kind=ModelKind.EMBEDDING)
    image = AIModelFactory(name="acme-image", kind=ModelKind.IMAGE, price_per_image=Decimal("0.04"))
    for model, provider in ((chat, "fake-chat"), (embed, "fake-embed"), (image, "fake-image")):
        UpstreamFactory(
            model=model,
            name=f"{model.name}-primary",
            base_url=fake_upstream.base_url(),
            provider_model_id=provider,
            api_key=UPSTREAM_SECRET,
        )
        ModelLinkFactory(model=model, organisation=acme, is_default=model is chat)
    charlie_model = AIModelFactory(name="charlie-chat")
    UpstreamFactory(model=charlie_model, base_url=fake_upstream.base_url())
    ModelLinkFactory(model=charlie_model, user=charlie, is_default=True)
    return World(
        url=asgi_server.url,
        chat=chat,
        embed=embed,
        image=image,
        charlie_model=charlie_model,
        alice_key=apikey_create(user=alice, name="alice")[1],
        bob_key=apikey_create(user=bob, name="bob")[1],
        charlie_key=apikey_create(user=charlie, name="charlie")[1],
        read_only_key=apikey_create(user=alice, name="ro", permissions=["read"])[1],
    )


def wait_for_usage(count: int, timeout: float = 5.0) -> list[UsageEvent]:
    """The usage events once ``count`` of them are written (they are batched off the path)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = list(UsageEvent.objects.order_by("id"))
        if len(events) >= count:
            time.sleep(0.05)  # let a wrongly duplicated event show up too
            return list(UsageEvent.objects.order_by("id"))
        time.sleep(0.02)
    raise AssertionError(f"expected {count} usage events, found {UsageEvent.objects.count()}")


def clear_of_a_minute_turn(seconds: float = 5.0) -> None:
    """Wait for the next minute when fewer than ``seconds`` are left of this one.

    Limits count in fixed UTC minutes: a test that expects its third request refused at two
    a minute would see it admitted if the minute turned between the second and the third.
    """
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.1)


def slow_response_writes(monkeypatch, seconds: float) -> None:
    """Stored responses reach the database ``seconds`` late (a busy database). The delay
    is awaited, so the server's one sync thread stays free meanwhile."""
    import asyncio

    from ai.gateway import responses_store

    run_sync = responses_store.run_sync

    async def slow(fn, *args):
        if fn is responses_store._insert:
            await asyncio.sleep(seconds)
        return await run_sync(fn, *args)

    monkeypatch.setattr(responses_store, "run_sync", slow)


def make_model(name: str, *, owner, base_urls: list[str], **upstream_fields) -> AIModel:
    """A chat model linked to ``owner`` (a user or an organisation) with upstreams in order."""
    from orgs.models import Organisation

    model = AIModelFactory(name=name, kind=ModelKind.CHAT)
    for priority, url in enumerate(base_urls):
        UpstreamFactory(
            model=model,
            name=f"{name}-{priority}",
            base_url=url,
            priority=priority,
            provider_model_id="fake-chat",
            **upstream_fields,
        )
    if isinstance(owner, Organisation):
        ModelLinkFactory(model=model, organisation=owner)
    else:
        ModelLinkFactory(model=model, user=owner)
    return model


def session_client(user, base_url: str):
    """An httpx client carrying a logged-in browser session and its CSRF token."""
    import httpx
    from django.middleware.csrf import _get_new_csrf_string
    from django.test import Client

    django_client = Client()
    django_client.force_login(user)
    token = _get_new_csrf_string()
    cookies = {"sessionid": django_client.cookies["sessionid"].value, "csrftoken": token}
    return httpx.Client(
        base_url=base_url, cookies=cookies, headers={"X-CSRFToken": token}, timeout=10
    )
