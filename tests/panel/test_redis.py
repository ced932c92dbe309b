"""panel.redis: the pipelined connection used on the request path, over TCP and TLS."""

import asyncio
import os
import shutil

import pytest
import redis

from panel import outage
from panel import redis as sb_redis
from tests.servers import LOCAL_REDIS, RedisServer, TcpProxy, free_port

URL = os.environ.get("REDIS_URL") or LOCAL_REDIS


@pytest.fixture
def redis_url(settings):
    try:
        redis.Redis.from_url(URL).ping()
    except redis.RedisError:
        pytest.skip("issue 4: needs a Redis server on 127.0.0.1:6379")
    settings.REDIS_URL = URL
    return URL


async def test_replies_match_their_commands_when_many_are_in_flight(redis_url):
    conn = sb_redis.connection()
    keys = [f"sb:test:pipe:{i}" for i in range(50)]
    await asyncio.gather(*(conn.execute("SET", key, i) for i, key in enumerate(keys)))
    values = await asyncio.gather(*(conn.execute("GET", key) for key in keys))
    assert values == [str(i).encode() for i in range(50)]
    await conn.execute("DEL", *keys)


async def test_fired_commands_replies_are_dropped_in_order_between_awaited_ones(redis_url):
    conn = sb_redis.connection()
    await conn.execute("DEL", "sb:test:fired")
    first = asyncio.ensure_future(conn.execute("INCRBY", "sb:test:fired", 1))
    await asyncio.sleep(0)  # queued first
    assert conn.fire(sb_redis.pack_command("INCRBY", "sb:test:fired", 10))
    two = sb_redis.pack_command("INCRBY", "sb:test:fired", 100) + sb_redis.pack_command(
        "NOT-A-COMMAND"  # an error reply, dropped like any other
    )
    assert conn.fire(two, count=2)
    last = conn.execute("INCRBY", "sb:test:fired", 1000)

    # Each awaited command gets its own reply, however many fired ones came between.
    assert await asyncio.gather(first, last) == [1, 1111]
    assert not conn.waiting
    await conn.execute("DEL", "sb:test:fired")


async def test_a_script_unknown_to_redis_is_sent_whole_once(redis_url):
    redis.Redis.from_url(redis_url).script_flush()
    script = sb_redis.Script("return tonumber(ARGV[1]) + #KEYS")
    assert await script(keys=["a", "b"], args=[40]) == 42
    assert await script(keys=["a"], args=[1]) == 2


async def test_it_reconnects_after_the_connection_drops(redis_url):
    conn = sb_redis.connection()
    assert await conn.execute("PING") == b"PONG"
    client_id = await conn.execute("CLIENT", "ID")
    redis.Redis.from_url(redis_url).client_kill_filter(_id=client_id)
    await asyncio.sleep(0.05)
    assert await conn.execute("PING") == b"PONG"


async def test_an_error_reply_raises(redis_url):
    with pytest.raises(sb_redis.RedisError, match="unknown command"):
        await sb_redis.connection().execute("NOT-A-COMMAND")


# --- A dead Redis fails fast -------------------------------------------------------------


async def _silent_redis(settings, answers: int):
    """A server that answers its first ``answers`` commands with +OK, then never again."""
    accepted = []

    async def handle(reader, writer):
        accepted.append(writer)
        for _ in range(answers):
            await reader.read(65536)
            writer.write(b"+OK\r\n")
        await reader.read()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    settings.REDIS_URL = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    settings.REDIS_TIMEOUT = 0.2
    return server, accepted


async def test_a_redis_that_accepts_but_never_answers_fails_the_connect(settings):
    server, accepted = await _silent_redis(settings, answers=0)
    with pytest.raises(sb_redis.RedisUnavailable):
        await sb_redis.connection().execute("PING")
    assert outage.redis.is_down
    # Within the retry interval nobody connects again: callers fail at once.
    with pytest.raises(sb_redis.RedisUnavailable):
        await sb_redis.connection().execute("PING")
    assert len(accepted) == 1
    server.close()


async def test_commands_waiting_on_a_redis_that_stopped_answering_fail(settings):
    server, _ = await _silent_redis(settings, answers=1)  # the SELECT, then silence
    conn = sb_redis.connection()
    results = await asyncio.gather(
        *(conn.execute("PING") for _ in range(3)), return_exceptions=True
    )
    assert [type(r) for r in results] == [sb_redis.RedisUnavailable] * 3
    assert outage.redis.is_down
    server.close()


