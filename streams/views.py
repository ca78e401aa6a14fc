"""Turn a micro-batch of applied events into online writes, with the batch path's SQL.

For each online view of a source, DuckDB runs `transformed_sql` over the
batch and then, per hop, `stat_sql` grouped by partition, entity and tile
start (the same stats the batch path computes over the log), or the argmax
row per partition and entity for latest-value views. The result is one
`PartitionBatch` per partition for `OnlineWriter.apply`.

One pass covers every partition of a fetch: a DuckDB query costs 1-2 ms
however few rows it reads, so running each view's SQL once per fetch instead
of once per partition is what keeps small batches fast. The queries are
prepared once per connection (parsing each again cost ~0.15 ms). Fewer,
larger queries were measured and save nothing (all tile layouts of a source in
one UNION ALL, GROUPING SETS per view, the transform in a materialized CTE):
the cost follows the aggregates DuckDB binds, optimizes and runs, not the
number of statements.
"""

from __future__ import annotations

import itertools
import operator
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from feature_store.aggregates import TileLayout, stat_sql, tile_layouts
from feature_store.definitions import FeatureView, StreamSource
from feature_store.online.codec import pack_latest, pack_stats_many
from feature_store.online.keys import KeyLayout
from feature_store.online.writer import PartitionBatch
from feature_store.transforms import transformed_sql

__all__ = ["RELATION", "SourcePlan", "TransformFailed"]

RELATION = "__batch"
"""Name the micro-batch has in DuckDB: schema columns plus __event_time, __tie, __seq, __partition."""

TTL_MARGIN_MS = 60_000
"""Keys live this much longer than the longest read reaching them."""

_REFRESH_CACHE = 1_000_000
"""Keys whose last TTL refresh this worker remembers (forgotten all at once beyond that: one extra refresh each)."""


_STATEMENT_IDS = itertools.count()
"""Makes prepared statement names unique per plan (several plans share a connection)."""


_BY_PARTITION_ENTITY_TILE = operator.itemgetter(0, 1, 2)


class TransformFailed(Exception):  # internal signal, never escapes the worker
    """DuckDB refused a view's SQL on the batch (some row breaks a transform)."""


@dataclass(frozen=True)
class _ViewSql:
    view: FeatureView
    layout: TileLayout | None  # None: latest-value view
    layout_index: int
    sql: str
    pexpire_ms: int  # 0: no expiry
    keep_ms: int  # tiles older than a pruning tile minus this are unreachable
    period_ms: int  # creating a tile at a multiple of this prunes (about 4 times per keep)
    refresh_ms: int  # how often a written key's TTL is pushed forward


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
        self._sql: list[_ViewSql] = []
        self._key_parts: dict[tuple[int, int], tuple[str, str]] = {}
        self._refreshed: dict[str, int] = {}  # key -> refresh bucket it was last pushed forward in
        for view in self.views:
            rows = f"({transformed_sql(RELATION, view.transform)})"
            entity = f'"{view.entity.join_key}"'
            if view.is_windowed:
                for layout in tile_layouts(view):
                    hop = layout.hop_ms
                    sql = (f"SELECT __partition, {entity} AS __entity, __event_time - __event_time % {hop} "
                           f"AS __tile, {', '.join(stat_sql(layout))} FROM {rows} WHERE {entity} IS NOT NULL "
                           f"GROUP BY 1, 2, 3")
                    # reads at t reach back window - hop from t's tile; events (hence tiles) may lead the
                    # clock by the future tolerance
                    keep = layout.max_window_ms + hop + source.future_tolerance_ms
                    period = max(1, keep // hop // 4) * hop
                    pexpire, refresh = _ttl(keep + TTL_MARGIN_MS)
                    self._sql.append(_ViewSql(view, layout, len(self.layouts), sql, pexpire, keep, period, refresh))
                    self.layouts.append(layout)
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
                self._sql.append(_ViewSql(view, None, -1, sql, pexpire, 0, 0, refresh))
        plan_id = next(_STATEMENT_IDS)
        self._names = [f"__plan{plan_id}_{i}" for i in range(len(self._sql))]
        self._executes = [f"EXECUTE {name}" for name in self._names]
        self._prepared_on: weakref.WeakSet[duckdb.DuckDBPyConnection] = weakref.WeakSet()

    def _key(self, index: int, partition: int, entity: object) -> str:
        """`KeyLayout.state_key`, with the parts around the entity computed once per view and partition."""
        before, after = self._parts(index, partition)
        return f"{before}{entity}{after}"

    def _parts(self, index: int, partition: int) -> tuple[str, str]:
        parts = self._key_parts.get((index, partition))
        if parts is None:
            item = self._sql[index]
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

    def _tile_writes(self, index: int, item: _ViewSql, rows: list[tuple[Any, ...]],
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
            for item in self._sql:
                con.execute(item.sql).fetchall()
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
            for name, item in zip(self._names, self._sql, strict=True):
                con.execute(f"PREPARE {name} AS {item.sql}")
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
            for index, item in enumerate(self._sql):
                try:
                    rows = con.execute(statements[index]).fetchall()
                except duckdb.Error as exc:
                    raise TransformFailed(str(exc).splitlines()[0]) from None
                bucket = now_ms // item.refresh_ms
                if item.layout is None:
                    pexpire = item.pexpire_ms
                    for partition, entity, event_time, tie, seq, *values in rows:
                        key = self._key(index, partition, entity)
                        batches[partition].add_latest(key, pexpire, pexpire > 0 and self._refresh(key, bucket),
                                                      event_time, tie, seq, pack_latest(event_time, tie, seq, values))
                    continue
                rows.sort(key=_BY_PARTITION_ENTITY_TILE)  # cheaper here than an ORDER BY in DuckDB (~0.25 ms)
                self._tile_writes(index, item, rows, batches, bucket)
        finally:
            con.unregister(RELATION)
