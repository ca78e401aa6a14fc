"""Materialization: compute the online state of a time range from the offline store and SET it in Redis.

`materialize(start_ms, end_ms)` writes, per online view, exactly the state
the stream path would hold at `end_ms` for the same applied events ("as
served": events with `event_time <= end` and `ingest_time <= end`), in the
same key layout and codec (`feature_store.online`):

- windowed views: per entity, partition and hop a tile hash with every tile
  `tile_start -> pack_stats(stats)` for tiles overlapping
  `[start - max_window, end]`, written by `set_tiles.lua` (up to 100 keys of
  one partition per call) with fresh reader-cache markers (`~m`, `~t`, as
  the stream worker's script keeps them) and a PEXPIRE, atomically per key:
  serving readers cache the rewritten hash at once rather than reading it
  whole until the stream next writes it (a 100-entity read costs ~5x the CPU
  uncached). Stats come from `stat_sql`, grouped by
  entity, partition (the log's Kafka partition, or `partition_for(entity)`
  for batch sources) and tile start.
- latest-value views: per entity and partition one SET of
  `pack_latest(event_time, tie, seq, values)` of the newest applied row with
  `event_time <= end`, found in two passes: the newest row's `__seq` per
  group (a primitive arg_max: DuckDB's arg_max over a struct of all fields
  cost ~4x more), then those rows' values (`__seq` identifies a row: the log
  holds no duplicates, batch rows are numbered per file).

Writes overwrite (tile fields, SET), so running it twice changes nothing
but the `~m` versions - bit for bit: tile queries run on one DuckDB thread
each (the layouts of a run concurrently, one query per thread), because a
parallel sum adds floats in a different order each run (last-bit
differences in `s`, `m2`). Each key gets a PEXPIRE of its window (or ttl)
plus `EXPIRE_MARGIN_MS`.

Values and whole RESP commands are built a column at a time
(`feature_store._columnar`: the same msgpack bytes as `online.codec`) in
worker threads, one record batch ahead of the writer, which sends them on
one connection in chunks of `chunk` commands while Redis answers the last.
Offsets (`KeyLayout.offset_key`) are never touched: a stream worker later
replaying events already materialized would count them again, so backfill
ranges the stream path has not applied, or restart the worker from `end`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import ssl
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import hiredis
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis.asyncio as aioredis
import structlog
from redis.asyncio.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from feature_store._columnar import bulk, concat, constant, hash_fields, key_text, msgpack_rows, partitions, text
from feature_store.aggregates import TileLayout, stat_sql, tile_layouts
from feature_store.definitions import FeatureView
from feature_store.errors import OfflineStoreError, OnlineStoreUnavailable
from feature_store.offline.engine import connect
from feature_store.offline.events import STRUCT_ORDER, order_key, view_events_sql
from feature_store.online import KeyLayout
from feature_store.online.client import UNREACHABLE, OnlineClient
from feature_store.online.keys import hash_tag
from feature_store.windows import DAY_MS, tile_start, tile_start_sql

__all__ = ["EXPIRE_MARGIN_MS", "SET_TILES_LUA", "MaterializeReport", "materialize"]

EXPIRE_MARGIN_MS = DAY_MS
"""Keys live their window (tiles) or ttl (latest values) plus this margin after the last write."""

SET_TILES_LUA = resources.files("feature_store.online").joinpath("set_tiles.lua").read_text()
_SET_TILES_SHA = hashlib.sha1(SET_TILES_LUA.encode()).hexdigest()

_BATCH_ROWS = 262_144
_SLICES = 4
"""Tile queries per layout, by entity hash: a slice's keys go to Redis while DuckDB computes the next."""
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


@dataclass(frozen=True)
class _Block:
    """Encoded RESP commands writing `keys` keys: command i is data[offsets[i]:offsets[i + 1]].

    Command i writes keys of partition partitions[i] of `source` only (its hash tag: where they live on a
    Redis Cluster).
    """

    view: str
    data: memoryview
    offsets: np.ndarray
    keys: int
    tiles: int
    source: str
    partitions: np.ndarray

    @property
    def commands(self) -> int:
        return len(self.offsets) - 1


