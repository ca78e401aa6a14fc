"""The one way every process opens the online store: a Redis server, or a Redis Cluster.

Why one place: the stream worker, the API, materialization and the label
flows must agree on what `FEATURESTREAM_REDIS` points at. With
`FEATURESTREAM_REDIS_CLUSTER=true` the URL names any node of a cluster; the
client learns the slot map from it and sends each command to the node that
owns its key. Every key the project writes carries its partition's hash tag
(`keys.KeyLayout`), so a batch's script and a hash's reads stay on one node.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import ClusterDownError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["UNREACHABLE", "OnlineClient", "open_online", "open_online_sync"]

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, RedisClusterException, ClusterDownError)
"""What a client raises when the store cannot answer now (down, or the cluster without the node owning a key):
the call is retried (worker) or answered 503 (API), never a crash or a 500."""

OnlineClient = aioredis.Redis | aioredis.RedisCluster
"""A client of the online store: redis-py's, for a server or a cluster (the same command methods)."""


def open_online(url: str, *, cluster: bool = False, **options: Any) -> OnlineClient:
    """A client for `url` (`options` are redis-py's connection options: timeouts, pool size, retry)."""
    if cluster:
        return aioredis.RedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)


def open_online_sync(url: str, *, cluster: bool = False, **options: Any) -> redis.Redis | redis.RedisCluster:
    """`open_online` for blocking code (the dashboard's page rendering)."""
    if cluster:
        return redis.RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)
