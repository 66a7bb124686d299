"""Every Redis pool waits for a free connection when full instead of raising."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import redis.asyncio
from django.conf import settings
from django.core.cache.backends.redis import RedisCache

from ccgsc_site.redis_pools import BlockingRedisChannelLayer

pytestmark = pytest.mark.services

USERS = 200
CAP = 5


def _hold_a_connection(client: redis.Redis, key: str) -> bool:
    # BLPOP on an empty list keeps the connection busy for 50 ms, so users overlap.
    client.blpop([key], timeout=0.05)
    return True


def test_the_settings_choose_blocking_pools_everywhere():
    from ccgsc_site.celery import app

    assert settings.CACHES["default"]["OPTIONS"]["pool_class"] == "redis.BlockingConnectionPool"
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"].endswith("BlockingRedisChannelLayer")
    with app.connection_for_write() as connection:
        pool = connection.default_channel.client.connection_pool
        assert isinstance(pool, redis.BlockingConnectionPool)
        assert pool.max_connections == settings.REDIS_POOL_SIZE
    assert isinstance(app.backend.client.connection_pool, redis.BlockingConnectionPool)
    assert app.backend.client.connection_pool.max_connections == settings.REDIS_POOL_SIZE


def test_two_hundred_users_of_a_capped_cache_pool_all_succeed():
    # given: the cache as settings configure it, capped at five connections
    options = {**settings.CACHES["default"]["OPTIONS"], "max_connections": CAP}
    cache = RedisCache(settings.REDIS_URL, {"OPTIONS": options, "KEY_PREFIX": uuid.uuid4().hex})
    client = cache._cache.get_client(write=True)
    key = f"empty-{uuid.uuid4().hex}"
    # when
    with ThreadPoolExecutor(max_workers=USERS) as pool:
        results = list(pool.map(lambda _: _hold_a_connection(client, key), range(USERS)))
    # then
    assert results == [True] * USERS
    assert len(client.connection_pool._connections) <= CAP
    client.connection_pool.disconnect()


def test_the_default_pool_with_the_same_cap_raises_which_is_why_we_block():
    client = redis.Redis(
        connection_pool=redis.ConnectionPool.from_url(settings.REDIS_URL, max_connections=CAP)
    )
    key = f"empty-{uuid.uuid4().hex}"
    with ThreadPoolExecutor(max_workers=USERS) as pool:
        futures = [pool.submit(_hold_a_connection, client, key) for _ in range(USERS)]
    errors = [f.exception() for f in futures if f.exception() is not None]
    assert errors
    assert all(isinstance(e, redis.ConnectionError) for e in errors)
    client.connection_pool.disconnect()


async def test_two_hundred_users_of_a_capped_channel_layer_all_succeed():
    # given: the channel layer as settings configure it, capped at five connections
    config = dict(settings.CHANNEL_LAYERS["default"]["CONFIG"])
    config["hosts"] = [{**config["hosts"][0], "max_connections": CAP}]
    layer = BlockingRedisChannelLayer(**config, prefix=f"test-{uuid.uuid4().hex[:8]}")
    channel = await layer.new_channel()
    group = f"g{uuid.uuid4().hex[:8]}"
    await layer.group_add(group, channel)

    # when: two hundred concurrent senders
    async def send(n: int) -> None:
        await layer.group_send(group, {"type": "test.message", "n": n})

    await asyncio.gather(*(send(n) for n in range(USERS)))
    # then: every message arrived (the layer's capacity is above 200)
    received = {(await layer.receive(channel))["n"] for _ in range(USERS)}
    assert received == set(range(USERS))
    pool = layer.connection(0).connection_pool
    assert isinstance(pool, redis.asyncio.BlockingConnectionPool)
    assert pool.max_connections == CAP
    await layer.flush()
