"""The one Redis client module, used when REDIS_URL is set.

Two kinds of client share one URL (``redis://`` or ``rediss://`` for TLS, read
as redis-py reads it: user, password, database, ``ssl_cert_reqs``,
``ssl_ca_certs``, ``ssl_check_hostname``):

- redis-py clients for everything off the request path: ``sync_client()`` and
  ``async_client()`` (one per event loop, as redis.asyncio pools are per loop).
- ``connection()``, a lean pipelined connection for the few commands on the
  request path (the admission script, the usage journal). Measured
  (tests/bench/README.md): redis-py's asyncio client spent ~250 µs of CPU per
  admission (pool checkout, health check, command packing, reply parsing),
  more than the whole 15 % budget for limits. This one sends commands on one
  persistent connection per event loop, writes those of one loop iteration
  together, and matches replies to callers in order; hiredis parses them.

A dead Redis fails fast: connecting (TCP, TLS, AUTH, SELECT) is bounded by
REDIS_TIMEOUT, and so is the silence of a connection on which commands wait:
they fail with ``RedisUnavailable`` and the next command connects again. While
``panel.outage.redis`` says Redis is down only one connection attempt per retry
interval is made; other callers get ``RedisUnavailable`` at once.
``UNREACHABLE`` is what callers catch to degrade instead of failing.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import weakref
from collections import deque
from dataclasses import dataclass
from functools import lru_cache

import hiredis
import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.connection import parse_url

from panel import logs, outage
from panel.conf import hot


class RedisError(Exception):
    """Redis answered the pipelined connection with an error reply."""


class RedisUnavailable(ConnectionError):
    """Redis could not be reached, or stopped answering."""


# Redis down or not answering, from redis-py or the pipelined connection.
UNREACHABLE = (RedisUnavailable, redis.ConnectionError, redis.TimeoutError)


def is_configured() -> bool:
    return bool(hot.REDIS_URL)


# --- redis-py ------------------------------------------------------------------------

_async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_sync_clients: dict[str, redis.Redis] = {}


def _timeouts() -> dict:
    return {
        "socket_connect_timeout": settings.REDIS_TIMEOUT,
        "socket_timeout": settings.REDIS_TIMEOUT,
    }


def async_client() -> aioredis.Redis:
    """The async client bound to the running loop (redis.asyncio pools are per loop)."""
    loop = asyncio.get_running_loop()
    url, client = _async_clients.get(loop, (None, None))
    if url != settings.REDIS_URL:
        client = aioredis.Redis.from_url(settings.REDIS_URL, **_timeouts())
        _async_clients[loop] = (settings.REDIS_URL, client)
    return client


def sync_client() -> redis.Redis:
    client = _sync_clients.get(settings.REDIS_URL)
    if client is None:
        client = _sync_clients[settings.REDIS_URL] = redis.Redis.from_url(
            settings.REDIS_URL, **_timeouts()
        )
    return client


# --- The pipelined connection --------------------------------------------------------


def bulk(arg) -> bytes:
    """One argument as a RESP bulk string."""
    data = arg if isinstance(arg, bytes) else str(arg).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def pack_items(args) -> bytes:
    """Arguments as RESP bulk strings, without the array header (see ``Script.run``)."""
    return b"".join([bulk(arg) for arg in args])


def pack_command(*args) -> bytes:
    """One command as a RESP array."""
    return b"*%d\r\n" % len(args) + pack_items(args)


@lru_cache(maxsize=1024)
def command_head(count: int, *args) -> bytes:
    """The start of a command of ``count`` arguments: its array header and ``args``.

    For the request path's commands, whose name and key (and a lease's field) repeat:
    packed once, the rest appended with ``bulk`` (a lease take's three HINCRBYs packed
    whole cost ~16 us here, ~4.5 us so; issue 20).
    """
    return b"*%d\r\n" % count + pack_items(args)


_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True)
class Endpoint:
    """Where and how the pipelined connection connects, from a redis:// or rediss:// URL."""

    url: str
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: ssl.SSLContext | None

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        if not url.startswith(("redis://", "rediss://")):
            raise ValueError("The pipelined Redis connection needs a redis:// or rediss:// URL.")
        # redis-py's own parser, so that both clients read one URL the same way.
        options = parse_url(url)
        return cls(
            url=url,
            host=options.get("host", "localhost"),
            port=options.get("port", 6379),
            db=options.get("db", 0),
            username=options.get("username"),
            password=options.get("password"),
            tls=_tls_context(options) if url.startswith("rediss://") else None,
        )


