"""The request path's upstream client: HTTP/1.1 POSTs over pooled keep-alive connections.

aiohttp's client cost about 125 us of CPU a call on this machine, a protocol on
httptools' parser (the one uvicorn serves with) about 35 us (issue 20, tests/bench/README.md);
the gateway spends ~500 us a request in all. The request path needs little of what aiohttp
offers: one POST with a known body, the status, the body read whole or as it arrives. What it
needs is kept: a pool per origin, TLS with the system's trust store, the total, connect and
read timeouts, gzip and deflate bodies, host names looked up once in ``DNS_SECONDS`` (each
address tried in turn), and aiohttp's exceptions (``RETRYABLE_ERRORS`` and the messages the
pipeline records name them), so failover reads the same.

Not done here, as aiohttp did not do it for us either: proxies (the session never trusted
the environment's). Redirects are not followed: a 3xx is the upstream's answer (aiohttp
followed them, re-sending the API key wherever a Location pointed).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import zlib
from collections import deque
from typing import NamedTuple
from urllib.parse import urlsplit

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy

# An idle connection older than this is closed rather than reused (upstreams close theirs
# after 5-75 s; one closed under us costs a retry).
KEEPALIVE_SECONDS = 30.0
# Content-Encodings read (none is asked for: an upstream that sends one anyway is read).
ENCODED = (b"gzip", b"x-gzip", b"deflate")
# The most an answer's status line and headers may take. httptools keeps a header line in
# memory until it ends, so without a bound an upstream that never ends one would grow the
# gateway's memory until the total timeout. APIs send 1-3 KiB; aiohttp allowed 8190 bytes
# a line and ~32 KiB of lines.
MAX_HEAD_BYTES = 64 * 1024
# A host name's addresses are looked up once in this many seconds (aiohttp's default
# ttl_dns_cache): each lookup is getaddrinfo in the loop's thread pool.
DNS_SECONDS = 10.0


class IdleTimeout(aiohttp.ServerTimeoutError):
    """Nothing (more) of the body by the reader's ``read_deadline``."""


class HeadTimeout(aiohttp.ServerTimeoutError):
    """No connection, or no status line and headers, by the caller's ``head_by``."""


class Origin(NamedTuple):
    tls: bool
    host: str
    port: int


class Target(NamedTuple):
    """A URL split once: the origin's pool, and what the request line and Host header say."""

    origin: Origin
    host_header: bytes
    path: bytes


_targets: dict[str, Target] = {}
_ssl_context: ssl.SSLContext | None = None


