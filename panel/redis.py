"""Redis clients, when REDIS_URL is set: one async client per event loop, one sync client."""

import asyncio
import weakref
from functools import cache

import redis
import redis.asyncio as aioredis
from django.conf import settings

_async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def is_configured() -> bool:
    return bool(settings.REDIS_URL)


def async_client() -> aioredis.Redis:
    """The async client bound to the running loop (redis.asyncio pools are per loop)."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        _async_clients[loop] = client
    return client


@cache
def sync_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)
