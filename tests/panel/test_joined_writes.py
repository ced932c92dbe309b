"""Production's HTTP protocol sends what one loop iteration writes as one write (issue 20).

uvicorn writes a response's head, each body message and a chunked body's end separately;
``panel.http.JoinedWrites`` joins the writes of one event-loop iteration. These drive
uvicorn's real protocol (``TimeoutHttpToolsProtocol``) in-process over a transport that
records what the socket would have been given.
"""

import asyncio

import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE
from uvicorn.server import ServerState

from panel.http import (
    BAD_NAME_BYTES,
    BAD_VALUE_BYTES,
    DISCONNECT,
    PROTOCOL,
    CheckedHeadersCycle,
    JoinedWrites,
    header_refusal,
)


class RecordingTransport(asyncio.Transport):
    """A connection's transport that keeps what is written and the order of calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False
        self.protocol = None

    def write(self, data) -> None:
        assert not self.closing, "written after close"
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol

    @property
    def writes(self) -> list[bytes]:
        return [data for call, data in self.calls if call == "write"]


def json_app(body=b'{"ok":true}'):
    async def app(scope, receive, send):
        await receive()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def stream_app(*, pause_between: bool):
    """An SSE-like stream of two events, then its end; with or without a wait between."""

    async def app(scope, receive, send):
        await receive()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for event in (b"data: 1\n\n", b"data: 2\n\n"):
            await send({"type": "http.response.body", "body": event, "more_body": True})
            if pause_between:
                await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def serve_one(
    app, request: bytes, transport: RecordingTransport | None = None
) -> RecordingTransport:
    """``request`` through the production protocol on one connection; the transport after."""
    config = uvicorn.Config(app, http=PROTOCOL, lifespan="off", access_log=False)
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = transport or RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(50):
        await asyncio.sleep(0.005)
        if protocol.cycle is not None and protocol.cycle.response_complete:
            break
    await asyncio.sleep(0.01)  # what the loop would do after the app returns
    protocol.connection_lost(None)
    return transport


GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


async def test_it_sends_a_whole_json_reply_in_one_write():
    transport = await serve_one(json_app(), GET)

    assert len(transport.writes) == 1
    (reply,) = transport.writes
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert reply.endswith(b'\r\n\r\n{"ok":true}')


async def test_a_complete_reply_leaves_before_the_apps_work_after_it():
    transport, seen = RecordingTransport(), []

    async def app(scope, receive, send):
        await json_app()(scope, receive, send)
        seen.append(len(transport.writes))  # then its own work (accounting, say)

    await serve_one(app, GET, transport)

    assert seen == [1]  # written as the last message was sent, not after the app's return
    assert len(transport.writes) == 1


async def test_it_sends_a_stream_that_is_all_there_in_one_write():
    transport = await serve_one(stream_app(pause_between=False), GET)

    (reply,) = transport.writes
    assert b"transfer-encoding: chunked\r\n" in reply
    assert reply.endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n")


async def test_it_does_not_hold_an_event_back_until_the_next_one():
    transport = await serve_one(stream_app(pause_between=True), GET)

    # The head goes with the first event (same iteration); each later write is its own,
    # so an event leaves as soon as the app gave it.
    assert len(transport.writes) == 3
    assert transport.writes[0].endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n")
    assert transport.writes[1] == b"9\r\ndata: 2\n\n\r\n"
    assert transport.writes[2] == b"0\r\n\r\n"


async def test_it_writes_what_it_holds_before_it_closes():
    request = b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
    transport = await serve_one(json_app(), request)

    # One write, then the close (uvicorn may close again; nothing is written after).
    assert [call for call, _ in transport.calls[:2]] == ["write", "close"]
    assert transport.writes == [transport.calls[0][1]]
    assert transport.writes[0].endswith(b'{"ok":true}')


async def test_it_drops_what_it_holds_once_the_client_is_gone():
    loop = asyncio.get_running_loop()
    transport = RecordingTransport()
    joined = JoinedWrites(transport, loop)
    joined.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.closing = True  # the client left before the iteration ended

    await asyncio.sleep(0)

    assert transport.calls == []


async def test_it_ignores_empty_writes_and_passes_the_rest_through():
    loop = asyncio.get_running_loop()
    transport = RecordingTransport()
    joined = JoinedWrites(transport, loop)

    joined.write(b"")
    await asyncio.sleep(0)

    assert transport.calls == []
    assert joined.get_extra_info("peername") == ("127.0.0.1", 50000)


async def test_a_websocket_upgrade_gets_the_connection_itself():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})

    transport = await serve_one(
        app,
        b"GET /ws HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n",
    )

    assert transport.protocol is not None  # uvicorn's WebSocket protocol took over
    assert transport.protocol.transport is transport
    assert transport.writes[0].startswith(b"HTTP/1.1 101 ")


# --- The client leaving (panel.http.ClientLeft) -----------------------------------------


async def _started(app) -> tuple:
    """A protocol that has taken ``GET`` and started ``app`` on it (no response yet)."""
    config = uvicorn.Config(app, http=PROTOCOL, lifespan="off", access_log=False)
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(RecordingTransport())
    protocol.data_received(GET)
    await asyncio.sleep(0.01)
    return protocol


async def test_a_client_that_leaves_mid_response_is_told_to_the_app_at_once():
    seen = []

    async def app(scope, receive, send):
        left = scope[DISCONNECT]
        left.callback = lambda: seen.append("left")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen.append(left.is_set())
        await asyncio.sleep(10)  # a long stream

    protocol = await _started(app)
    protocol.connection_lost(None)

    assert seen == [False, "left"]
    assert protocol.cycle.scope[DISCONNECT].is_set()
    for task in protocol.tasks:
        task.cancel()


async def test_a_connection_closed_after_a_complete_response_is_no_leaving():
    scopes = []

    async def app(scope, receive, send):
        scopes.append(scope)
        scope[DISCONNECT].callback = lambda: scopes.append("called")
        await json_app()(scope, receive, send)

    protocol = await _started(app)
    protocol.connection_lost(None)

    assert scopes[1:] == []  # no callback
    assert not scopes[0][DISCONNECT].is_set()


async def test_each_request_of_a_connection_has_its_own():
    scopes = []

    async def app(scope, receive, send):
        scopes.append(scope)
        await json_app()(scope, receive, send)

    protocol = await _started(app)
    protocol.data_received(GET)
    await asyncio.sleep(0.01)
    protocol.connection_lost(None)

    first, second = (scope[DISCONNECT] for scope in scopes)
    assert first is not second
    assert not first.is_set() and not second.is_set()


# --- The response head (panel.http.CheckedHeadersCycle) ---------------------------------


async def _head_and_body(protocol_name: str, request: bytes, status: int, headers) -> bytes:
    config = uvicorn.Config(
        json_app(), http=protocol_name, lifespan="off", access_log=False, log_level="critical"
    )

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if status == 204 else b"hello"})

    config.app = app
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(50):
        await asyncio.sleep(0.005)
        if protocol.cycle is not None and (protocol.cycle.response_complete or transport.closing):
            break
    await asyncio.sleep(0.01)
    protocol.connection_lost(None)
    return transport.calls


HEAD_CASES = {
    "length": (GET, 200, [(b"content-type", b"application/json"), (b"content-length", b"5")]),
    "chunked by default": (GET, 200, [(b"x-request-id", b"req_1")]),
    "chunked asked": (GET, 200, [(b"Transfer-Encoding", b"Chunked")]),
    "connection close": (GET, 200, [(b"Connection", b"keep-alive, Close"), (b"X-A", b"b\tc")]),
    "HEAD": (b"HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n", 200, [(b"x-a", b"1")]),
    "204": (GET, 204, [(b"x-a", b"1")]),
    "HTTP/1.0": (b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n", 200, [(b"content-length", b"5")]),
    "bad name": (GET, 200, [(b"x-a", b"1"), (b"x b", b"2")]),
    "bad value": (GET, 200, [(b"x-a", b"1\r\nset-cookie: a=b")]),
    "bad value at a join": (GET, 200, [(b"x-a", b"1\x00"), (b"x-b", b"2")]),
}


@pytest.mark.parametrize("case", HEAD_CASES, ids=list(HEAD_CASES))
async def test_the_head_is_written_and_refused_as_uvicorn_does(case):
    request, status, headers = HEAD_CASES[case]

    ours = await _head_and_body(PROTOCOL, request, status, headers)
    theirs = await _head_and_body("httptools", request, status, headers)

    assert b"".join(data for _, data in ours) == b"".join(data for _, data in theirs)
    assert [call for call, _ in ours if call == "close"] == [
        call for call, _ in theirs if call == "close"
    ]


def test_uvicorns_header_patterns_are_each_one_class_of_bytes():
    # What BAD_NAME_BYTES and BAD_VALUE_BYTES take from them holds only for such a pattern.
    for pattern in (HEADER_RE, HEADER_VALUE_RE):
        assert pattern.pattern.startswith(b"[") and pattern.pattern.endswith(b"]")
        assert pattern.flags & ~256 == 0  # no flag but the default for bytes (none)
    assert b":" in BAD_NAME_BYTES and b"\t" not in BAD_VALUE_BYTES


header_bytes = st.binary(max_size=6) | st.sampled_from([b"x-a", b"text/plain", b"a\tb", b" "])


@given(st.lists(st.tuples(header_bytes, header_bytes), max_size=5))
def test_the_joined_checks_refuse_exactly_what_uvicorns_refuse(headers):
    if any(HEADER_RE.search(name) for name, _ in headers):
        expected = "Invalid HTTP header name."
    elif any(HEADER_VALUE_RE.search(value) for _, value in headers):
        expected = "Invalid HTTP header value."
    else:
        expected = None
    assert header_refusal(headers) == expected


async def test_production_protocol_serves_with_the_checked_cycle():
    protocol = await _started(json_app())
    assert isinstance(protocol.cycle, CheckedHeadersCycle)
    protocol.connection_lost(None)