def _block(view: FeatureView, commands: pa.Array, partitions: np.ndarray, keys: int, tiles: int = 0) -> _Block:
    """Wrap a large_binary column holding one command per row (keys of partition `partitions[row]`)."""
    _, offsets, data = commands.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int64)[commands.offset:commands.offset + len(commands) + 1]
    return _Block(view.name, memoryview(data if data is not None else b""), bounds, keys, tiles,
                  view.source.name, partitions)


class _Writer:
    """Pipelined writes of pre-encoded commands on one dedicated connection.

    Bulk writes connect with the client's own settings (host/port or unix
    path, user, password, db, TLS) and speak RESP directly: redis-py's
    pipeline costs several times what the wire does per command. At most
    two chunks are unanswered, so Redis always has the next one queued.
    Every command sent replies on one line (+OK, :n or -ERR), so replies
    are counted, not parsed; any error reply fails the run. (The one
    exception, SCRIPT LOAD of `set_tiles.lua` on connecting, answers a bulk
    string: two lines, counted as such.)
    """

    def __init__(self, settings: dict[str, Any], connection_class: type, chunk: int) -> None:
        self._settings = settings
        self._tls = issubclass(connection_class, SSLConnection)
        self._chunk = max(chunk, 1)
        self._unread = 0
        self._partial = b""
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.commands = 0

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
        hello.append(("SCRIPT", "LOAD", SET_TILES_LUA))  # on this node, for the tile keys' EVALSHA
        streams[1].write(b"".join(hiredis.pack_command(command) for command in hello))
        self._unread += len(hello) + 1  # SCRIPT LOAD: `$40` and the sha
        return streams

    async def send(self, block: _Block) -> None:
        """Write a block's commands in chunks of `chunk` commands."""
        reader, writer = self._streams or await self._open()
        for first in range(0, block.commands, self._chunk):
            last = min(first + self._chunk, block.commands)
            writer.write(block.data[block.offsets[first]:block.offsets[last]])
            sent = last - first
            self._unread += sent
            self.commands += sent
            await writer.drain()
            await self._read_replies(reader, self._chunk)

    async def _read_replies(self, reader: asyncio.StreamReader, leave: int = 0) -> None:
        """Read replies until at most `leave` are outstanding."""
        while self._unread > leave:
            data = await reader.read(1 << 20)
            if not data:
                raise RedisConnectionError("Redis closed the connection")
            data = self._partial + data
            end = data.rfind(b"\r\n") + 2 if b"\r\n" in data else 0
            complete, self._partial = data[:end], data[end:]
            error = 0 if complete.startswith(b"-") else complete.find(b"\n-") + 1  # 0: none, unless first
            if error or complete.startswith(b"-"):
                raise ResponseError(complete[error + 1:].split(b"\r\n", 1)[0].decode(errors="replace"))
            self._unread -= complete.count(b"\r\n")

    async def wait_replies(self) -> None:
        """Read every outstanding reply (the connection stays open)."""
        if self._streams is not None:
            await self._read_replies(self._streams[0])

    async def disconnect(self) -> None:
        """Drop the connection (after `wait_replies`, or after an error with replies unread)."""
        if self._streams is not None:
            self._streams[1].close()
            with contextlib.suppress(OSError):
                await self._streams[1].wait_closed()
            self._streams = None
        self._unread, self._partial = 0, b""


_RESHARD_RETRIES = 20
"""Sends of one block while its slots keep moving (ASK: a migration is under way) before the run fails."""


