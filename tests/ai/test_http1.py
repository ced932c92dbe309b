"""The request path's HTTP/1.1 client (ai.gateway.http1) against upstreams that misbehave.

Each upstream here is a raw asyncio server that answers with the bytes a test scripts, so
framing, keep-alive and faults are exact.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from ai.gateway import http1
from ai.gateway.upstream import RETRYABLE_ERRORS
from tests.servers import self_signed_certificate

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-up"}
TIMEOUTS = {"total": 5.0, "connect": 2.0, "read": 2.0}

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


async def _request(reader: asyncio.StreamReader) -> bytes | None:
    """One request's head and body, or None at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


class Upstream:
    """Serves each request with ``answer``; counts connections and keeps the requests."""

    def __init__(self, answer: Answer, ssl_context: ssl.SSLContext | None = None) -> None:
        self.answer, self.ssl_context = answer, ssl_context
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        scheme = "https" if self.ssl_context else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/v1/chat/completions"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _serve(self, reader, writer) -> None:
        self.connections += 1
        try:
            while (request := await _request(reader)) is not None:
                self.requests.append(request)
                await self.answer(reader, writer, request)
                if writer.is_closing():
                    return
        finally:
            writer.close()


def _answer_with(*parts: bytes, pause: float = 0.0, close: bool = False) -> Answer:
    async def answer(reader, writer, request) -> None:
        for part in parts:
            writer.write(part)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        if close:
            writer.close()

    return answer


async def _post(pool, url, body=b"{}", headers=HEADERS, **timeouts):
    return await http1.post(pool, url, body, headers, **{**TIMEOUTS, **timeouts})


def _run(scenario):
    return asyncio.run(scenario())


def _read_once(answer: Answer, **timeouts) -> bytes:
    """The body of one POST to an upstream that answers with ``answer``."""

    async def scenario():
        async with Upstream(answer) as upstream:
            pool = http1.Pool()
            response = await _post(pool, upstream.url, **timeouts)
            data = await response.read()
            pool.close()
        return data

    return _run(scenario)


def test_it_posts_the_body_and_reuses_the_connection():
    async def scenario():
        async with Upstream(_answer_with(OK)) as upstream:
            pool = http1.Pool()
            bodies = []
            for n in range(3):
                async with await _post(pool, upstream.url, b'{"n": %d}' % n) as response:
                    assert response.status == 200
                    assert response.headers["content-type"] == "application/json"
                    bodies.append(await response.read())
            pool.close()
        return upstream, bodies

    upstream, bodies = _run(scenario)
    assert bodies == [b'{"ok":true}'] * 3
    assert upstream.connections == 1
    first = upstream.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{upstream.port}\r\n".encode() in first
    assert b"Authorization: Bearer sk-up\r\n" in first
    assert first.endswith(b'\r\n\r\n{"n": 0}')


def test_a_pooled_connection_the_upstream_drops_as_it_is_reused_is_replaced_once():
    # An upstream's keep-alive ran out just as the connection was taken from the pool:
    # the request goes out, the upstream hangs up without an answer. Nothing of an answer
    # came, so the request goes again on a new connection (not a failover).
    answered = set()

    async def one_answer_a_connection(reader, writer, request):
        if writer in answered:
            writer.close()
            return
        answered.add(writer)
        writer.write(OK)
        await writer.drain()

    async def scenario():
        async with Upstream(one_answer_a_connection) as upstream:
            pool = http1.Pool()
            statuses = []
            for _ in range(3):
                response = await _post(pool, upstream.url)
                statuses.append(response.status)
                await response.read()
            pool.close()
        return upstream, statuses

    upstream, statuses = _run(scenario)
    assert statuses == [200, 200, 200]
    assert upstream.connections == 3
    assert len(upstream.requests) == 5  # two went out on a connection that then hung up


def test_a_chunked_body_and_a_body_that_ends_with_the_connection_arrive_whole():
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"6\r\ndata: \r\n",
        b"4\r\nabc\n\r\n0\r\n\r\n",
    )
    until_close = (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"data: a", b"bc\n")

    async def scenario(parts):
        async with Upstream(_answer_with(*parts, pause=0.02, close=True)) as upstream:
            pool = http1.Pool()
            response = await _post(pool, upstream.url, read=None)
            pieces = [piece async for piece in response.content.iter_any()]
            pool.close()
        return pieces

    pieces = asyncio.run(scenario(chunked))
    assert b"".join(pieces) == b"data: abc\n" and len(pieces) == 2  # as they arrived
    assert b"".join(asyncio.run(scenario(until_close))) == b"data: abc\n"


