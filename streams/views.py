"""Turn a micro-batch of applied events into online writes, with the batch path's SQL.

For each online view of a source, DuckDB runs `transformed_sql` over the
batch and then `stat_sql` grouped by partition, entity and tile start (the
same stats the batch path computes over the log), or the argmax row per
partition and entity for latest-value views. The result is one
`PartitionBatch` per partition for `OnlineWriter.apply`.

Per batch, a DuckDB query costs 1-2 ms however few rows it reads, so the
queries are few: one pass covers every partition of a fetch, and a view with
several tile layouts (e.g. 5 min tiles for its 1 h windows, 1 h tiles for its
7 d ones) runs one query at their `covering_layout` (the gcd of the hops, all
the stats), whose tiles `_rolled_up` merges into each layout's with
`aggregates.merge`, the rule the Redis script applies across batches anyway.
That cut the card-fraud source's DuckDB time per batch by a third (5 queries
-> 3: 11.4 -> 7.7 ms for a 400-event batch). The queries are prepared once per
connection (parsing each again cost ~0.15 ms). Larger queries save nothing
(all views of a source in one UNION ALL, GROUPING SETS, the transform in a
materialized CTE): the cost follows the aggregates DuckDB binds, optimizes and
runs, not the number of statements.
"""

from __future__ import annotations

import itertools
import operator
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from feature_store.aggregates import TileLayout, covering_layout, merge, stat_sql, tile_layouts
from feature_store.definitions import FeatureView, StreamSource
from feature_store.online.codec import pack_latest, pack_stats_many
from feature_store.online.keys import KeyLayout
from feature_store.online.writer import PartitionBatch
from feature_store.transforms import transformed_sql
from feature_store.windows import tile_start, tile_start_sql

__all__ = ["RELATION", "SourcePlan", "TransformFailed", "batch_connection"]

RELATION = "__batch"
"""Name the micro-batch has in DuckDB: schema columns plus __event_time, __tie, __seq, __partition."""

TTL_MARGIN_MS = 60_000
"""Keys live this much longer than the longest read reaching them."""

_REFRESH_CACHE = 1_000_000
"""Keys whose last TTL refresh this worker remembers (forgotten all at once beyond that: one extra refresh each)."""


_KEPT_OPTIMIZERS = frozenset({"unused_columns", "filter_pushdown"})
"""The DuckDB optimizer passes `batch_connection` runs; see there."""

_STATEMENT_IDS = itertools.count()
"""Makes prepared statement names unique per plan (several plans share a connection)."""


_BY_PARTITION_ENTITY_TILE = operator.itemgetter(0, 1, 2)


def batch_connection() -> duckdb.DuckDBPyConnection:
    """The DuckDB connection a worker computes its micro-batches on.

    One thread: batches are small, and the other core is Redis's (running the
    scripts of the previous fetch); DuckDB's pool cost ~5% more CPU per event
    here and only helps when a core is idle.

    Two optimizer passes of ~45. Each pass costs a few microseconds per query
    whatever the rows: ~1 ms in all for the card-fraud source's three queries
    (`writes_many` over 400 events: 9.0 -> 8.0 ms; 100: 6.1 -> 5.0 ms; 20,000:
    51.1 -> 49.8 ms). These plans (scan, filter, projections, one aggregate)
    gain nothing from the others. Kept: column pruning (the scan reads only the
    columns used) and filter pushdown, which runs a view's entity filter before
    its transform as the batch path's full optimizer does, so a row without an
    entity is never transformed (a transform failing on it would dead-letter an
    event the batch path keeps).
    """
    con = duckdb.connect(":memory:")
    con.execute("SET threads=1")
    passes = [name for (name,) in con.execute("SELECT name FROM duckdb_optimizers()").fetchall()]
    con.execute(f"SET disabled_optimizers = '{','.join(p for p in passes if p not in _KEPT_OPTIMIZERS)}'")
    return con


class TransformFailed(Exception):  # internal signal, never escapes the worker
    """DuckDB refused a view's SQL on the batch (some row breaks a transform)."""


@dataclass(frozen=True)
class _Target:
    """Where one query's rows go: the tiles of one layout, or a latest-value view's keys."""

    view: FeatureView
    layout: TileLayout | None  # None: latest-value view
    layout_index: int
    pexpire_ms: int  # 0: no expiry
    keep_ms: int  # tiles older than a pruning tile minus this are unreachable
    period_ms: int  # creating a tile at a multiple of this prunes (about 4 times per keep)
    refresh_ms: int  # how often a written key's TTL is pushed forward
    picks: tuple[int, ...] | None = None  # the layout's stats in the query's stat vector (None: the same vector)


@dataclass(frozen=True)
class _Query:
    """One query per view: a windowed view's stats at its `covering_layout`, or the newest row per entity."""

    sql: str
    layout: TileLayout | None  # the covering layout the rows hold (None: latest rows)
    targets: tuple[int, ...]  # indexes into SourcePlan._targets