class _ClusterWriter:
    """A `_Writer` per node of a Redis Cluster: each key's commands go to the node owning its hash tag's slot.

    Keys come sorted by partition (one hash tag each), so a block splits into
    a few runs of consecutive keys, each copied once into its node's share.
    Every reply of a block is read before the next block goes out, so a slot
    that moved (MOVED, or ASK while it migrates) is heard of with the block
    that hit it: the slot map is read again and the whole block sent again
    (its commands set whole keys: sending them twice writes the same).
    """

    def __init__(self, cluster: aioredis.RedisCluster, chunk: int) -> None:
        self._cluster = cluster
        self._chunk = chunk
        self._writers: dict[str, _Writer] = {}

    @property
    def commands(self) -> int:
        return sum(w.commands for w in self._writers.values())

    async def send(self, block: _Block) -> None:
        for attempt in range(_RESHARD_RETRIES):
            try:
                await self._send_once(block)
                return
            except ResponseError as exc:
                if not str(exc).startswith(("MOVED ", "ASK ")) or attempt == _RESHARD_RETRIES - 1:
                    raise
                await self.disconnect()  # replies of the block may be left unread
                await asyncio.sleep(0.05 * attempt)  # ASK: let the migration finish
                await self._cluster.nodes_manager.initialize()

    async def _send_once(self, block: _Block) -> None:
        await self._cluster.initialize()  # the slot map, read on first use
        by_node: dict[str, tuple[Any, list[tuple[int, int]]]] = {}
        change = np.flatnonzero(np.diff(block.partitions)) + 1
        for first, last in zip(np.append(0, change), np.append(change, block.commands), strict=True):
            tag = hash_tag(block.source, int(block.partitions[first]))
            node = self._cluster.get_node_from_key(tag)
            if node is None:
                raise RedisConnectionError(f"no Redis Cluster node serves the slot of {tag}")
            by_node.setdefault(node.name, (node, []))[1].append((int(first), int(last)))
        for name, (node, runs) in by_node.items():
            writer = self._writers.get(name)
            if writer is None:
                writer = self._writers[name] = _Writer(dict(node.connection_kwargs), node.connection_class,
                                                       self._chunk)
            data = b"".join(block.data[block.offsets[a]:block.offsets[b]] for a, b in runs)
            sizes = np.concatenate([np.diff(block.offsets[a:b + 1]) for a, b in runs])
            await writer.send(dataclasses.replace(block, data=memoryview(data),
                                                  offsets=np.concatenate([[0], np.cumsum(sizes)])))
        for name in by_node:
            await self._writers[name].wait_replies()

    async def wait_replies(self) -> None:
        for writer in self._writers.values():
            await writer.wait_replies()

    async def disconnect(self) -> None:
        for writer in self._writers.values():
            await writer.disconnect()


def _writer(redis: OnlineClient, chunk: int) -> _Writer | _ClusterWriter:
    if isinstance(redis, aioredis.RedisCluster):
        return _ClusterWriter(redis, chunk)
    pool = redis.connection_pool
    return _Writer(dict(pool.connection_kwargs), pool.connection_class, chunk)


def _key_parts(keys: KeyLayout, view: FeatureView, hop_ms: int | None) -> tuple[pa.Array, pa.Array]:
    """Per partition, the key text before and after the entity (`keys.state_key` is the one layout)."""
    marker = "\x00"
    parts = [keys.state_key(view, p, marker, hop_ms).split(marker) for p in range(view.source.partitions)]
    return pa.array([p[0].encode() for p in parts], pa.large_binary()), \
        pa.array([p[1].encode() for p in parts], pa.large_binary())


