"""The pipelined read path (`feature_store.online.resp.execute`) keeps its connections between calls, against
real Redis: a healthy one is used again, and one the server has closed meanwhile (a killed client, a restart)
is replaced before the next call instead of failing it."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from feature_store.local_stack import LocalStack
from feature_store.online.resp import execute


async def _client_id(client: aioredis.Redis) -> int:
    (client_id,) = await execute(client, [("CLIENT", "ID")])
    return int(client_id)


async def test_calls_in_turn_use_one_connection(redis_client: aioredis.Redis) -> None:
    await redis_client.hset("h", mapping={"a": "1", "b": "2"})
    first = await _client_id(redis_client)
    for _ in range(5):
        assert await execute(redis_client, [("HMGET", "h", "a", "b"), ("HGET", "h", "b")]) == [[b"1", b"2"], b"2"]
    assert await _client_id(redis_client) == first


async def test_calls_at_once_use_a_connection_each_and_keep_them(redis_client: aioredis.Redis) -> None:
    await redis_client.set("k", "v")
    ids = await asyncio.gather(*(_client_id(redis_client) for _ in range(3)))
    assert len(set(ids)) == 3
    again = await asyncio.gather(*(_client_id(redis_client) for _ in range(3)))
    assert set(again) == set(ids)  # kept, not opened anew


async def test_a_connection_the_server_closed_is_replaced(redis_client: aioredis.Redis, redis_db_url: str) -> None:
    await redis_client.set("k", "v")
    kept = await _client_id(redis_client)
    async with aioredis.Redis.from_url(redis_db_url) as killer:
        assert await killer.client_kill_filter(_id=kept) == 1
    await asyncio.sleep(0.05)  # the end of stream reaches the event loop
    assert await execute(redis_client, [("GET", "k")]) == [b"v"]
    assert await _client_id(redis_client) != kept


async def test_reads_go_on_after_a_redis_restart(private_redis: LocalStack) -> None:
    async with aioredis.Redis.from_url(private_redis.redis_url) as client:
        await client.set("k", "before")
        assert await execute(client, [("GET", "k")]) == [b"before"]
        await asyncio.to_thread(private_redis.restart_redis)
        await asyncio.sleep(0.05)
        await client.set("k", "after")  # redis-py's own pool reconnects too
        assert await execute(client, [("GET", "k")]) == [b"after"]


async def test_a_connection_idle_past_the_health_check_interval_is_pinged_first(private_redis: LocalStack) -> None:
    async with (aioredis.Redis.from_url(private_redis.redis_url, health_check_interval=1, socket_timeout=5) as client,
                aioredis.Redis.from_url(private_redis.redis_url) as observer):  # no health checks of its own

        async def pings() -> int:
            stats = await observer.info("commandstats")
            return int(stats.get("cmdstat_ping", {}).get("calls", 0))

        await observer.set("k", "v")
        assert await execute(client, [("GET", "k")]) == [b"v"]
        before = await pings()
        assert await execute(client, [("GET", "k")]) == [b"v"]
        assert await pings() == before  # used within the interval: no PING
        await asyncio.sleep(1.2)
        assert await execute(client, [("GET", "k")]) == [b"v"]
        assert await pings() == before + 1


async def test_a_burst_leaves_the_client_connections_for_its_other_commands(redis_db_url: str) -> None:
    async with aioredis.Redis.from_url(redis_db_url, max_connections=4) as client:
        await client.set("k", "v")
        replies = await asyncio.gather(*(execute(client, [("GET", "k")] * 50) for _ in range(4)))  # 4 at once
        assert all(reply == [b"v"] * 50 for reply in replies)
        assert await client.ping()  # the client's own commands still get a connection
        assert await execute(client, [("GET", "k")]) == [b"v"]
