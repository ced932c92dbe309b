"""A lean pipelined Redis connection for the one script call on the request path.

Measured (tests/bench/README.md): redis-py's asyncio client spent ~250 µs of
CPU per admission (pool checkout, health check, command packing, reply
parsing), more than the whole 15 % budget for limits. This sends commands on
one persistent connection per event loop, writes them as they come, and
matches replies to callers in order; hiredis parses the replies. Everything
else keeps using redis-py.

A dead Redis fails fast: connecting and every reply are bounded by
REDIS_TIMEOUT, and while ``panel.outage.redis`` says Redis is down only one
connection attempt per retry interval is made; other callers get
``RedisUnavailable`` at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections import deque
from urllib.parse import urlparse

import hiredis
from django.conf import settings

from panel import outage


class RedisError(Exception):
    """Redis answered with an error reply."""


class RedisUnavailable(ConnectionError):
    """Redis could not be reached, or stopped answering."""


def pack_items(args) -> bytes:
    """Arguments as RESP bulk strings, without the array header (see ``Script.run``)."""
    parts = []
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def pack_command(*args) -> bytes:
    """One command as a RESP array."""
    return b"*%d\r\n" % len(args) + pack_items(args)


_pack = pack_command


def _ignore_reply(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it


class PipelinedConnection:
    """One connection; replies come back in the order commands were written."""

    def __init__(self, url: str) -> None:
        self.url = urlparse(url)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.waiting: deque[asyncio.Future] = deque()
        self.unsent: list[bytes] = []  # commands of this loop iteration, written together
        self.connecting: asyncio.Lock = asyncio.Lock()
        self.listener: asyncio.Task | None = None
        self.replies = 0  # replies received, which the watchdog checks for progress
        self.watched_replies = 0
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
            except (OSError, RedisError) as exc:  # TimeoutError is an OSError
                outage.redis.failed(exc)
                raise RedisUnavailable(f"Redis is unreachable: {exc!r}") from exc
            outage.redis.recovered()

    async def _open(self) -> None:
        reader, writer = await asyncio.open_connection(
            self.url.hostname or "127.0.0.1", self.url.port or 6379
        )
        try:
            parser = await _handshake(self.url, reader, writer)
        except BaseException:
            writer.close()
            raise
        self.reader, self.writer = reader, writer
        self.listener = asyncio.get_running_loop().create_task(self._listen(reader, parser))

    async def _listen(self, reader: asyncio.StreamReader, parser: hiredis.Reader) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("Redis closed the connection")
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    self.replies += 1
                    future = self.waiting.popleft()
                    if not future.done():
                        future.set_result(reply)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
        self.unsent.clear()
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(RedisUnavailable(f"Redis connection lost: {exc!r}"))

    def _watch(self) -> None:
        # One timer per connection, not one per command: it fires every
        # REDIS_TIMEOUT while commands wait, and fails the connection when no
        # reply at all came in a whole period.
        self.watchdog = None
        if not self.waiting:
            return
        if self.replies == self.watched_replies:
            exc = TimeoutError(f"no reply from Redis in {settings.REDIS_TIMEOUT} s")
            outage.redis.failed(exc)
            if self.listener is not None:
                self.listener.cancel()
            self._fail(exc)
            return
        self._arm_watchdog()

    def _arm_watchdog(self) -> None:
        self.watched_replies = self.replies
        self.watchdog = asyncio.get_running_loop().call_later(settings.REDIS_TIMEOUT, self._watch)

    def _write_unsent(self) -> None:
        if self.unsent and self.writer is not None:
            self.writer.write(b"".join(self.unsent))
        self.unsent.clear()

    def fire(self, command: bytes) -> bool:
        """Write one packed command without waiting for its reply.

        Returns False when there is no connection yet (one is opened in the
        background for the next call): the caller decides what that costs.
        """
        if self.writer is None:
            if not self.connecting.locked():
                task = asyncio.get_running_loop().create_task(self._connect())
                task.add_done_callback(_ignore_reply)
            return False
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        future.add_done_callback(_ignore_reply)
        self.waiting.append(future)
        self.unsent.append(command)
        if len(self.unsent) == 1:
            loop.call_soon(self._write_unsent)
        return True

    async def execute(self, *args):
        return await self.send(_pack(*args))

    async def send(self, command: bytes):
        """Write one packed command and wait for its reply."""
        if self.writer is None:
            await self._connect()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append(future)
        if self.watchdog is None:
            self._arm_watchdog()
        self.unsent.append(command)
        if len(self.unsent) == 1:
            # One socket write for every command sent in this iteration of the loop.
            loop.call_soon(self._write_unsent)
        reply = await future
        if isinstance(reply, hiredis.ReplyError):
            raise RedisError(str(reply))
        return reply


async def _handshake(url, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    """AUTH and SELECT on a new connection; the reply parser to keep using."""
    setup = []
    if url.password:
        setup.append(_pack("AUTH", *([url.username] if url.username else []), url.password))
    database = (url.path or "/0").lstrip("/") or "0"
    setup.append(_pack("SELECT", database))
    writer.write(b"".join(setup))
    parser = hiredis.Reader()
    for _ in setup:
        reply = False
        while reply is False:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("Redis closed the connection")
            parser.feed(data)
            reply = parser.gets()
        if isinstance(reply, hiredis.ReplyError):
            raise RedisError(str(reply))
    return parser


_connections: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def connection() -> PipelinedConnection:
    loop = asyncio.get_running_loop()
    conn = _connections.get(loop)
    if conn is None or conn.url.geturl() != settings.REDIS_URL:
        conn = _connections[loop] = PipelinedConnection(settings.REDIS_URL)
    return conn


class Script:
    """A Lua script run by EVALSHA, loaded on first NOSCRIPT."""

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
