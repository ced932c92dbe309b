"""The lean pipelined Redis connection used for admissions."""

import asyncio
import os

import pytest
import redis

from panel import redis_pipe

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
