"""Redis connection pools that wait for a free connection instead of raising when full.

redis-py's default pool caps at 100 connections and raises ``ConnectionError("Too many
connections")`` past that, which a burst of sockets reconnecting after a restart reaches at
once. Every pool the site opens (Django's cache, the channel layer, Celery's broker and result
backend) is a ``BlockingConnectionPool``: a caller beyond the cap waits up to a timeout for a
connection to come back. Settings wires these in; sizes are per process
(``CCGSC_REDIS_POOL_SIZE``, ``CCGSC_REDIS_POOL_TIMEOUT``).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from celery.backends.redis import RedisBackend
from channels_redis.core import RedisChannelLayer
from kombu.transport import redis as kombu_redis


class BlockingRedisChannelLayer(RedisChannelLayer):
    """channels_redis with a blocking pool per host (``max_connections``, ``timeout``)."""

    def create_pool(self, index: int) -> redis.asyncio.ConnectionPool:
        host = dict(self.hosts[index])
        address = host.pop("address")
        return redis.asyncio.BlockingConnectionPool.from_url(address, **host)


class BlockingRedisChannel(kombu_redis.Channel):
    """Kombu's Redis channel with a blocking pool (the transport option ``pool_timeout``)."""

    from_transport_options = (*kombu_redis.Channel.from_transport_options, "pool_timeout")
    pool_timeout = 10

    def _get_pool(self, asynchronous: bool = False) -> redis.ConnectionPool:
        params = self._connparams(asynchronous=asynchronous)
        # As kombu's own _get_pool does: the fanout prefix names the database.
        self.keyprefix_fanout = self.keyprefix_fanout.format(db=params["db"])
        return redis.BlockingConnectionPool(timeout=self.pool_timeout, **params)


class BlockingRedisTransport(kombu_redis.Transport):
    """Celery's broker transport (``broker_transport``) over blocking pools."""

    Channel = BlockingRedisChannel


class BlockingRedisBackend(RedisBackend):
    """Celery's Redis result backend over a blocking pool."""

    pool_timeout = 10

    @property
    def ConnectionPool(self) -> Any:  # noqa: N802 - the name Celery's backend reads
        timeout = self.app.conf.get("redis_pool_timeout") or self.pool_timeout

        def blocking_pool(**params: Any) -> redis.BlockingConnectionPool:
            return redis.BlockingConnectionPool(timeout=timeout, **params)

        return blocking_pool