def _tls_context(options: dict) -> ssl.SSLContext:
    """The system's defaults, with the URL's ssl_* parameters as redis-py applies them."""
    cert_reqs = options.get("ssl_cert_reqs", "required")
    if cert_reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs in REDIS_URL must be one of {', '.join(_CERT_REQS)}.")
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if _CERT_REQS[cert_reqs] == ssl.CERT_NONE or options.get("ssl_check_hostname") is False:
        context.check_hostname = False
    context.verify_mode = _CERT_REQS[cert_reqs]
    return context


def _ignore_reply(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it


class PipelinedConnection:
    """One connection; replies come back in the order commands were written."""

    def __init__(self, url: str) -> None:
        self.endpoint = Endpoint.from_url(url)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        # A future for each command whose reply someone awaits; None for a fired one (its
        # reply is read and dropped: no future, no callback, issue 20).
        self.waiting: deque[asyncio.Future | None] = deque()
        self.unsent: list[bytes] = []  # commands of this loop iteration, written together
        self.connecting: asyncio.Lock = asyncio.Lock()
        self.listener: asyncio.Task | None = None
        # When Redis last sent replies, or commands started waiting on an idle connection.
        self.progress_at = 0.0
        self.watchdog: asyncio.TimerHandle | None = None

    async def _connect(self) -> None:
        async with self.connecting:
            if self.writer is not None:
                return
            if not outage.redis.may_try():
                raise RedisUnavailable("Redis is unreachable (retrying once a second)")
            try:
                async with asyncio.timeout(settings.REDIS_TIMEOUT):
                    await self._open()
            except (OSError, RedisError) as exc:  # TimeoutError and ssl.SSLError are OSErrors
                outage.redis.failed(exc)
                raise RedisUnavailable(f"Redis is unreachable: {exc!r}") from exc
            outage.redis.recovered()

    async def _open(self) -> None:
        endpoint = self.endpoint
        reader, writer = await asyncio.open_connection(
            endpoint.host,
            endpoint.port,
            ssl=endpoint.tls,
            server_hostname=endpoint.host if endpoint.tls else None,
        )
        try:
            parser = await _handshake(endpoint, reader, writer)
        except BaseException:
            writer.transport.abort()
            raise
        self.reader, self.writer = reader, writer
        self.listener = asyncio.get_running_loop().create_task(
            self._listen(reader, parser), context=logs.outside_requests()
        )

    async def _listen(self, reader: asyncio.StreamReader, parser: hiredis.Reader) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("Redis closed the connection")
                parser.feed(data)
                self.progress_at = loop.time()
                while (reply := parser.gets()) is not False:
                    future = self.waiting.popleft()
                    if future is not None and not future.done():
                        future.set_result(reply)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if self.writer is not None:
            # Abort, not close: a stalled peer would keep a closing TLS or TCP stream open.
            self.writer.transport.abort()
        self.reader = self.writer = None
        self.unsent.clear()
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        while self.waiting:
            future = self.waiting.popleft()
            if future is not None and not future.done():
                future.set_exception(RedisUnavailable(f"Redis connection lost: {exc!r}"))

    def _start_waiting(self, loop: asyncio.AbstractEventLoop) -> None:
        # One timer per connection, not one per command: it fires REDIS_TIMEOUT
        # after the last sign of progress while commands wait.
        self.progress_at = loop.time()
        if self.watchdog is None:
            self.watchdog = loop.call_at(self.progress_at + settings.REDIS_TIMEOUT, self._watch)

    def _watch(self) -> None:
        self.watchdog = None
        if not self.waiting:
            return
        loop = asyncio.get_running_loop()
        deadline = self.progress_at + settings.REDIS_TIMEOUT
        if loop.time() < deadline:
            self.watchdog = loop.call_at(deadline, self._watch)
            return
        exc = TimeoutError(f"no reply from Redis in {settings.REDIS_TIMEOUT} s")
        outage.redis.failed(exc)
        if self.listener is not None:
            self.listener.cancel()
        self._fail(exc)

    def _write_unsent(self) -> None:
        if self.unsent and self.writer is not None:
            self.writer.write(b"".join(self.unsent))
        self.unsent.clear()

    def _queue(self, loop: asyncio.AbstractEventLoop, command: bytes, waiters: tuple) -> None:
        """``command`` (packed, one or more) to write; ``waiters``, one a reply, get them."""
        if not self.waiting:
            self._start_waiting(loop)
        self.waiting.extend(waiters)
        self.unsent.append(command)
        if len(self.unsent) == 1:
            # One socket write for every command sent in this iteration of the loop.
            loop.call_soon(self._write_unsent)

    def fire(self, command: bytes, count: int = 1) -> bool:
        """Write packed commands (``count`` of them in ``command``) without waiting for
        their replies, which are read and dropped.

        Returns False when there is no connection yet (one is opened in the
        background for the next call): the caller decides what that costs.
        """
        loop = asyncio.get_running_loop()
        if self.writer is None:
            if not self.connecting.locked():
                task = loop.create_task(self._connect())
                task.add_done_callback(_ignore_reply)
            return False
        self._queue(loop, command, (None,) * count)
        return True

    async def execute(self, *args):
        return await self.send(pack_command(*args))

    async def send(self, command: bytes):
        """Write one packed command and wait for its reply."""
        if self.writer is None:
            await self._connect()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue(loop, command, (future,))
        reply = await future
        if isinstance(reply, hiredis.ReplyError):
            raise RedisError(str(reply))
        return reply


async def _handshake(endpoint: Endpoint, reader, writer) -> hiredis.Reader:
    """AUTH and SELECT on a new connection; the reply parser to keep using."""
    setup = []
    if endpoint.password:
        user = [endpoint.username] if endpoint.username else []
        setup.append(pack_command("AUTH", *user, endpoint.password))
    setup.append(pack_command("SELECT", endpoint.db))
    writer.write(b"".join(setup))
    parser = hiredis.Reader()
    for _ in setup:
        # Both replies often come in one read: parse what is there before reading more.
        while (reply := parser.gets()) is False:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("Redis closed the connection")
            parser.feed(data)
        if isinstance(reply, hiredis.ReplyError):
            raise RedisError(str(reply))
    return parser


_connections: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def connection() -> PipelinedConnection:
    """The pipelined connection of the running loop (made on first use, and per REDIS_URL)."""
    loop = asyncio.get_running_loop()
    conn = _connections.get(loop)
    if conn is None or conn.endpoint.url != hot.REDIS_URL:
        conn = _connections[loop] = PipelinedConnection(hot.REDIS_URL)
    return conn


class Script:
    """A Lua script run by EVALSHA on the pipelined connection, loaded on first NOSCRIPT."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._evalsha = pack_items(("EVALSHA", self.sha))
        self._eval = pack_items(("EVAL", source))

    async def __call__(self, keys: list, args: list):
        return await self.run(1 + len(keys) + len(args), pack_items((len(keys), *keys, *args)))

    async def run(self, count: int, packed: bytes):
        """Run with ``packed``: numkeys, the keys and the arguments (``count`` items), packed.

        Callers that repeat most of their arguments pack those parts once.
        """
        conn = connection()
        header = b"*%d\r\n" % (count + 2)
        try:
            return await conn.send(header + self._evalsha + packed)
        except RedisError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await conn.send(header + self._eval + packed)