async def test_a_closed_port_is_reported_unavailable(settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(sb_redis.RedisUnavailable):
        await sb_redis.connection().execute("PING")


# --- TLS, credentials and the database from the URL ----------------------------------------


@pytest.fixture
def tls_redis(tmp_path):
    """A redis-server of this test's own speaking only TLS; only alice may sign in."""
    if shutil.which("redis-server") is None:
        pytest.skip("issue 11: needs redis-server on PATH")
    acl = ("--user", "default", "off", "--user", "alice", "on", ">p@ss/word", "~*", "&*", "+@all")
    server = RedisServer(tls_dir=tmp_path, args=acl).start()
    yield server
    server.stop()


def _as_alice(url: str, database: int) -> str:
    # The password has characters a URL must escape, which the connection unescapes.
    return url.replace("rediss://", "rediss://alice:p%40ss%2Fword@").replace("/0?", f"/{database}?")


async def test_it_speaks_tls_signs_in_and_selects_the_database_of_a_rediss_url(tls_redis, settings):
    settings.REDIS_URL = _as_alice(tls_redis.url, database=3)
    conn = sb_redis.connection()
    assert await conn.execute("SET", "sb:test:tls", "over tls") is not None
    assert await sb_redis.Script("return redis.call('GET', KEYS[1])")(["sb:test:tls"], []) == (
        b"over tls"
    )
    # redis-py reads the same URL the same way: same user, same database, TLS.
    assert sb_redis.sync_client().get("sb:test:tls") == b"over tls"
    assert sb_redis.sync_client().acl_whoami() == "alice"
    assert await conn.execute("ACL", "WHOAMI") == b"alice"


async def test_a_server_whose_certificate_it_does_not_trust_is_unavailable(tls_redis, settings):
    settings.REDIS_URL = _as_alice(tls_redis.url, 0).split("?")[0]  # no ssl_ca_certs
    with pytest.raises(sb_redis.RedisUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await sb_redis.connection().execute("PING")


async def test_ssl_cert_reqs_none_accepts_any_certificate(tls_redis, settings):
    settings.REDIS_URL = _as_alice(tls_redis.url, 0).split("?")[0] + "?ssl_cert_reqs=none"
    assert await sb_redis.connection().execute("PING") == b"PONG"


async def test_a_wrong_password_is_reported_unavailable(tls_redis, settings):
    settings.REDIS_URL = tls_redis.url.replace("rediss://", "rediss://alice:wrong@")
    with pytest.raises(sb_redis.RedisUnavailable, match="WRONGPASS"):
        await sb_redis.connection().execute("PING")


# --- A Redis that stops answering ----------------------------------------------------------


@pytest.fixture
def redis_behind_proxy(settings):
    """A redis-server of this test's own behind a proxy the test can stall, as REDIS_URL."""
    if shutil.which("redis-server") is None:
        pytest.skip("issue 11: needs redis-server on PATH")
    server = RedisServer().start()
    proxy = TcpProxy("127.0.0.1", server.port).start()
    settings.REDIS_URL = f"redis://127.0.0.1:{proxy.port}/0"
    settings.REDIS_TIMEOUT = 0.3
    yield proxy
    proxy.stop()
    server.stop()


async def _until_it_answers(conn) -> bytes:
    # Callers fail at once for a retry interval after an outage; then one reconnects.
    for _ in range(100):
        try:
            return await conn.execute("CLIENT", "ID")
        except sb_redis.RedisUnavailable:
            await asyncio.sleep(0.05)
    raise AssertionError("Redis never answered again")


async def test_a_command_without_a_reply_in_redis_timeout_fails_and_a_later_one_reconnects(
    redis_behind_proxy,
):
    conn = sb_redis.connection()
    first_id = await conn.execute("CLIENT", "ID")
    redis_behind_proxy.stall()

    # The bound only keeps a broken read timeout from hanging the suite.
    async with asyncio.timeout(10):
        results = await asyncio.gather(
            conn.execute("PING"), conn.execute("INCR", "sb:test:stalled"), return_exceptions=True
        )
    assert [type(r) for r in results] == [sb_redis.RedisUnavailable] * 2
    assert "no reply from Redis" in str(results[0])
    assert outage.redis.is_down and conn.writer is None

    redis_behind_proxy.resume()
    assert await _until_it_answers(conn) != first_id  # a new connection
    assert not outage.redis.is_down


async def test_a_journal_write_fired_into_a_stalled_redis_fails_the_connection(
    redis_behind_proxy,
):
    conn = sb_redis.connection()
    await conn.execute("PING")
    redis_behind_proxy.stall()
    assert conn.fire(sb_redis.pack_command("SET", "sb:test:fired", "1"))
    for _ in range(200):  # a bound only, so that a broken read timeout cannot hang the suite
        if conn.writer is None:
            break
        await asyncio.sleep(0.05)
    assert conn.writer is None and outage.redis.is_down and not conn.waiting


@pytest.mark.parametrize(
    "args",
    [
        ("HSET", "sb:gw:inflight:host-1", "req_1", b'{"a":1}'),
        ("HINCRBY", "sb:gw:inflight:host-1", "lease-7:c", -123456),
        ("HSET", "sb:clé", "ünïcode", "値"),
    ],
)
def test_a_command_from_its_cached_head_is_the_command_packed_whole(args):
    head = sb_redis.command_head(len(args), *args[:-1])

    assert head + sb_redis.bulk(args[-1]) == sb_redis.pack_command(*args)
    assert sb_redis.command_head(len(args), *args[:-1]) is head  # packed once
