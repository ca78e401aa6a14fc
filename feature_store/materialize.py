"""Materialization: compute the online state of a time range from the offline store and SET it in Redis.

`materialize(start_ms, end_ms)` writes, per online view, exactly the state
the stream path would hold at `end_ms` for the same applied events ("as
served": events with `event_time <= end` and `ingest_time <= end`), in the
same key layout and codec (`feature_store.online`):

- windowed views: per entity, partition and hop one HSET with every tile
  `tile_start -> pack_stats(stats)` for tiles overlapping
  `[start - max_window, end]`; stats come from `stat_sql`, grouped by
  entity, partition (the log's Kafka partition, or `partition_for(entity)`
  for batch sources) and tile start.
- latest-value views: per entity and partition one SET of
  `pack_latest(event_time, tie, seq, values)` of the newest applied row with
  `event_time <= end`.

Writes overwrite (HSET fields, SET), so running it twice changes nothing -
bit for bit: tile queries run on one DuckDB thread, because a parallel sum
adds floats in a different order each run (last-bit differences in `s`,
`m2`). Each key gets a PEXPIRE of its window (or ttl) plus `EXPIRE_MARGIN_MS`.
Values are packed from Arrow columns, commands by hiredis, and they go out
on one connection in pipelines of `chunk` commands, the next chunk being
built while Redis works on the last (redis-py's pipeline object costs
several times more per command than the wire does).
Offsets (`KeyLayout.offset_key`) are never touched: a stream worker later
replaying events already materialized would count them again, so backfill
ranges the stream path has not applied, or restart the worker from `end`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import hiredis
import redis.asyncio as aioredis
import structlog
from redis.asyncio.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from feature_store.aggregates import TileLayout, stat_sql, tile_layouts
from feature_store.definitions import FeatureView
from feature_store.errors import OfflineStoreError, OnlineStoreUnavailable
from feature_store.offline.engine import connect
from feature_store.offline.events import STRUCT_ORDER, order_key, view_events_sql
from feature_store.online import KeyLayout, pack_latest, partition_for
from feature_store.online.codec import pack_stats_many
from feature_store.windows import DAY_MS, tile_start

__all__ = ["EXPIRE_MARGIN_MS", "MaterializeReport", "materialize"]

EXPIRE_MARGIN_MS = DAY_MS
"""Keys live their window (tiles) or ttl (latest values) plus this margin after the last write."""

_BATCH_ROWS = 65_536
_log = structlog.get_logger(__name__)

ProgressCallback = Callable[[str, int], None]
"""Called with (view name, keys written so far in this view) as chunks go out."""


@dataclass(frozen=True)
class MaterializeReport:
    """What one run wrote."""

    views: int
    keys: int
    tiles: int
    latest: int
    commands: int
    seconds: float


class _Writer:
    """Pipelined writes on one dedicated connection: commands packed and replies parsed by hiredis.

    Chunks of `chunk` commands go out in one write; a chunk's replies are
    read only when the next chunk is packed, so Redis executes one while we
    pack the next. redis-py's pipeline (and its per-reply `read_response`)
    costs several times what the wire does per command, so bulk writes
    connect with the client's own settings (host/port or unix path, user,
    password, db, TLS) and speak RESP directly. Any error reply fails the run.
    """

    def __init__(self, redis: aioredis.Redis, chunk: int) -> None:
        self._settings = dict(redis.connection_pool.connection_kwargs)
        self._tls = issubclass(redis.connection_pool.connection_class, SSLConnection)
        self._chunk = chunk
        self._buffer: list[bytes] = []
        self._unread = 0
        self._parser = hiredis.Reader()
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.commands = 0

    def add(self, *args: Any) -> bool:
        """Queue one command; True when a chunk is full (then `await flush()`)."""
        self._buffer.append(hiredis.pack_command(args))
        return len(self._buffer) >= self._chunk

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        options = self._settings
        if "path" in options:
            streams = await asyncio.open_unix_connection(options["path"])
        else:
            context = ssl.create_default_context(cafile=options.get("ssl_ca_certs")) if self._tls else None
            streams = await asyncio.open_connection(options.get("host", "localhost"), options.get("port", 6379),
                                                    ssl=context)
        self._streams = streams
        hello: list[tuple[Any, ...]] = []
        if options.get("password"):
            hello.append(("AUTH", *([options["username"]] if options.get("username") else []), options["password"]))
        hello.append(("SELECT", int(options.get("db") or 0)))
        self._buffer[:0] = [hiredis.pack_command(command) for command in hello]
        return streams

    async def flush(self) -> None:
        reader, writer = self._streams or await self._open()
        await self._read_replies(reader)
        if self._buffer:
            writer.write(b"".join(self._buffer))
            await writer.drain()
            self._unread, self.commands = len(self._buffer), self.commands + len(self._buffer)
            self._buffer = []

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        while self._unread:
            reply = self._parser.gets()
            if reply is False:
                data = await reader.read(1 << 20)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                self._parser.feed(data)
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise ResponseError(str(reply))
            self._unread -= 1

    async def close(self) -> None:
        """Send what is queued and read every reply."""
        if self._buffer or self._unread:
            await self.flush()
            if self._streams is not None:
                await self._read_replies(self._streams[0])

    async def disconnect(self) -> None:
        """Drop the connection (after `close`, or after an error with replies unread)."""
        if self._streams is not None:
            self._streams[1].close()
            with contextlib.suppress(OSError):
                await self._streams[1].wait_closed()
            self._streams = None


def _key_maker(keys: KeyLayout, view: FeatureView, hop_ms: int | None) -> Callable[[int, Any], str]:
    """Fast `keys.state_key(view, p, entity, hop)`: the layout is built once per partition, then filled in."""
    marker = "\x00"
    parts = [keys.state_key(view, p, marker, hop_ms).split(marker) for p in range(view.source.partitions)]
    return lambda p, entity: f"{parts[p][0]}{entity}{parts[p][1]}"


def _partitions(view: FeatureView) -> Callable[[Any, Any], int]:
    """Partition of a state row: the log's, else `partition_for(entity)` (cached per entity)."""
    count = view.source.partitions
    cache: dict[Any, int] = {}

    def of(partition: Any, entity: Any) -> int:
        if partition is not None:
            return int(partition)
        if count == 1:
            return 0
        p = cache.get(entity)
        if p is None:
            p = cache[entity] = partition_for(entity, count)
        return p

    return of