def _ttl(lifetime_ms: int) -> tuple[int, int]:
    """(pexpire, refresh interval) so a key outlives its last write by at least `lifetime_ms`.

    The TTL is refreshed at most once per interval per key (PEXPIRE is a large
    share of the script's cost); a refresh may be missed once (a fenced
    batch), hence two intervals of slack.
    """
    refresh = max(1_000, lifetime_ms // 8)
    return lifetime_ms + 2 * refresh, refresh


class SourcePlan:
    """The SQL and key rules of every online view fed by one stream source."""

    def __init__(self, source: StreamSource, views: list[FeatureView], keys: KeyLayout) -> None:
        self.source = source
        self.views = [v for v in views if v.online]
        self.keys = keys
        self.layouts: list[TileLayout] = []
        self._targets: list[_Target] = []
        self._queries: list[_Query] = []
        self._key_parts: dict[tuple[int, int], tuple[str, str]] = {}
        self._refreshed: dict[str, int] = {}  # key -> refresh bucket it was last pushed forward in
        for view in self.views:
            rows = f"({transformed_sql(RELATION, view.transform)})"
            entity = f'"{view.entity.join_key}"'
            first = len(self._targets)
            if view.is_windowed:
                layouts = tile_layouts(view)
                covering = layouts[0] if len(layouts) == 1 else covering_layout(layouts)
                hop = covering.hop_ms
                sql = (f"SELECT __partition, {entity} AS __entity, {tile_start_sql('__event_time', hop)} "
                       f"AS __tile, {', '.join(stat_sql(covering))} FROM {rows} WHERE {entity} IS NOT NULL "
                       f"GROUP BY 1, 2, 3")
                for layout in layouts:
                    # reads at t reach back window - hop from t's tile; events (hence tiles) may lead the
                    # clock by the future tolerance
                    keep = layout.max_window_ms + layout.hop_ms + source.future_tolerance_ms
                    period = max(1, keep // layout.hop_ms // 4) * layout.hop_ms
                    pexpire, refresh = _ttl(keep + TTL_MARGIN_MS)
                    picks = None if layout is covering else tuple(covering.stats.index(s) for s in layout.stats)
                    self._targets.append(_Target(view, layout, len(self.layouts), pexpire, keep, period, refresh,
                                                 picks))
                    self.layouts.append(layout)
                self._queries.append(_Query(sql, covering, tuple(range(first, len(self._targets)))))
            else:
                # the newest row per partition and entity: the max of (event_time, tie, seq, values...)
                # (seq is unique, so the order is decided before the values); a hash aggregate costs
                # about half of a window over the batch
                names = ["__event_time", "__tie", "__seq", *view.fields]
                packed = ", ".join(f'"{n}": "{n}"' for n in names)
                picked = ", ".join(f'__row."{n}"' for n in names)
                sql = (f"SELECT __partition, __entity, {picked} FROM (SELECT __partition, {entity} AS __entity, "
                       f"max({{{packed}}}) AS __row FROM {rows} WHERE {entity} IS NOT NULL GROUP BY 1, 2)")
                ttl = view.ttl_ms
                pexpire, refresh = (0, 1) if ttl is None else _ttl(ttl + TTL_MARGIN_MS)
                self._targets.append(_Target(view, None, -1, pexpire, 0, 0, refresh))
                self._queries.append(_Query(sql, None, (first,)))
        plan_id = next(_STATEMENT_IDS)
        self._names = [f"__plan{plan_id}_{i}" for i in range(len(self._queries))]
        self._executes = [f"EXECUTE {name}" for name in self._names]
        self._prepared_on: weakref.WeakSet[duckdb.DuckDBPyConnection] = weakref.WeakSet()

    def _key(self, index: int, partition: int, entity: object) -> str:
        """`KeyLayout.state_key`, with the parts around the entity computed once per view and partition."""
        before, after = self._parts(index, partition)
        return f"{before}{entity}{after}"

    def _parts(self, index: int, partition: int) -> tuple[str, str]:
        parts = self._key_parts.get((index, partition))
        if parts is None:
            item = self._targets[index]
            hop = None if item.layout is None else item.layout.hop_ms
            before, after = self.keys.state_key(item.view, partition, "\x00", hop).split("\x00")
            parts = self._key_parts[(index, partition)] = (before, after)
        return parts

    def _refresh(self, key: str, bucket: int) -> bool:
        if self._refreshed.get(key) == bucket:
            return False
        if len(self._refreshed) >= _REFRESH_CACHE:
            self._refreshed.clear()
        self._refreshed[key] = bucket
        return True

    def _tile_writes(self, index: int, item: _Target, rows: list[tuple[Any, ...]],
                     batches: Mapping[int, PartitionBatch], bucket: int) -> None:
        """One tile item per (partition, entity) run of `rows` (ordered by partition, entity, tile)."""
        packed = pack_stats_many([row[3:] for row in rows])
        layout, pexpire, keep, period = item.layout_index, item.pexpire_ms, item.keep_ms, item.period_ms
        refreshed = self._refreshed  # `_refresh`, inlined: this loop runs once per key written
        n, i = len(rows), 0
        partition: int | None = None
        batch: PartitionBatch | None = None
        before = after = ""
        while i < n:
            row = rows[i]
            if row[0] != partition:
                partition = row[0]
                batch = batches[partition]
                before, after = self._parts(index, partition)
            entity = row[1]
            fields = [str(row[2]), packed[i]]
            i += 1
            while i < n and rows[i][1] == entity and rows[i][0] == partition:
                fields.append(str(rows[i][2]))
                fields.append(packed[i])
                i += 1
            key = f"{before}{entity}{after}"
            if refreshed.get(key) == bucket:
                refresh = False
            else:
                if len(refreshed) >= _REFRESH_CACHE:
                    refreshed.clear()
                refreshed[key] = bucket
                refresh = True
            assert batch is not None
            batch.add_tile_fields(key, layout, pexpire, keep, period, refresh, fields)

    def check(self, con: duckdb.DuckDBPyConnection, table: pa.Table) -> None:
        """Raise TransformFailed if any view's SQL fails on `table` (used to find bad rows)."""
        con.register(RELATION, table)
        try:
            for query in self._queries:
                con.execute(query.sql).fetchall()
        except duckdb.Error as exc:
            raise TransformFailed(str(exc).splitlines()[0]) from None
        finally:
            con.unregister(RELATION)

    def writes(self, con: duckdb.DuckDBPyConnection, table: pa.Table, partition: int, batch: PartitionBatch,
               now_ms: int) -> None:
        """Add the tile and latest writes of `table` (applied rows of one partition) to `batch`."""
        self.writes_many(con, table, {partition: batch}, now_ms)

    def _statements(self, con: duckdb.DuckDBPyConnection) -> list[str]:
        """The EXECUTE statement of each query, prepared on `con` the first time (call with RELATION registered).

        DuckDB binds a prepared statement again when the catalog changed (as
        registering each batch does), so it reads the batch registered now.
        """
        if con not in self._prepared_on:
            for name, query in zip(self._names, self._queries, strict=True):
                con.execute(f"PREPARE {name} AS {query.sql}")
            self._prepared_on.add(con)
        return self._executes

    def writes_many(self, con: duckdb.DuckDBPyConnection, table: pa.Table, batches: Mapping[int, PartitionBatch],
                    now_ms: int) -> None:
        """Add the writes of `table` (applied rows of several partitions) to the batch of each row's partition."""
        con.register(RELATION, table)
        try:
            try:
                statements = self._statements(con)
            except duckdb.Error as exc:
                raise TransformFailed(str(exc).splitlines()[0]) from None
            for statement, query in zip(statements, self._queries, strict=True):
                try:
                    rows = con.execute(statement).fetchall()
                except duckdb.Error as exc:
                    raise TransformFailed(str(exc).splitlines()[0]) from None
                if query.layout is None:
                    (index,) = query.targets
                    item = self._targets[index]
                    bucket, pexpire = now_ms // item.refresh_ms, item.pexpire_ms
                    for partition, entity, event_time, tie, seq, *values in rows:
                        key = self._key(index, partition, entity)
                        batches[partition].add_latest(key, pexpire, pexpire > 0 and self._refresh(key, bucket),
                                                      event_time, tie, seq, pack_latest(event_time, tie, seq, values))
                    continue
                rows.sort(key=_BY_PARTITION_ENTITY_TILE)  # cheaper here than an ORDER BY in DuckDB (~0.25 ms)
                for index in query.targets:
                    item = self._targets[index]
                    tiles = rows if item.picks is None else _rolled_up(query.layout, item, rows)
                    self._tile_writes(index, item, tiles, batches, now_ms // item.refresh_ms)
        finally:
            con.unregister(RELATION)


def _rolled_up(covering: TileLayout, target: _Target, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows of `covering` tiles (sorted by partition, entity, tile) merged into the tiles of `target`'s layout.

    Within a micro-batch an entity's events mostly share a tile, so most
    output tiles come from one row, whose stats are only picked, not merged.
    """
    assert target.layout is not None
    assert target.picks is not None
    hop, picks = target.layout.hop_ms, target.picks
    pick = operator.itemgetter(*(3 + k for k in picks))  # a layout has at least 2 stats (et, and one per aggregate)
    out: list[tuple[Any, ...]] = []
    n, i = len(rows), 0
    while i < n:
        row = rows[i]
        partition, entity, tile = row[0], row[1], tile_start(row[2], hop)
        i += 1
        if i == n or rows[i][1] != entity or rows[i][0] != partition:  # the usual case: one row
            out.append((partition, entity, tile, *pick(row)))
            continue
        stats: Sequence[Any] = row[3:]
        while i < n and rows[i][1] == entity and rows[i][0] == partition and tile_start(rows[i][2], hop) == tile:
            stats = merge(covering, stats, rows[i][3:])
            i += 1
        out.append((partition, entity, tile, *[stats[k] for k in picks]))
    return out