def test_a_gzipped_body_is_read_unzipped():
    packed = gzip.compress(b'{"ok": "unzipped"}')
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed)

    assert _read_once(_answer_with(head + packed)) == b'{"ok": "unzipped"}'


def test_a_body_cut_short_is_an_error_the_gateway_retries_and_the_connection_is_dropped():
    cut = b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial'

    async def scenario():
        async with Upstream(_answer_with(cut, close=True)) as upstream:
            pool = http1.Pool()
            response = await _post(pool, upstream.url)
            assert response.status == 200
            with pytest.raises(aiohttp.ServerDisconnectedError) as caught:
                await response.read()
            assert isinstance(caught.value, RETRYABLE_ERRORS)
            idle = sum(len(c) for c in pool.idle.values())
            pool.close()
        return idle

    assert _run(scenario) == 0


def test_garbage_instead_of_http_is_a_payload_error():
    async def scenario():
        async with Upstream(_answer_with(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")) as upstream:
            pool = http1.Pool()
            with pytest.raises(aiohttp.ClientPayloadError) as caught:
                await _post(pool, upstream.url)
            pool.close()
        return caught.value

    assert isinstance(_run(scenario), RETRYABLE_ERRORS)


def test_headers_that_never_end_are_cut_off_at_the_limit():
    # A header line that goes on for ever: without a bound it would fill memory until the
    # total timeout (here far off); the answer fails once the head passes the limit.
    async def endless(reader, writer, request):
        writer.write(b"HTTP/1.1 200 OK\r\nX-Padding: ")
        while not writer.is_closing():
            writer.write(b"a" * 8192)
            await writer.drain()

    async def scenario():
        async with Upstream(endless) as upstream:
            pool = http1.Pool()
            async with asyncio.timeout(5):  # a failure, not a test that runs to the total
                with pytest.raises(aiohttp.ClientPayloadError, match="headers exceed 64 KiB"):
                    await _post(pool, upstream.url, total=60.0, read=30.0)
            idle = sum(len(c) for c in pool.idle.values())
            pool.close()
        return idle

    assert _run(scenario) == 0  # that connection is not kept


def test_a_large_head_within_the_limit_is_read():
    cookie = b"Set-Cookie: c=" + b"x" * 4000 + b"\r\n"
    answer = b"HTTP/1.1 200 OK\r\n" + cookie * 10 + b"Content-Length: 2\r\n\r\n{}"

    assert _read_once(_answer_with(answer)) == b"{}"


async def _silent(reader, writer, request):
    await asyncio.sleep(30)


@pytest.mark.parametrize(
    ("timeouts", "message"),
    [
        ({"read": 0.2}, "no answer for 0.2s"),
        # The total, when it is the sooner of the two, bounds the wait for the answer.
        ({"total": 0.3, "read": 2.0}, "no answer within 0.3s"),
    ],
    ids=["read", "total"],
)
def test_an_upstream_that_never_answers_times_out(timeouts, message):
    async def scenario():
        async with Upstream(_silent) as upstream:
            pool = http1.Pool()
            with pytest.raises(aiohttp.ServerTimeoutError, match=message):
                await _post(pool, upstream.url, **timeouts)
            pool.close()

    _run(scenario)


def test_head_by_bounds_the_answer_on_the_loops_clock():
    async def scenario():
        async with Upstream(_silent) as upstream:
            pool = http1.Pool()
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(http1.HeadTimeout):
                await _post(pool, upstream.url, total=60.0, read=None, head_by=started + 0.2)
            waited = loop.time() - started
            # A sooner read timeout is still the read timeout's.
            with pytest.raises(aiohttp.ServerTimeoutError, match="no answer for 0.1s") as caught:
                await _post(pool, upstream.url, total=60.0, read=0.1, head_by=loop.time() + 5)
            pool.close()
        return waited, caught.type

    waited, error = _run(scenario)
    assert 0.15 <= waited < 2
    assert error is aiohttp.ServerTimeoutError  # not a HeadTimeout


class SlowPool(http1.Pool):
    """A pool whose new connections take a second to open."""

    async def connect(self, origin, connect_timeout):
        await asyncio.sleep(1.0)
        return await super().connect(origin, connect_timeout)


def test_head_by_bounds_opening_the_connection_too():
    async def scenario():
        async with Upstream(_answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")) as up:
            pool = SlowPool()
            loop = asyncio.get_running_loop()
            with pytest.raises(http1.HeadTimeout, match="no connection"):
                await _post(pool, up.url, total=60.0, read=None, head_by=loop.time() + 0.2)
            response = await _post(pool, up.url, total=60.0, read=None, head_by=loop.time() + 5)
            data = await response.read()
            pool.close()
        return data

    assert _run(scenario) == b"{}"


def test_the_read_timeout_for_the_answer_does_not_cut_a_longer_body():
    # Headers at once, then the body over 0.8 s in steps of 0.1 s: longer than the 0.3 s
    # allowed for the headers, each wait within it, the whole within the total.
    parts = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
    parts += [b"1\r\nx\r\n"] * 8 + [b"0\r\n\r\n"]

    assert _read_once(_answer_with(*parts, pause=0.1), total=5.0, read=0.3) == b"x" * 8


def test_a_body_that_stalls_past_the_read_timeout_is_cut_and_not_kept():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"

    async def scenario():
        async with Upstream(_answer_with(head + b"12345", b"67890", pause=1.0)) as upstream:
            pool = http1.Pool()
            response = await _post(pool, upstream.url, total=60.0, read=0.2)
            async with asyncio.timeout(5):  # a failure, not a test that hangs
                with pytest.raises(aiohttp.ServerTimeoutError, match="no data for 0.2s"):
                    await response.read()
            idle = sum(len(c) for c in pool.idle.values())
            pool.close()
        return idle

    assert _run(scenario) == 0


async def _drip(reader, writer, request):
    """Headers at once, then a body byte every 0.1 s for ever."""
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    while True:
        writer.write(b"1\r\nx\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)


def test_the_total_timeout_bounds_the_body_too():
    # No read waits long, the whole does.
    async def scenario():
        async with Upstream(_drip) as upstream:
            pool = http1.Pool()
            loop = asyncio.get_running_loop()
            started = loop.time()
            response = await _post(pool, upstream.url, total=0.6, read=None)
            async with asyncio.timeout(5):  # a failure, not a test that hangs
                with pytest.raises(aiohttp.ServerTimeoutError, match="not done within 0.6s"):
                    await response.read()
            waited = loop.time() - started
            pool.close()
        return waited

    assert _run(scenario) < 5


def test_a_read_deadline_holds_however_the_bytes_trickle_in():
    # A byte every 0.1 s: no single wait is long, but what the reader asked for (the
    # stream's next event, say) is not whole by the deadline it set.
    async def scenario():
        async with Upstream(_drip) as upstream:
            pool = http1.Pool()
            loop = asyncio.get_running_loop()
            response = await _post(pool, upstream.url, total=60.0, read=None)
            response.read_deadline = loop.time() + 0.35
            got = b""
            async with asyncio.timeout(5):  # a failure, not a test that hangs
                with pytest.raises(http1.IdleTimeout):
                    while True:
                        got += await response.content.readany()
            idle = sum(len(c) for c in pool.idle.values())
            pool.close()
        return got, idle

    got, idle = _run(scenario)
    assert 2 <= len(got) <= 5  # what came before the deadline was read
    assert idle == 0  # the connection, its answer unfinished, is not kept


def test_a_refused_connection_is_an_error_the_gateway_retries():
    async def scenario():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        pool = http1.Pool()
        with pytest.raises(aiohttp.ClientConnectionError) as caught:
            await _post(pool, f"http://127.0.0.1:{port}/v1/chat/completions")
        return caught.value

    error = _run(scenario)
    assert isinstance(error, RETRYABLE_ERRORS)
    assert "cannot connect to 127.0.0.1" in str(error)


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent():
    async def scenario():
        async with Upstream(_answer_with(OK)) as upstream:
            pool = http1.Pool()
            with pytest.raises(ValueError, match="line break"):
                await _post(pool, upstream.url, headers={"anthropic-beta": "x\r\nX-Injected: 1"})
            pool.close()
        return upstream.requests

    assert _run(scenario) == []


def test_closing_a_response_before_its_end_drops_the_connection():
    slow = (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc", b"def")

    async def scenario():
        async with Upstream(_answer_with(*slow, pause=0.3)) as upstream:
            pool = http1.Pool()
            response = await _post(pool, upstream.url)
            response.close()
            await asyncio.sleep(0.05)
            response = await _post(pool, upstream.url)
            assert await response.read() == b"abcdef"
            pool.close()
        return upstream.connections

    assert _run(scenario) == 2


def _self_signed(tmp_path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh certificate for 127.0.0.1, and a client one trusting it."""
    cert, key = self_signed_certificate(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


def test_an_https_upstream_is_verified_against_the_trust_store(tmp_path, monkeypatch):
    server_context, trusting = _self_signed(tmp_path)

    async def scenario():
        async with Upstream(_answer_with(OK), ssl_context=server_context) as upstream:
            pool = http1.Pool()
            # The system's store does not know this certificate: refused, and retryable.
            with pytest.raises(aiohttp.ClientConnectionError, match="TLS") as refused:
                await _post(pool, upstream.url)
            assert isinstance(refused.value, RETRYABLE_ERRORS)
            monkeypatch.setattr(http1, "_ssl_context", trusting)
            response = await _post(pool, upstream.url)
            data = await response.read()
            pool.close()
        return data

    assert _run(scenario) == b'{"ok":true}'


def test_an_interim_100_continue_is_skipped_for_the_answer_after_it():
    async def scenario():
        async with Upstream(_answer_with(b"HTTP/1.1 100 Continue\r\n\r\n", OK)) as upstream:
            pool = http1.Pool()
            response = await _post(pool, upstream.url)
            result = response.status, await response.read()
            again = await _post(pool, upstream.url)  # and the connection is still good
            result += (await again.read(),)
            pool.close()
        return result, upstream.connections

    assert _run(scenario) == ((200, b'{"ok":true}', b'{"ok":true}'), 1)


def _counting_lookups(loop, answer=None):
    """Count the loop's getaddrinfo calls; ``answer`` replaces what they return."""
    calls = []
    real = loop.getaddrinfo

    async def getaddrinfo(host, port, **kwargs):
        calls.append(host)
        if answer is not None:
            return answer(host, port)
        return await real(host, port, **kwargs)

    loop.getaddrinfo = getaddrinfo
    return calls


def test_a_host_name_is_looked_up_once_for_many_connections():
    async def scenario():
        async with Upstream(_answer_with(OK, pause=0.2)) as upstream:
            calls = _counting_lookups(asyncio.get_running_loop())
            pool = http1.Pool()
            url = upstream.url.replace("127.0.0.1", "localhost")
            # Three at once (three connections, one lookup), then one more later.
            answers = await asyncio.gather(*(_post(pool, url) for _ in range(3)))
            bodies = [await answer.read() for answer in answers]
            pool.close()
            pool = http1.Pool()
            pool.addresses = {}
            await (await _post(pool, url)).read()
            pool.close()
        return calls, bodies, upstream.connections

    calls, bodies, connections = _run(scenario)
    assert bodies == [b'{"ok":true}'] * 3
    assert connections == 4
    assert calls == ["localhost", "localhost"]  # one for each pool's first connections


def test_a_name_is_looked_up_again_once_its_addresses_are_old(monkeypatch):
    monkeypatch.setattr(http1, "DNS_SECONDS", 0.0)

    async def scenario():
        async with Upstream(_answer_with(OK, close=True)) as upstream:
            calls = _counting_lookups(asyncio.get_running_loop())
            pool = http1.Pool()
            url = upstream.url.replace("127.0.0.1", "localhost")
            for _ in range(2):  # the upstream closes each: two new connections
                await (await _post(pool, url)).read()
            pool.close()
        return calls

    assert _run(scenario) == ["localhost", "localhost"]


def test_an_address_that_refuses_is_passed_over_for_the_next():
    def two_addresses(host, port):
        # 127.0.0.2 is loopback too, but nothing listens there on this port.
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    async def scenario():
        async with Upstream(_answer_with(OK)) as upstream:
            _counting_lookups(asyncio.get_running_loop(), two_addresses)
            pool = http1.Pool()
            url = upstream.url.replace("127.0.0.1", "api.example.test")
            data = await (await _post(pool, url)).read()
            pool.close()
        return data

    assert _run(scenario) == b'{"ok":true}'


def test_a_name_that_does_not_resolve_is_a_connection_error_the_gateway_retries():
    def nothing(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def scenario():
        _counting_lookups(asyncio.get_running_loop(), nothing)
        pool = http1.Pool()
        with pytest.raises(aiohttp.ClientConnectionError, match="Name or service") as caught:
            await _post(pool, "http://api.example.test/v1/chat/completions")
        pool.close()
        return caught.value

    assert isinstance(_run(scenario), RETRYABLE_ERRORS)