def _served(ignore_ingest_time: bool, end_ms: int) -> str:
    return "" if ignore_ingest_time else f" AND __avail <= {end_ms}"


def _batches(con: duckdb.DuckDBPyConnection, sql: str) -> Iterator[dict[str, list[Any]]]:
    reader = con.sql(sql).to_arrow_reader(_BATCH_ROWS)
    for batch in reader:
        yield {name: batch.column(i).to_pylist() for i, name in enumerate(batch.schema.names)}


async def _latest(con: duckdb.DuckDBPyConnection, events: str, view: FeatureView, keys: KeyLayout,
                  writer: _Writer, end_ms: int, ignore_ingest_time: bool, progress: ProgressCallback | None) -> int:
    key = order_key(con, events)
    order = key.sql if key is not None else STRUCT_ORDER
    fields = [f'"{f}"' for f in view.fields]
    best = f"arg_max(struct_pack(__t := __event_time, __k := __tie, __q := __seq, {', '.join(fields)}), {order})"
    sql = (f"SELECT __entity, __partition, unnest(__best) FROM (SELECT __entity, __partition, {best} AS __best "
           f"FROM ({events}) WHERE __event_time <= {end_ms}{_served(ignore_ingest_time, end_ms)} "
           f"GROUP BY __entity, __partition)")
    key_of = _key_maker(keys, view, None)
    partition_of = _partitions(view)
    expire = [] if view.ttl_ms is None else ["PX", view.ttl_ms + EXPIRE_MARGIN_MS]
    written = 0
    for cols in _batches(con, sql):
        values = list(zip(*(cols[f] for f in view.fields), strict=True))
        for entity, part, t, k, q, vals in zip(cols["__entity"], cols["__partition"], cols["__t"], cols["__k"],
                                               cols["__q"], values, strict=True):
            if writer.add("SET", key_of(partition_of(part, entity), entity), pack_latest(t, k, q, vals), *expire):
                await writer.flush()
        written += len(values)
        if progress is not None:
            progress(view.name, written)
    return written


