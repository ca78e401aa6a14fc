"""Pipelined reads on a pooled redis.asyncio connection, packed and parsed by hiredis in one pass.

Why: redis-py's pipeline spends ~20 us of Python per command (argument
encoding, per-reply timeout contexts and callbacks); a 100-entity read sends
200 commands, so that was several times the wire time. Here the commands are
packed by `hiredis.pack_command`, written at once, and the replies parsed
from the connection's stream by one `hiredis.Reader` under one timeout (the
client's `socket_timeout`). Connections come from the client's own pool (its
AUTH, SELECT and TLS apply; the connection's periodic PING check too) and stay
checked out between calls, idle here: the pool's hand-out and release cost
~15 us of the ~50 us a 2-command call takes (its lock, per-call connection
probe and connection-count hooks). An idle connection the server has closed
meanwhile (a restart) is noticed by its end-of-stream mark and handed back to
the pool, which reconnects it. At most half the pool's `max_connections` are
kept, so the client's other commands (`/readyz`'s PING) always find one. Any
error disconnects the connection and hands it back, so no socket with unread
replies is ever used again.

On a Redis Cluster the commands go to the nodes owning their keys (the first
key; the project's multi-key commands share a hash tag), one pipeline per
node, all in flight together; a reply saying a slot moved refreshes the slot
map and the commands that heard it are sent once more.

Replies are hiredis' raw shapes: bytes, lists, None, and for HGETALL a dict
(RESP3 map) or a flat field/value list (RESP2); an error reply raises `redis.exceptions.ResponseError`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any
from weakref import WeakKeyDictionary

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from feature_store.online.client import OnlineClient

__all__ = ["execute"]

_READ_SIZE = 65536
_IDLE: WeakKeyDictionary[Any, list[Any]] = WeakKeyDictionary()  # pool -> its connections kept here, idle


async def execute(redis: OnlineClient, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """The replies of `commands`, sent as one pipeline (not a transaction).

    Every command names a key: its second word (EVALSHA/EVAL: its first key).
    """
    if isinstance(redis, aioredis.RedisCluster):
        replies = await _on_cluster(redis, commands)
        moved = [i for i, r in enumerate(replies) if isinstance(r, hiredis.ReplyError)
                 and str(r).startswith(("MOVED ", "ASK "))]
        if moved:  # resharded since the slot map was read: those commands did not run; send them once more
            await redis.nodes_manager.initialize()
            for i, reply in zip(moved, await _on_cluster(redis, [commands[i] for i in moved]), strict=True):
                replies[i] = reply
        return _raise_errors(replies)
    pool = redis.connection_pool
    idle = _IDLE.get(pool)
    if idle is None:
        idle = _IDLE[pool] = []
    conn = await _checked_out(pool, idle)
    try:
        timeout = getattr(conn, "socket_timeout", None)
        async with asyncio.timeout(timeout):
            await _send(conn, b"".join([hiredis.pack_command(c) for c in commands]))
            replies = await _read(conn, len(commands))
    except BaseException:
        await conn.disconnect(nowait=True)
        await pool.release(conn)
        raise
    if len(idle) < pool.max_connections // 2:
        idle.append(conn)
    else:  # a burst's extra connections go back: the client's other commands need some too
        await pool.release(conn)
    return _raise_errors(replies)


async def _checked_out(pool: aioredis.ConnectionPool, idle: list[Any]) -> Any:
    """An idle connection kept from an earlier call (`idle`: the pool's), else a new one from the pool."""
    while idle:
        conn = idle.pop()
        stream = getattr(conn, "_reader", None)
        if conn.is_connected and not (isinstance(stream, asyncio.StreamReader) and stream.at_eof()):
            return conn
        await pool.release(conn)  # closed meanwhile (the server restarted, or the pool was disconnected)
    return await pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped


def _raise_errors(replies: list[Any]) -> list[Any]:
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            if str(reply).startswith(("CLUSTERDOWN", "TRYAGAIN")):  # a cluster that cannot serve now
                raise RedisConnectionError(f"the Redis Cluster cannot serve now: {reply}")
            raise ResponseError(str(reply))
    return replies


def _key_of(command: tuple[Any, ...]) -> Any:
    return command[3] if command[0] in ("EVALSHA", "EVAL") else command[1]


async def _on_cluster(cluster: aioredis.RedisCluster, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """`commands` split by owning node and pipelined to each; replies in the commands' order, errors unraised."""
    await cluster.initialize()  # the slot map, read once (returns at once afterwards)
    by_node: dict[str, tuple[Any, list[int]]] = {}
    for i, command in enumerate(commands):
        node = cluster.get_node_from_key(_key_of(command))
        if node is None:
            raise RedisConnectionError(f"no Redis Cluster node serves the slot of {_key_of(command)!r}")
        by_node.setdefault(node.name, (node, []))[1].append(i)
    replies: list[Any] = [None] * len(commands)

    async def on_node(node: Any, indexes: list[int]) -> None:
        conn = node.acquire_connection()
        try:
            await _send(conn, b"".join([hiredis.pack_command(commands[i]) for i in indexes]))
            for i, reply in zip(indexes, await _read(conn, len(indexes)), strict=True):
                replies[i] = reply
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            node.release(conn)

    async with asyncio.timeout(cluster.get_connection_kwargs().get("socket_timeout")):
        await asyncio.gather(*(on_node(node, indexes) for node, indexes in by_node.values()))
    return replies


async def _send(conn: Any, data: bytes) -> None:
    """Write `data` on the connection's stream, bounded by the caller's timeout.

    redis-py's `send_packed_command` runs the write under `asyncio.wait_for`, which on Python 3.11 wraps
    it in a task of its own: one more event-loop step (and task) per call.
    """
    writer = getattr(conn, "_writer", None)  # the connection's StreamWriter (redis-py internals, checked)
    if not isinstance(writer, asyncio.StreamWriter):
        await conn.send_packed_command(data)
        return
    await conn.check_health()  # its periodic PING, as send_packed_command does
    if writer.transport.is_closing():
        raise RedisConnectionError("Redis closed the connection")
    writer.write(data)
    await writer.drain()


async def _read(conn: Any, count: int) -> list[Any]:
    stream = getattr(conn, "_reader", None)  # the connection's StreamReader (redis-py internals, checked)
    if not isinstance(stream, asyncio.StreamReader):
        return [await conn.read_response(timeout=math.inf) for _ in range(count)]  # timed by the caller
    reader = hiredis.Reader()
    replies: list[Any] = []
    while len(replies) < count:
        reply = reader.gets()
        if reply is False:
            data = await stream.read(_READ_SIZE)
            if not data:
                raise RedisConnectionError("Redis closed the connection")
            reader.feed(data)
        else:
            replies.append(reply)
    return replies