def _state_keys(view: FeatureView, parts: tuple[pa.Array, pa.Array], entity: pa.Array,
                partition: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Keys of state rows and their partitions: the log's partition, else `partition_for(entity)` (batch rows
    carry none)."""
    if partition.null_count == len(partition):
        index = pa.array(partitions(entity, view.source.partitions))
    elif partition.null_count:
        index = pc.coalesce(partition.cast(pa.int64()), pa.array(partitions(entity, view.source.partitions)))
    else:
        index = partition.cast(pa.int64())
    return concat(parts[0].take(index), key_text(entity), parts[1].take(index)), \
        np.asarray(index.to_numpy(zero_copy_only=False))


def _segments(rows: pa.Array, starts: np.ndarray) -> pa.Array:
    """Rows starts[i]..starts[i + 1] (the last run: to the end) joined, without a copy: a view with fewer offsets."""
    _, offsets, data = rows.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int64)[rows.offset:rows.offset + len(rows) + 1]
    return pa.Array.from_buffers(pa.large_binary(), len(starts), [None, pa.py_buffer(np.append(bounds[starts],
                                                                                             bounds[-1])), data])


def _served(ignore_ingest_time: bool, end_ms: int) -> str:
    return "" if ignore_ingest_time else f" AND __avail <= {end_ms}"


def _command(*words: str) -> bytes:
    """Constant words of a command as RESP bulk strings."""
    return b"".join(b"$%d\r\n%s\r\n" % (len(w), w.encode()) for w in words)


def _latest_blocks(con: duckdb.DuckDBPyConnection, events: str, view: FeatureView, keys: KeyLayout,
                   end_ms: int, ignore_ingest_time: bool) -> Iterator[_Block]:
    key = order_key(con, events)
    order = key.sql if key is not None else STRUCT_ORDER
    fields = ", ".join(f'"{f}"' for f in view.fields)
    sql = (f"SELECT __entity, __partition, __event_time, __tie, __seq, {fields} FROM ({events}) "
           f"WHERE __seq IN (SELECT arg_max(__seq, {order}) FROM ({events}) WHERE __event_time <= {end_ms}"
           f"{_served(ignore_ingest_time, end_ms)} GROUP BY __entity, __partition)")
    parts = _key_parts(keys, view, None)
    expire = b"" if view.ttl_ms is None else _command("PX", str(view.ttl_ms + EXPIRE_MARGIN_MS))
    head = constant((b"*5\r\n" if expire else b"*3\r\n") + _command("SET"))
    for batch in con.sql(sql).to_arrow_reader(_BATCH_ROWS):
        if not batch.num_rows:
            continue
        cols = batch.columns
        state_keys, index = _state_keys(view, parts, cols[0], cols[1])
        values = msgpack_rows(cols[2:])
        yield _block(view, concat(head, bulk(state_keys), bulk(values), constant(expire)), index, batch.num_rows)


def _whole_keys(batches: Iterable[pa.RecordBatch]) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """Tables of whole keys from rows sorted by (partition, entity), with the first row of each key.

    A batch's last key is held back: the next batch may hold more of its rows.
    """
    carry: pa.Table | None = None
    for batch in batches:
        table = pa.Table.from_batches([batch])
        table = table if carry is None else pa.concat_tables([carry, table]).combine_chunks()
        if not table.num_rows:
            continue
        entity, partition = table.column(0), table.column(1).fill_null(-1)
        change = np.ones(table.num_rows, dtype=bool)
        change[1:] = pc.or_(pc.not_equal(entity[1:], entity[:-1]),
                            pc.not_equal(partition[1:], partition[:-1])).to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(change)
        carry = table.slice(starts[-1])
        if len(starts) > 1:
            yield table.slice(0, starts[-1]), starts[:-1]
    if carry is not None:
        yield carry, np.zeros(1, dtype=np.int64)


def _tile_rows(con: duckdb.DuckDBPyConnection, data_dir: Path, view: FeatureView, start_ms: int, end_ms: int,
               ignore_ingest_time: bool) -> str:
    """Copy the rows any tile layout of `view` aggregates into a table (one scan for all layouts); its name.

    A plain table, so the layouts' cursors see it; the insertion order is
    the scan's (`preserve_insertion_order`), so single-threaded queries over
    it add floats in the same order every run.
    """
    layouts = tile_layouts(view)
    lower = min(tile_start(start_ms - layout.max_window_ms, layout.hop_ms) for layout in layouts)
    stats = {s for layout in layouts for s in layout.stats}
    needed = sorted({f'"{s.column}"' for s in stats if s.column != "*"})
    if any(s.stat in ("lt", "lk", "lq", "lv") for s in stats):
        needed += ["__tie", "__seq"]
    table = f"__materialize_{uuid.uuid4().hex}"
    con.execute(f"CREATE TABLE {table} AS SELECT __entity, __partition, {', '.join(['__event_time', *needed])} "
                f"FROM ({view_events_sql(con, data_dir, view)}) WHERE __event_time >= {lower} "
                f"AND __event_time <= {end_ms}{_served(ignore_ingest_time, end_ms)}")
    return table


def _tile_blocks(con: duckdb.DuckDBPyConnection, rows: str, view: FeatureView, layout: TileLayout,
                 keys: KeyLayout, start_ms: int) -> Iterator[_Block]:
    """`set_tiles.lua` calls (keys grouped by `_groups`), from `_tile_rows`, in `_SLICES` queries by entity hash."""
    hop = layout.hop_ms
    lower = tile_start(start_ms - layout.max_window_ms, hop)
    tile = tile_start_sql("__event_time", hop)
    for part in range(_SLICES):
        sql = (f"SELECT __entity, __partition, {tile} AS __tile, {', '.join(stat_sql(layout))} FROM {rows} "
               f"WHERE __event_time >= {lower} AND hash(__entity) % {_SLICES} = {part} "
               f"GROUP BY ALL ORDER BY __partition, __entity, __tile")
        yield from _tile_commands(con.sql(sql).to_arrow_reader(_BATCH_ROWS), view, layout, keys)


def _tile_commands(batches: Iterable[pa.RecordBatch], view: FeatureView, layout: TileLayout, keys: KeyLayout
                   ) -> Iterator[_Block]:
    hop = layout.hop_ms
    parts = _key_parts(keys, view, hop)
    expire = constant(_command(str(layout.max_window_ms + hop + EXPIRE_MARGIN_MS)))
    evalsha = constant(b"\r\n" + _command("EVALSHA", _SET_TILES_SHA))
    for table, starts in _whole_keys(batches):
        size = table.num_rows
        entity, partition = table.column(0).combine_chunks(), table.column(1).combine_chunks()
        ends = np.append(starts[1:], size)
        state_keys, index = _state_keys(view, parts, entity.take(starts), partition.take(starts))
        tiles = ends - starts
        newest = table.column(2).combine_chunks().take(ends - 1)  # rows come by tile within a key
        per_key = concat(bulk(text(pa.array(tiles))), bulk(text(newest)), expire,
                         _segments(hash_fields(table.column(2), table.columns[3:]), starts))
        state_keys = bulk(state_keys)
        if np.any(np.diff(index) < 0):  # batch rows come by entity: a call takes keys of one partition
            order = np.argsort(index, kind="stable")
            index, tiles, state_keys, per_key = index[order], tiles[order], state_keys.take(order), per_key.take(order)
        groups = _groups(index, tiles)
        keys_in = np.diff(np.append(groups, len(starts)))
        words = 3 + 4 * keys_in + 2 * np.add.reduceat(tiles, groups)  # EVALSHA sha numkeys, keys, per key 3 + 2n
        heads = concat(constant(b"*"), text(pa.array(words)), evalsha, bulk(text(pa.array(keys_in))))
        calls = concat(heads, _segments(state_keys, groups), _segments(per_key, groups))
        yield _block(view, calls, index[groups], len(starts), tiles=size)


_GROUP_KEYS = 100
_GROUP_TILES = 2_000
"""Keys per `set_tiles.lua` call at most, and tiles once reached: fewer calls cost Redis less (a call costs
about what writing four small keys does), and a call blocks Redis ~1 ms at most."""


def _groups(partitions: np.ndarray, tiles: np.ndarray) -> np.ndarray:
    """First key of each `set_tiles.lua` call: runs of keys of one partition (one slot), cut by size."""
    firsts: list[int] = []
    count = fields = 0
    previous = -1
    for i, (partition, n) in enumerate(zip(partitions.tolist(), tiles.tolist(), strict=True)):
        if partition != previous or count == _GROUP_KEYS or fields >= _GROUP_TILES:
            firsts.append(i)
            count = fields = 0
            previous = partition
        count += 1
        fields += n
    return np.array(firsts, dtype=np.int64)


async def _send_all(producers: list[Iterator[_Block]], writer: _Writer | _ClusterWriter,
                    progress: ProgressCallback | None) -> tuple[int, int]:
    """Write what the producers yield, each running one block ahead in its own worker thread."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[_Block | None] = asyncio.Queue(maxsize=2 * len(producers))

    in_flight: set[asyncio.Future[_Block | None]] = set()

    async def produce(blocks: Iterator[_Block]) -> None:
        try:
            while True:
                in_flight.add(step := loop.run_in_executor(None, next, blocks, None))
                block = await asyncio.shield(step)  # cancelling the task must not orphan the thread's query
                in_flight.discard(step)
                if block is None:
                    break
                await queue.put(block)
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(produce(p)) for p in producers]
    keys = tiles = 0
    written: dict[str, int] = {}
    try:
        running = len(tasks)
        while running:
            block = await queue.get()
            if block is None:
                running -= 1
                continue
            await writer.send(block)
            keys, tiles = keys + block.keys, tiles + block.tiles
            written[block.view] = written.get(block.view, 0) + block.keys
            if progress is not None:
                progress(block.view, written[block.view])
        for task in tasks:
            await task  # a producer's error
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for step in list(in_flight):  # a worker thread still in a query: let it finish before the cursor closes
            with contextlib.suppress(BaseException):
                await step
    return keys, tiles


