"""Redis clients, when REDIS_URL is set: one async client per event loop, one sync client.

Both connect and answer within REDIS_TIMEOUT, so a dead Redis fails fast;
``UNREACHABLE`` is what callers catch to degrade instead of failing.
"""

import asyncio
import weakref

import redis
import redis.asyncio as aioredis
from django.conf import settings

from panel.redis_pipe import RedisUnavailable

# Redis down or not answering, from redis-py or the pipelined connection.
UNREACHABLE = (RedisUnavailable, redis.ConnectionError, redis.TimeoutError)

_async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_sync_clients: dict[str, redis.Redis] = {}


def is_configured() -> bool:
    return bool(settings.REDIS_URL)


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
