"""uvicorn's HTTP protocol with the request read timeouts that no server we ship has.

A slowloris client opens connections and sends a request's headers a byte at a
time. uvicorn arms no timer until a first response is sent (its keep-alive
timeout only runs between requests, and any byte cancels it); daphne's Twisted
channel has a 60 s idle timeout that each byte resets, and daphne's
``--http-timeout`` bounds the application's answer instead, which would cut a
long stream. So measured against 500 such connections, both kept every one open.

This protocol closes a connection whose request line and headers have not all
arrived ``HTTP_HEADER_TIMEOUT`` seconds after it opened (or after its previous
response), answering 408 when some of them had; and one whose body stalls for
``HTTP_BODY_TIMEOUT`` seconds between two reads. Production's uvicorn command
(docker/Dockerfile) and `make run` both select it with ``--http``.

It also joins the writes of one event-loop iteration (``JoinedWrites``): a reply's head
and body, a stream that arrived at once, leave in one system call (issue 20).
"""

from __future__ import annotations

import contextlib
import socket
from asyncio import AbstractEventLoop, TimerHandle, Transport
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

PROTOCOL = "panel.http:TimeoutHttpToolsProtocol"
# The scope key of a request's ``ClientLeft`` (this protocol's requests have one).
DISCONNECT = "switchboard.client_left"
# The bytes uvicorn's two header patterns refuse (each pattern is one class of bytes).
BAD_NAME_BYTES = bytes(byte for byte in range(256) if HEADER_RE.match(bytes([byte])))
BAD_VALUE_BYTES = bytes(byte for byte in range(256) if HEADER_VALUE_RE.match(bytes([byte])))


def header_refusal(headers: list[tuple[bytes, bytes]]) -> str | None:
    """uvicorn's error for a response's headers, or None: a name or a value holding a byte
    its pattern refuses (``CheckedHeadersCycle``)."""
    names = b"-".join([name for name, _ in headers])
    if len(names.translate(None, BAD_NAME_BYTES)) != len(names):
        return "Invalid HTTP header name."
    values = b"\t".join([value for _, value in headers])
    if len(values.translate(None, BAD_VALUE_BYTES)) != len(values):
        return "Invalid HTTP header value."
    return None


REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
)


def uvicorn_args(*, host: str = "", port: int = 0, fd: int | None = None) -> list[str]:
    """Arguments of ``python -m uvicorn`` as docker/Dockerfile runs it (for `make run`), on
    ``host:port`` or on the listening socket ``fd`` that a process manager opened
    (`make run-prod`)."""
    where = ["--fd", str(fd)] if fd is not None else ["--host", host, "--port", str(port)]
    return [
        "panel.asgi:application",
        *where,
        "--http",
        PROTOCOL,
        "--timeout-keep-alive",
        "5",
        "--lifespan",
        "on",
        "--no-access-log",
    ]


def _send_without_delay(transport) -> None:
    """Nagle's algorithm off (TCP_NODELAY), so a stream's small chunks leave at once.

    uvicorn's own TCP servers set it, but on a socket it inherits (``--fd``, as under
    `make run-prod`'s supervisord) uvicorn opens the socket as a Unix one and the event
    loop never does: each chunk would then wait for the previous one's ACK.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    # A real Unix socket (--uds, --fd of one) refuses it: it has no Nagle to turn off.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class JoinedWrites:
    """A connection's transport whose writes within one event-loop iteration leave as one.

    uvicorn writes a response's status line and headers, then each body message, then (for a
    chunked body) its terminator, each its own ``send`` call: three system calls and three
    wake-ups of the client for a stream that arrives at once, two for a JSON reply (issue 20,
    tests/bench/README.md). Here the first write of an iteration is held and the next ones
    join it; the whole leaves when the response is complete (the protocol's
    ``on_response_complete``) or at the end of the iteration (``call_soon``), whichever is
    first. Closing first sends what is held. Everything else is the transport's own.
    """

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: Transport, loop: AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        held = self._held
        if not held:
            self._loop.call_soon(self.flush)
        held.append(data)

    def flush(self) -> None:
        held = self._held
        if not held:
            return
        self._held = []
        if self._transport.is_closing():
            return
        self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class ClientLeft:
    """Whether the client of one request left before its response was complete.

    The protocol puts one in each request's scope (``DISCONNECT``) and sets it when the
    connection is lost mid-response, then calls ``callback`` (the gateway's fast path
    cancels its view there). Without it the app would learn of the loss only by waiting
    on ``receive`` in a task of its own: a task, an event and two steps a request
    (issue 20). Read like an ``asyncio.Event``.
    """

    __slots__ = ("callback", "_set")

    def __init__(self) -> None:
        self.callback: Callable[[], object] | None = None
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def fire(self) -> None:
        self._set = True
        callback, self.callback = self.callback, None
        if callback is not None:
            callback()


class CheckedHeadersCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, a response's headers checked in two searches.

    uvicorn checks each header's name and value with a regex search of its own: ~1.3 us a
    header here, and a limited link's reply has ~20 headers (issue 20). Here the same two
    checks run once each: over the names joined by ``-``, which every name may hold,
    and over the values joined by a tab, which every value may hold, so a joined list
    holds a refused byte exactly when one of its parts does. Each pattern is one class of
    bytes, so a check is ``translate`` deleting that class (one pass in C: 0.3 against
    1.0 us for the names of a limited link's reply, the regex's search). The head is
    then written as uvicorn writes it (tests/panel/test_joined_writes.py compares the
    bytes with uvicorn's own).
    Anything but a response's start, and a start uvicorn would log, is uvicorn's.
    """

    async def send(self, message) -> None:
        if (
            self.response_started
            or self.disconnected
            or self.flow.write_paused
            or self.access_log
            or message["type"] != "http.response.start"
        ):
            return await super().send(message)
        self.response_started = True
        self.waiting_for_100_continue = False
        status_code = message["status"]
        headers = self.default_headers + list(message.get("headers", []))
        refused = header_refusal(headers)
        if refused is not None:
            raise RuntimeError(refused)
        content = [STATUS_LINE[status_code]]
        has_connection_close = False
        for name, value in headers:
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
                if b"close" in connection:
                    self.keep_alive = False
                    has_connection_close = True
            content.extend((name, b": ", value, b"\r\n"))
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if (
            self.chunked_encoding is None
            and self.scope["method"] != "HEAD"
            and status_code not in (204, 304)
        ):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self.transport.write(b"".join(content))


class TimeoutHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus a deadline for the headers and an idle limit for the body."""

    def __init__(self, *args, **kwargs) -> None:
        from django.conf import settings

        super().__init__(*args, **kwargs)
        self.header_timeout = settings.HTTP_HEADER_TIMEOUT
        self.body_timeout = settings.HTTP_BODY_TIMEOUT
        self.read_timer: TimerHandle | None = None
        self.deadline: float | None = None  # when the read now under way times out
        self.is_reading_headers = False  # some of a request, not all of its headers
        self.is_reading_body = False

    # One timer a connection, and a deadline that each read moves: re-arming is an
    # attribute write, not a timer cancelled and another scheduled (three of each a
    # request before issue 20). A timer that fires before the deadline waits on for the
    # rest; one that finds no deadline stops.

    def _arm(self, seconds: float) -> None:
        if seconds <= 0:
            self.deadline = None
            return
        deadline = self.loop.time() + seconds
        self.deadline = deadline
        timer = self.read_timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self.read_timer = self.loop.call_at(deadline, self._timer_fired)

    def _disarm(self) -> None:
        self.deadline = None

    def _stop_timer(self) -> None:
        self.deadline = None
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def _timer_fired(self) -> None:
        self.read_timer = None
        deadline = self.deadline
        if deadline is None:
            return
        if self.loop.time() < deadline:
            self.read_timer = self.loop.call_at(deadline, self._timer_fired)
            return
        self.deadline = None
        self._read_timed_out()

    def _read_timed_out(self) -> None:
        if self.transport.is_closing():
            return
        if self.is_reading_body:
            if self.flow.read_paused:
                # We stopped reading (the app is slow, or a request is pipelined):
                # the client is not the one stalling.
                self._arm(self.body_timeout)
                return
        elif self.is_reading_headers:
            self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        _send_without_delay(transport)
        self.transport = JoinedWrites(transport, self.loop)
        self._arm(self.header_timeout)

    def connection_lost(self, exc) -> None:
        self._stop_timer()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            left = cycle.scope.get(DISCONNECT)
            if left is not None:
                left.fire()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._stop_timer()  # the WebSocket protocol takes the connection over
        if isinstance(self.transport, JoinedWrites):  # with the transport itself
            self.transport.flush()
            self.transport = self.transport._transport
        super().handle_websocket_upgrade()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.is_reading_headers = True
        if self.deadline is None:
            self._arm(self.header_timeout)

    def on_headers_complete(self) -> None:
        self.scope[DISCONNECT] = ClientLeft()
        self.is_reading_headers = False
        self.is_reading_body = True
        self._arm(self.body_timeout)
        super().on_headers_complete()
        # uvicorn made the cycle and its task, which has not run yet: the cycle's class is
        # ours before its app is called (a WebSocket upgrade made no new cycle).
        if type(self.cycle) is RequestResponseCycle:
            self.cycle.__class__ = CheckedHeadersCycle

    def on_body(self, body: bytes) -> None:
        self._arm(self.body_timeout)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.is_reading_body = False
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # The response's last bytes go now, not at the end of the loop's iteration: what
        # the app does after its last message (accounting, its task's end) is not the
        # client's to wait for (at c=1 that was +0.07 ms a JSON reply).
        self.transport.flush()
        super().on_response_complete()
        # uvicorn armed its keep-alive timer (nothing pipelined): the next request's
        # headers must arrive in time too, however slowly their bytes trickle in.
        if self.timeout_keep_alive_task is not None and self.deadline is None:
            self._arm(self.header_timeout)