async def materialize(redis: OnlineClient, keys: KeyLayout, data_dir: Path, views: Sequence[FeatureView],
                      start_ms: int, end_ms: int, *, ignore_ingest_time: bool = False,
                      con: duckdb.DuckDBPyConnection | None = None, chunk: int = 10_000,
                      progress: ProgressCallback | None = None) -> MaterializeReport:
    """Write the online state at `end_ms` of `views` (online ones) for tiles/rows in range; see the module doc."""
    if end_ms < start_ms:
        raise OfflineStoreError(f"materialize: end {end_ms} is before start {start_ms}; swap them")
    began = time.perf_counter()
    own = con is None
    con = con or connect(data_dir)
    writer = _writer(redis, chunk)
    online = [view for view in views if view.online]
    total_keys = total_tiles = total_latest = 0
    cursors: list[duckdb.DuckDBPyConnection] = []
    tables: list[str] = []
    try:
        for view in online:
            if not view.is_windowed:
                events = view_events_sql(con, data_dir, view)
                written, _ = await _send_all([_latest_blocks(con, events, view, keys, end_ms, ignore_ingest_time)],
                                             writer, progress)
                total_keys += written
                total_latest += written
        windowed = [view for view in online if view.is_windowed]
        for view in windowed:
            tables.append(await asyncio.to_thread(_tile_rows, con, data_dir, view, start_ms, end_ms,
                                                  ignore_ingest_time))
        if windowed:
            threads = con.execute("SELECT current_setting('threads')").fetchall()[0]
            con.execute("SET threads = 1")  # float sums in one fixed order: a re-run writes identical bytes
            try:
                producers = []
                for view, table in zip(windowed, tables, strict=True):
                    for layout in tile_layouts(view):
                        cursors.append(cursor := con.cursor())
                        producers.append(_tile_blocks(cursor, table, view, layout, keys, start_ms))
                tile_keys, total_tiles = await _send_all(producers, writer, progress)
                total_keys += tile_keys
            finally:
                con.execute(f"SET threads = {int(threads[0]) if threads else 1}")
        await writer.wait_replies()
    except UNREACHABLE as exc:
        raise OnlineStoreUnavailable(f"materialize: Redis is unreachable ({type(exc).__name__}); retry") from None
    except ResponseError as exc:
        raise OnlineStoreUnavailable(f"materialize: Redis refused a write ({exc}); check the key prefix "
                                     f"(FEATURESTREAM_ONLINE_PREFIX) is not used by other data") from None
    except duckdb.Error as exc:
        raise OfflineStoreError(f"materialize: offline query failed: {str(exc).splitlines()[0]}") from exc
    finally:
        await writer.disconnect()
        for cursor in cursors:
            cursor.close()
        for table in tables:
            con.execute(f"DROP TABLE IF EXISTS {table}")
        if own:
            con.close()
    report = MaterializeReport(views=len(online), keys=total_keys, tiles=total_tiles, latest=total_latest,
                               commands=writer.commands, seconds=time.perf_counter() - began)
    _log.info("materialized", views=report.views, keys=report.keys, tiles=report.tiles, latest=report.latest,
              seconds=round(report.seconds, 3))
    return report