async def _tiles(con: duckdb.DuckDBPyConnection, events: str, view: FeatureView, layout: TileLayout,
                 keys: KeyLayout, writer: _Writer, start_ms: int, end_ms: int, ignore_ingest_time: bool,
                 progress: ProgressCallback | None) -> tuple[int, int]:
    hop = layout.hop_ms
    lower = tile_start(start_ms - layout.max_window_ms, hop)
    tile = f"(__event_time - (((__event_time % {hop}) + {hop}) % {hop}))"  # windows.tile_start
    stats = stat_sql(layout)
    sql = (f"SELECT __entity, __partition, {tile} AS __tile, {', '.join(stats)} FROM ({events}) "
           f"WHERE __event_time >= {lower} AND __event_time <= {end_ms}{_served(ignore_ingest_time, end_ms)} "
           f"GROUP BY ALL ORDER BY __partition, __entity, __tile")
    key_of = _key_maker(keys, view, hop)
    partition_of = _partitions(view)
    expire = layout.max_window_ms + hop + EXPIRE_MARGIN_MS
    threads = con.execute("SELECT current_setting('threads')").fetchall()[0]
    con.execute("SET threads = 1")  # float sums in one fixed order: a re-run writes identical bytes
    labels = [s.label for s in layout.stats]
    tiles = keys_written = 0
    current: tuple[Any, Any] | None = None  # (entity, partition) of the key being filled
    mapping: list[Any] = []  # its HSET field/value pairs so far (a key may span record batches)

    async def emit() -> None:
        nonlocal keys_written
        if current is not None and mapping:
            key = key_of(partition_of(current[1], current[0]), current[0])
            writer.add("HSET", key, *mapping)
            keys_written += 1
            if writer.add("PEXPIRE", key, expire):
                await writer.flush()

    try:
        for cols in _batches(con, sql):
            packed = pack_stats_many(zip(*(cols[label] for label in labels), strict=True))
            entities, parts, starts = cols["__entity"], cols["__partition"], cols["__tile"]
            size, i = len(starts), 0
            while i < size:  # rows come sorted by (partition, entity, tile): one run per key
                entity, part = entities[i], parts[i]
                j = i + 1
                while j < size and entities[j] == entity and parts[j] == part:
                    j += 1
                if current != (entity, part):
                    await emit()
                    current, mapping = (entity, part), []
                run: list[Any] = [None] * (2 * (j - i))
                run[0::2], run[1::2] = starts[i:j], packed[i:j]
                mapping += run
                i = j
            tiles += size
            if progress is not None:
                progress(view.name, keys_written)
    finally:
        con.execute(f"SET threads = {int(threads[0]) if threads else 1}")
    await emit()
    return keys_written, tiles


async def materialize(redis: aioredis.Redis, keys: KeyLayout, data_dir: Path, views: Sequence[FeatureView],
                      start_ms: int, end_ms: int, *, ignore_ingest_time: bool = False,
                      con: duckdb.DuckDBPyConnection | None = None, chunk: int = 10_000,
                      progress: ProgressCallback | None = None) -> MaterializeReport:
    """Write the online state at `end_ms` of `views` (online ones) for tiles/rows in range; see the module doc."""
    if end_ms < start_ms:
        raise OfflineStoreError(f"materialize: end {end_ms} is before start {start_ms}; swap them")
    began = time.perf_counter()
    own = con is None
    con = con or connect(data_dir)
    writer = _Writer(redis, chunk)
    total_keys = total_tiles = total_latest = done = 0
    try:
        for view in views:
            if not view.online:
                continue
            events = view_events_sql(con, data_dir, view)
            if view.is_windowed:
                for layout in tile_layouts(view):
                    written, tiles = await _tiles(con, events, view, layout, keys, writer, start_ms, end_ms,
                                                  ignore_ingest_time, progress)
                    total_keys += written
                    total_tiles += tiles
            else:
                written = await _latest(con, events, view, keys, writer, end_ms, ignore_ingest_time, progress)
                total_keys += written
                total_latest += written
            done += 1
        await writer.close()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise OnlineStoreUnavailable(f"materialize: Redis is unreachable ({type(exc).__name__}); retry") from None
    except ResponseError as exc:
        raise OnlineStoreUnavailable(f"materialize: Redis refused a write ({exc}); check the key prefix "
                                     f"(FEATURESTREAM_ONLINE_PREFIX) is not used by other data") from None
    except duckdb.Error as exc:
        raise OfflineStoreError(f"materialize: offline query failed: {str(exc).splitlines()[0]}") from exc
    finally:
        await writer.disconnect()
        if own:
            con.close()
    report = MaterializeReport(views=done, keys=total_keys, tiles=total_tiles, latest=total_latest,
                               commands=writer.commands, seconds=time.perf_counter() - began)
    _log.info("materialized", views=report.views, keys=report.keys, tiles=report.tiles, latest=report.latest,
              seconds=round(report.seconds, 3))
    return report
