"""The lean pipelined Redis connection used for admissions."""

import asyncio
import os

import pytest
import redis

from panel import outage, redis_pipe

URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_url(settings):
    try:
        redis.Redis.from_url(URL).ping()
    except redis.RedisError:
        pytest.skip("issue 4: needs a Redis server on 127.0.0.1:6379")
    settings.REDIS_URL = URL
    return URL


async def test_replies_match_their_commands_when_many_are_in_flight(redis_url):
    conn = redis_pipe.connection()
    keys = [f"sb:test:pipe:{i}" for i in range(50)]
    await asyncio.gather(*(conn.execute("SET", key, i) for i, key in enumerate(keys)))
    values = await asyncio.gather(*(conn.execute("GET", key) for key in keys))
    assert values == [str(i).encode() for i in range(50)]
    await conn.execute("DEL", *keys)


async def test_a_script_unknown_to_redis_is_sent_whole_once(redis_url):
    redis.Redis.from_url(redis_url).script_flush()
    script = redis_pipe.Script("return tonumber(ARGV[1]) + #KEYS")
    assert await script(keys=["a", "b"], args=[40]) == 42
    assert await script(keys=["a"], args=[1]) == 2


async def test_it_reconnects_after_the_connection_drops(redis_url):
    conn = redis_pipe.connection()
    assert await conn.execute("PING") == b"PONG"
    client_id = await conn.execute("CLIENT", "ID")
    redis.Redis.from_url(redis_url).client_kill_filter(_id=client_id)
    await asyncio.sleep(0.05)
    assert await conn.execute("PING") == b"PONG"


async def test_an_error_reply_raises(redis_url):
    with pytest.raises(redis_pipe.RedisError, match="unknown command"):
        await redis_pipe.connection().execute("NOT-A-COMMAND")


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
    with pytest.raises(redis_pipe.RedisUnavailable):
        await redis_pipe.connection().execute("PING")
    assert outage.redis.is_down
    # Within the retry interval nobody connects again: callers fail at once.
    with pytest.raises(redis_pipe.RedisUnavailable):
        await redis_pipe.connection().execute("PING")
    assert len(accepted) == 1
    server.close()


async def test_commands_waiting_on_a_redis_that_stopped_answering_fail(settings):
    server, _ = await _silent_redis(settings, answers=1)  # the SELECT, then silence
    conn = redis_pipe.connection()
    results = await asyncio.gather(
        *(conn.execute("PING") for _ in range(3)), return_exceptions=True
    )
    assert [type(r) for r in results] == [redis_pipe.RedisUnavailable] * 3
    assert outage.redis.is_down
    server.close()


async def test_a_closed_port_is_reported_unavailable(settings):
    from tests.servers import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(redis_pipe.RedisUnavailable):
        await redis_pipe.connection().execute("PING")
