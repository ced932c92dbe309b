"""The gateway's own ASGI handling (ai.api.fastpath, trimmed in issue 20): the request's
body and headers as the views read them, and the client leaving."""

import asyncio
import gc
import io
import json
import sys
import time

import httpx
import pytest

from ai.gateway import ledger
from ai.models import UsageEvent, UsageStatus
from panel.http import DISCONNECT, ClientLeft
from tests.ai.conftest import make_model, wait_for_usage
from tests.bench.inprocess import scope as bench_scope

pytestmark = pytest.mark.django_db(transaction=True)


def _chunks(data: bytes, size: int):
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_a_body_past_the_memory_limit_arriving_in_pieces_is_read_whole(
    world, fake_upstream, settings
):
    # Up to FILE_UPLOAD_MAX_MEMORY_SIZE the body stays in memory; past it, it is spooled
    # to a temporary file as Django does. Either way the view reads all of it.
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024
    text = "".join(f"word{i} " for i in range(6000))  # ~50 KB
    body = json.dumps({"model": "acme-chat", "messages": [{"role": "user", "content": text}]})
    for size in (100_000, 700):  # one piece, then many
        fake_upstream.clear()
        response = httpx.post(
            f"{world.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {world.alice_key}"},
            content=_chunks(body.encode(), size),
            timeout=10,
        )
        assert response.status_code == 200, response.text
        [sent] = fake_upstream.requests()
        assert sent["json"]["messages"][0]["content"] == text


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"AUTHORIZATION": "Bearer {key}"}, 200),  # names are case-insensitive
        ({"x-api-key": "{key}"}, 200),
        ({"X_API_KEY": "{key}"}, 401),  # an underscore name never poses as the dashed one
        ({"Authorization": "Bearer {key}", "X-Api-Key": "sb-other"}, 401),  # two keys
    ],
)
def test_the_views_read_headers_as_django_would(world, headers, status):
    sent = {name: value.format(key=world.alice_key) for name, value in headers.items()}
    body = {"model": "acme-chat", "messages": [{"role": "user", "content": "Hi"}]}
    response = httpx.post(f"{world.url}/v1/chat/completions", headers=sent, json=body, timeout=10)
    assert response.status_code == status, response.text


def test_repeated_headers_reach_the_view_joined(world, fake_upstream):
    # The response cache's header, sent twice: joined with "," (as Django joins them), it
    # is no mode the cache knows, so the request is refused naming it (either one alone
    # is served).
    body = {"model": "acme-chat", "messages": [{"role": "user", "content": "Hi"}]}
    url, auth = f"{world.url}/v1/chat/completions", ("Authorization", f"Bearer {world.alice_key}")
    for modes, status in ((["no-store"], 200), (["no-store", "refresh"], 400)):
        headers = [auth, *(("X-Switchboard-Cache", mode) for mode in modes)]
        response = httpx.post(url, headers=headers, json=body, timeout=10)
        assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == "x-switchboard-cache"


def test_a_client_that_leaves_mid_stream_is_recorded_at_once(world, acme, fake_upstream):
    # The view runs in the request's task; a second task watches for the client leaving
    # and cancels it: the relay's end (its usage event) runs then, not at collection.
    make_model("slow", owner=acme, base_urls=[fake_upstream.base_url(chunk_delay_ms=200)])
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    headers = {"Authorization": f"Bearer {world.alice_key}"}
    with httpx.stream(
        "POST", f"{world.url}/v1/chat/completions", headers=headers, json=body, timeout=10
    ) as response:
        assert response.status_code == 200
        next(response.iter_bytes())
    left = time.monotonic()
    [event] = wait_for_usage(1)
    assert event.status == UsageStatus.CLIENT_CANCELLED
    assert time.monotonic() - left < 2  # the 20 chunks would take 4 s
    assert UsageEvent.objects.count() == 1