def target(url: str) -> Target:
    """The parts of ``url`` a request needs (cached: the same few URLs come back)."""
    found = _targets.get(url)
    if found is not None:
        return found
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise aiohttp.InvalidURL(url)
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    default = port == (443 if tls else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    found = Target(
        Origin(tls, host, port),
        (shown if default else f"{shown}:{port}").encode("idna"),
        path.encode(),
    )
    if len(_targets) > 1024:
        _targets.clear()
    _targets[url] = found
    return found


def ssl_context() -> ssl.SSLContext:
    """The system's trust store, as aiohttp's default (``ssl.create_default_context``)."""
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


class Body:
    """A response body as it arrives: the part of aiohttp's StreamReader the pipeline reads."""

    __slots__ = ("_chunks", "_eof", "_error", "_waiter", "_response")

    def __init__(self, response: Response) -> None:
        self._chunks: deque[bytes] = deque()
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._response = response

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._wake()

    def end(self, error: BaseException | None = None) -> None:
        if self._eof:
            return
        self._eof, self._error = True, error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    async def readany(self) -> bytes:
        """What has arrived (waiting for something), or b"" at the end."""
        while not self._chunks:
            if self._eof:
                if self._error is not None:
                    raise self._error
                return b""
            await self._wait()
        if len(self._chunks) == 1:
            return self._chunks.popleft()
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    async def iter_any(self):
        while data := await self.readany():
            yield data

    async def _wait(self) -> None:
        """Until something arrives, within the reader's deadline or the read timeout.

        The deadline is a timer that resolves the waiter, not an ``asyncio.timeout`` block:
        the block's Timeout object and its cancellation of the task cost ~2 us more a
        wait, and a stream from a model waits once a token (issue 20).
        """
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        response = self._response
        read = response._read_timeout
        at = response.read_deadline
        if at is None and read is not None:
            at = loop.time() + read
        timer = None if at is None else loop.call_at(at, _expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        if waiter.result() is _EXPIRED:
            response.close()
            if response.read_deadline is not None:
                raise IdleTimeout("nothing more by the read deadline")
            raise aiohttp.ServerTimeoutError(f"no data for {read}s")


# What a read's timer gives its waiter when the deadline passes first.
_EXPIRED = object()


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(_EXPIRED)


class Response:
    """An upstream's answer: status and headers read, the body still arriving."""

    def __init__(self, connection: Connection, read_timeout: float | None) -> None:
        self._connection: Connection | None = connection
        self._read_timeout = read_timeout
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._headers: CIMultiDictProxy | None = None
        self._decompress = None
        # One timer for the exchange: at the head's read deadline (if sooner), then at the
        # total's (issue 20: two asyncio.timeout blocks and a timer were ~10 us a request).
        self._deadline: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._total = 0.0
        self._expires = 0.0
        self._timing_head = False  # the timer is the head's read deadline, not the total
        self._head_by = False  # that deadline is the caller's ``head_by`` (HeadTimeout)
        self._complete = False
        self._until_close = False
        self.status = 0
        self.content = Body(self)
        # Set by a reader (the loop's clock): the reads from now until it moves wait no
        # later than this, then fail with IdleTimeout. Only a read that has to wait arms a
        # timer; one that finds data costs nothing (a stream's relay, issue 20).
        self.read_deadline: float | None = None

    @property
    def headers(self) -> CIMultiDictProxy:
        if self._headers is None:
            self._headers = CIMultiDictProxy(
                CIMultiDict(
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in self._raw_headers
                )
            )
        return self._headers

    async def read(self) -> bytes:
        """The whole body."""
        parts = []
        while data := await self.content.readany():
            parts.append(data)
        return b"".join(parts)

    def release(self) -> None:
        """Done with it: the connection goes back to the pool if its answer was read whole."""
        if not self._complete:
            self.close()

    def close(self) -> None:
        """Done with it, read or not: a connection with an answer left unread is closed."""
        self._cancel_deadline()
        connection, self._connection = self._connection, None
        if connection is not None and not self._complete:
            connection.abort()
        self.content.end(aiohttp.ClientConnectionError("Connection closed"))

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.release()

    # Called by the connection.

    def _body(self, data: bytes) -> None:
        if self._decompress is not None:
            try:
                data = self._decompress.decompress(data)
            except zlib.error as exc:
                self._fail(aiohttp.ClientPayloadError(f"bad compressed body: {exc}"))
                return
            if not data:
                return
        self.content.feed(data)

    def _headers_complete(self, status: int) -> None:
        self.status = status
        framed = status in (204, 304)
        for name, value in self._raw_headers:
            name = name.lower()
            if name in (b"content-length", b"transfer-encoding"):
                framed = True
            elif name == b"content-encoding" and value.strip().lower() in ENCODED:
                # 32 + MAX_WBITS: a gzip or a zlib header, whichever comes.
                self._decompress = zlib.decompressobj(32 + zlib.MAX_WBITS)
        self._until_close = not framed

    def _done(self) -> None:
        if self._decompress is not None:
            rest = self._decompress.flush()
            if rest:
                self.content.feed(rest)
        self._complete = True
        self._cancel_deadline()
        self._connection = None
        self.content.end()

    def _fail(self, error: BaseException) -> None:
        self._cancel_deadline()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()
        self.content.end(error)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _arm(
        self,
        loop: asyncio.AbstractEventLoop,
        total: float,
        expires: float,
        head_by: float | None = None,
    ) -> None:
        """Time the exchange: the head within the read timeout (and by ``head_by``), the
        whole within ``total``."""
        self._loop, self._total, self._expires = loop, total, expires
        read = self._read_timeout
        at = expires
        if read is not None and loop.time() + read < at:
            at, self._timing_head = loop.time() + read, True
        if head_by is not None and head_by < at:
            at, self._timing_head, self._head_by = head_by, True, True
        self._deadline = loop.call_at(at, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._deadline = None
        connection = self._connection
        if connection is None:  # done, closed or failed meanwhile
            return
        timing_head, self._timing_head = self._timing_head, False
        if connection.head is not None and not connection.head.done():
            if self._head_by:
                error = HeadTimeout("no answer by the caller's deadline")
            elif timing_head:
                error = aiohttp.ServerTimeoutError(f"no answer for {self._read_timeout}s")
            else:
                error = aiohttp.ServerTimeoutError(f"no answer within {self._total}s")
            connection._error(error)
        elif timing_head:  # the head came in time: the total's turn
            self._deadline = self._loop.call_at(self._expires, self._deadline_passed)
        else:
            self._fail(aiohttp.ServerTimeoutError(f"not done within {self._total}s"))


class Connection(asyncio.Protocol):
    """One keep-alive connection to an origin; one request at a time."""

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool, self.origin = pool, origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.head: asyncio.Future | None = None
        self.head_bytes = 0  # of the answer under way, while its head is incomplete
        self.got_bytes = False
        self.lost = False
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.response is None:  # bytes nobody asked for: not a connection to reuse
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._error(aiohttp.ClientPayloadError("the upstream switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self._error(aiohttp.ClientPayloadError(f"malformed response: {exc}"))
            return
        head = self.head
        if head is not None and not head.done():
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self._error(
                    aiohttp.ClientPayloadError(
                        f"the answer's headers exceed {MAX_HEAD_BYTES // 1024} KiB"
                    )
                )

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.forget(self)
        response = self.response
        if response is not None and response._until_close and self.head.done():
            # A body with neither a length nor chunks ends with the connection.
            self.response = None
            response._done()
            return
        self._error(aiohttp.ServerDisconnectedError())

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.response._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 100 Continue and the like: the real answer follows
            self.response._raw_headers.clear()
            return
        self.response._headers_complete(status)
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.response._body(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or response.status == 0:  # the end of a 1xx: the answer follows
            return
        self.response = None
        keep = self.parser.should_keep_alive() and not self.lost
        response._done()
        if keep:
            self.parser = httptools.HttpResponseParser(self)
            self.got_bytes = False
            self.pool.give_back(self)
        else:
            self.abort()

    # Ours

    def _error(self, error: BaseException) -> None:
        response, self.response = self.response, None
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        if response is not None:
            response._fail(error)
        self.abort()

    def abort(self) -> None:
        self.lost = True
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()

    def send(self, head: bytes, body: bytes, response: Response) -> asyncio.Future:
        self.response = response
        self.head_bytes = 0
        self.head = asyncio.get_running_loop().create_future()
        self.transport.write(head + body if len(body) < 16384 else head)
        if len(body) >= 16384:
            self.transport.write(body)
        return self.head


class Pool:
    """Idle connections by origin, for the event loop that made them."""

    def __init__(self) -> None:
        self.idle: dict[Origin, list[Connection]] = {}
        self.busy: set[Connection] = set()
        self.closed = False
        # (host, port) -> (good until, addresses), and the lookups under way (one a name,
        # however many connections wait for it).
        self.addresses: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self.lookups: dict[tuple[str, int], asyncio.Future] = {}

    def idle_connection(self, origin: Origin, now: float) -> Connection | None:
        """A kept-alive connection to ``origin``, if one is idle."""
        idle = self.idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.lost or now - connection.idle_since > KEEPALIVE_SECONDS:
                connection.abort()
                continue
            self.busy.add(connection)
            return connection
        return None

    async def connect(self, origin: Origin, connect_timeout: float) -> Connection:
        """A new connection to ``origin``."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                hosts = await self._addresses(origin)
                for index, host in enumerate(hosts):
                    try:
                        _, connection = await loop.create_connection(
                            lambda: Connection(self, origin),
                            host,
                            origin.port,
                            ssl=ssl_context() if origin.tls else None,
                            server_hostname=origin.host if origin.tls else None,
                        )
                        break
                    except ssl.SSLError:
                        raise
                    except OSError:
                        if index == len(hosts) - 1:
                            raise  # each address tried: the last one's error
        except TimeoutError:
            raise aiohttp.ConnectionTimeoutError(
                f"no connection to {origin.host}:{origin.port} within {connect_timeout}s"
            ) from None
        except ssl.SSLError as exc:
            raise aiohttp.ClientConnectionError(
                f"TLS with {origin.host}:{origin.port} failed: {exc}"
            ) from None
        except OSError as exc:
            raise aiohttp.ClientConnectionError(
                f"cannot connect to {origin.host}:{origin.port}: {exc.strerror or exc}"
            ) from None
        self.busy.add(connection)
        return connection

    async def _addresses(self, origin: Origin) -> list[str]:
        """The addresses to try for ``origin``'s host, in order (an address: itself)."""
        if _is_address(origin.host):
            return [origin.host]
        key = (origin.host, origin.port)
        loop = asyncio.get_running_loop()
        known = self.addresses.get(key)
        if known is not None and known[0] > loop.time():
            return known[1]
        lookup = self.lookups.get(key)
        if lookup is None:
            lookup = self.lookups[key] = loop.create_task(self._lookup(key))
            lookup.add_done_callback(lambda done: self._looked_up(key, done))
        # Shielded: a connection that gives up waiting leaves the lookup to the others.
        return await asyncio.shield(lookup)

    async def _lookup(self, key: tuple[str, int]) -> list[str]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(*key, type=socket.SOCK_STREAM)
        hosts = list(dict.fromkeys(sockaddr[0] for *_, sockaddr in infos))
        if not hosts:
            raise OSError(f"no address for {key[0]}")
        self.addresses[key] = (loop.time() + DNS_SECONDS, hosts)
        if len(self.addresses) > 1024:
            self.addresses.clear()
        return hosts

    def _looked_up(self, key: tuple[str, int], lookup: asyncio.Future) -> None:
        if self.lookups.get(key) is lookup:
            del self.lookups[key]
        if not lookup.cancelled():
            lookup.exception()  # retrieved: each waiter got it (or none waited)

    def give_back(self, connection: Connection) -> None:
        self.busy.discard(connection)
        if self.closed:
            connection.abort()
            return
        connection.idle_since = asyncio.get_running_loop().time()
        self.idle.setdefault(connection.origin, []).append(connection)

    def forget(self, connection: Connection) -> None:
        self.busy.discard(connection)
        idle = self.idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)

    def close(self) -> None:
        self.closed = True
        for connection in [*self.busy, *(c for idle in self.idle.values() for c in idle)]:
            connection.abort()
        self.idle.clear()
        self.busy.clear()


_address_hosts: dict[str, bool] = {}


def _is_address(host: str) -> bool:
    """Whether ``host`` is an IP address rather than a name (remembered)."""
    found = _address_hosts.get(host)
    if found is None:
        try:
            ipaddress.ip_address(host)
            found = True
        except ValueError:
            found = False
        if len(_address_hosts) > 1024:
            _address_hosts.clear()
        _address_hosts[host] = found
    return found


async def post(
    pool: Pool,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    total: float,
    connect: float,
    read: float | None,
    head_by: float | None = None,
) -> Response:
    """POST ``body``; the response once its status and headers are in, its body unread.

    ``total`` bounds the whole exchange, body included (as aiohttp's total timeout did);
    ``read`` each wait for data (None: no bound, a stream's reads are the pipeline's to
    bound); ``head_by`` (the loop's clock) the connection and the head together: past it,
    ``HeadTimeout`` (a stream's first event is due by then, issue 20). A connection from
    the pool that the upstream closed meanwhile is replaced once, when nothing of an
    answer came on it.
    """
    where = target(url)
    lines = [
        b"POST ",
        where.path,
        b" HTTP/1.1\r\nHost: ",
        where.host_header,
        b"\r\nContent-Length: ",
        str(len(body)).encode(),
        b"\r\n",
    ]
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"a {name} header may not hold a line break")
        lines.append(f"{name}: {value}\r\n".encode())  # as aiohttp wrote them
    lines.append(b"\r\n")
    head = b"".join(lines)
    loop = asyncio.get_running_loop()
    expires = loop.time() + total
    for _ in range(2):
        connection = pool.idle_connection(where.origin, loop.time())
        reused = connection is not None
        if connection is None:
            until = expires if head_by is None else min(expires, head_by)
            try:
                async with asyncio.timeout_at(until):
                    connection = await pool.connect(where.origin, connect)
            except TimeoutError as exc:
                if isinstance(exc, aiohttp.ServerTimeoutError):
                    raise
                if until != expires:
                    raise HeadTimeout("no connection by the caller's deadline") from None
                raise aiohttp.ServerTimeoutError(f"no answer within {total}s") from None
        response = Response(connection, read)
        answered = connection.send(head, body, response)
        response._arm(loop, total, expires, head_by)
        try:
            await answered
        except aiohttp.ServerDisconnectedError:
            response.close()
            if reused and not connection.got_bytes:
                continue  # the upstream had closed it while it was idle
            raise
        except BaseException:
            response.close()
            raise
        return response
    raise aiohttp.ServerDisconnectedError()