def _scope(world, body: bytes, left: ClientLeft | None) -> dict:
    """A chat request's scope as the bench sends it, with ``left`` as our protocol's, or
    without one as another server's."""
    scope = bench_scope("/v1/chat/completions", world.alice_key, body)
    del scope[DISCONNECT]
    if left is not None:
        scope[DISCONNECT] = left
    return scope


@pytest.mark.parametrize("server", ["ours", "another"])
def test_the_view_is_cancelled_when_the_client_leaves_under_either_server(
    world, acme, fake_upstream, server
):
    # Our protocol (panel.http) puts a ClientLeft in the scope and calls back when the
    # connection is lost; under another server (daphne) a task waits on receive instead.
    # Either way the stream stops at once and is recorded as the client's cancel.
    from panel.asgi import fast_app

    make_model("slow", owner=acme, base_urls=[fake_upstream.base_url(chunk_delay_ms=200)])
    body = json.dumps(
        {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    ).encode()
    left = ClientLeft() if server == "ours" else None
    sent = []

    async def run():
        gone = asyncio.Event()
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if messages:
                return messages.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            if message.get("more_body"):  # the first events: the client leaves
                if left is None:
                    gone.set()
                else:  # only the protocol's call: receive would wait on
                    asyncio.get_running_loop().call_soon(left.fire)

        await asyncio.wait_for(fast_app(_scope(world, body, left), receive, send), 5)
        await ledger.flush()  # the usage event, before this loop closes

    started = time.monotonic()
    asyncio.run(run())

    assert time.monotonic() - started < 2  # the 20 chunks would take 4 s
    assert sent[0]["status"] == 200
    [event] = wait_for_usage(1)
    assert event.status == UsageStatus.CLIENT_CANCELLED


async def _one_request(app, scope: dict, body: bytes, sent: list) -> None:
    """One request through ``app``, its messages added to ``sent``."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    done = asyncio.Event()

    async def receive():
        if messages:
            return messages.pop()
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await app(scope, receive, send)


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_whole_stream_leaves_no_async_generator_for_the_loop_to_close(
    world, fake_upstream, include_usage
):
    # The relay stops reading at [DONE]. An async generator left suspended is closed by
    # the loop's finalizer hook when collected: a task and a thread-safe wake-up each
    # (issue 20). Every one a stream starts is closed by the stream itself.
    from panel.asgi import fast_app

    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    body = json.dumps(
        {"model": "acme-chat", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
        | options
    ).encode()
    finalized, sent = [], []

    async def run():
        firstiter, finalizer = sys.get_asyncgen_hooks()

        def counting(agen):
            finalized.append(agen.__qualname__)
            finalizer(agen)

        sys.set_asyncgen_hooks(firstiter, counting)
        for _ in range(3):
            await _one_request(fast_app, _scope(world, body, ClientLeft()), body, sent)
        gc.collect()
        await asyncio.sleep(0)
        await ledger.flush()

    asyncio.run(run())

    assert sent[0]["status"] == 200
    assert b"data: [DONE]" in b"".join(m.get("body", b"") for m in sent)
    assert finalized == []
    wait_for_usage(3)


def test_a_client_gone_before_the_view_starts_gets_nothing(world, fake_upstream):
    from panel.asgi import fast_app

    body = json.dumps({"model": "acme-chat", "messages": [{"role": "user", "content": "Hi"}]})
    left, sent = ClientLeft(), []
    left.fire()  # lost while its body was read

    async def receive():
        return {"type": "http.request", "body": body.encode(), "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(fast_app(_scope(world, body.encode(), left), receive, send))

    assert sent == []
    assert fake_upstream.requests() == []


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_past_the_upload_limit_is_refused_however_it_is_sent(
    world, fake_upstream, settings, chunked
):
    # The fast path hands the view the body it read when its Content-Length says its size
    # and it is within DATA_UPLOAD_MAX_MEMORY_SIZE; else Django reads it and refuses it.
    body = json.dumps({"model": "acme-chat", "messages": [{"role": "user", "content": "Hi"}]})
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = len(body)
    url, headers = (
        f"{world.url}/v1/chat/completions",
        {"Authorization": f"Bearer {world.alice_key}"},
    )
    for padding, status in ((0, 200), (1, 413)):
        data = (body + " " * padding).encode()
        content = _chunks(data, 16) if chunked else data
        response = httpx.post(url, headers=headers, content=content, timeout=10)
        assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert len(fake_upstream.requests()) == 1


def test_reply_headers_are_stored_as_django_would_store_them():
    from django.http import BadHeaderError, HttpResponse

    from ai.api.base import set_headers

    headers = {"X-Plain": "remaining 12", "x-upstream": "Östra", "x-far": "東京", "x-empty": ""}
    ours, django_s = HttpResponse(), HttpResponse()
    set_headers(ours, headers)
    for name, value in headers.items():
        django_s[name] = value
    assert list(ours.items()) == list(django_s.items())
    assert ours["x-far"].startswith("=?utf-8?")  # MIME-encoded, as Django does

    with pytest.raises(BadHeaderError):
        set_headers(HttpResponse(), {"x-upstream": "a\r\nSet-Cookie: b=c"})


def test_an_exception_that_escapes_a_view_is_answered_as_django_answers_it(world, monkeypatch):
    # The views render their own errors (ai_route); should one escape, the fast path
    # answers with Django's response for it (the project's 500 handler), not a dropped
    # connection.
    from types import SimpleNamespace

    from ai.api import fastpath
    from panel.asgi import fast_app

    async def broken(request):
        raise RuntimeError("a bug")

    monkeypatch.setattr(
        fastpath, "_fast_match", lambda path: SimpleNamespace(func=broken, args=(), kwargs={})
    )
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(fast_app(_scope(world, b"{}", ClientLeft()), receive, send))

    assert sent[0]["status"] == 500
    assert b"a bug" not in b"".join(message.get("body", b"") for message in sent)


def test_the_fast_paths_request_builds_meta_only_when_read(world, fake_upstream, monkeypatch):
    # META (every header by its CGI name) is ~10 us a request; the chat route reads it only
    # to check a Host header it has not seen.
    from django.core.handlers.asgi import ASGIRequest

    from ai.api.fastpath import FastRequest
    from panel.asgi import fast_app

    built = []
    init = ASGIRequest.__init__

    def counting(self, *args):
        built.append(type(self))
        init(self, *args)

    monkeypatch.setattr(ASGIRequest, "__init__", counting)
    body = json.dumps({"model": "acme-chat", "messages": [{"role": "user", "content": "Hi"}]})
    sent = []

    async def receive():
        return {"type": "http.request", "body": body.encode(), "more_body": False}

    async def send(message):
        sent.append(message)

    for _ in range(2):
        asyncio.run(fast_app(_scope(world, body.encode(), ClientLeft()), receive, send))
    assert [message["status"] for message in sent if "status" in message] == [200, 200]
    assert len(built) <= 1  # the first request's host check (once a host), not the second

    # Read, it is Django's: every header, and the content type's parameters with it.
    scope = _scope(world, b"{}", None)
    scope["headers"].append((b"content-type", b"application/json; charset=latin-1"))
    scope["query_string"] = b"limit=2"
    lazy, django_s = FastRequest(scope, io.BytesIO(b"{}")), ASGIRequest(scope, io.BytesIO(b"{}"))
    assert lazy.encoding == django_s.encoding == "latin-1"
    assert (lazy.content_type, lazy.content_params) == (
        django_s.content_type,
        django_s.content_params,
    )
    assert lazy.META == django_s.META
    assert lazy.GET["limit"] == "2"
    assert (lazy.path, lazy.path_info, lazy.method) == (
        django_s.path,
        django_s.path_info,
        django_s.method,
    )


def test_a_query_string_that_is_not_utf8_is_refused_before_the_view(world):
    from panel.asgi import fast_app

    scope = _scope(world, b"{}", ClientLeft())
    scope["query_string"] = b"a=\xff"
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(fast_app(scope, receive, send))
    assert sent[0]["status"] == 400
