"""Turn a micro-batch of applied events into online writes, with the batch path's SQL.

For each online view of a source, DuckDB runs `transformed_sql` over the
batch and then, per hop, `stat_sql` grouped by entity and tile start (the
same stats the batch path computes over the log), or the argmax row per
entity for latest-value views. The result is a `PartitionBatch` for
`OnlineWriter.apply`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from feature_store.aggregates import TileLayout, stat_sql, tile_layouts
from feature_store.definitions import FeatureView, StreamSource
from feature_store.online.codec import pack_latest, pack_stats
from feature_store.online.keys import KeyLayout
from feature_store.online.writer import LatestWrite, PartitionBatch, TileWrite
from feature_store.transforms import transformed_sql

__all__ = ["RELATION", "SourcePlan", "TransformFailed"]

RELATION = "__batch"
"""Name the micro-batch has in DuckDB: schema columns plus __event_time, __tie, __seq."""

TTL_MARGIN_MS = 60_000
"""Keys live this much longer than the longest read reaching them."""


class TransformFailed(Exception):  # internal signal, never escapes the worker
    """DuckDB refused a view's SQL on the batch (some row breaks a transform)."""


@dataclass(frozen=True)
class _ViewSql:
    view: FeatureView
    layout: TileLayout | None  # None: latest-value view
    layout_index: int
    sql: str
    pexpire_ms: int
    keep_ms: int


class SourcePlan:
    """The SQL and key rules of every online view fed by one stream source."""

    def __init__(self, source: StreamSource, views: list[FeatureView], keys: KeyLayout) -> None:
        self.source = source
        self.views = [v for v in views if v.online]
        self.keys = keys
        self.layouts: list[TileLayout] = []
        self._sql: list[_ViewSql] = []
        for view in self.views:
            rows = f"({transformed_sql(RELATION, view.transform)})"
            entity = f'"{view.entity.join_key}"'
            if view.is_windowed:
                for layout in tile_layouts(view):
                    hop = layout.hop_ms
                    sql = (f"SELECT {entity} AS __entity, __event_time - __event_time % {hop} AS __tile, "
                           f"{', '.join(stat_sql(layout))} FROM {rows} WHERE {entity} IS NOT NULL "
                           f"GROUP BY 1, 2 ORDER BY 1, 2")
                    keep = layout.max_window_ms + hop
                    self._sql.append(_ViewSql(view, layout, len(self.layouts), sql, keep + TTL_MARGIN_MS, keep))
                    self.layouts.append(layout)
            else:
                fields = "".join(f', "{f}"' for f in view.fields)
                sql = (f"SELECT {entity} AS __entity, __event_time, __tie, __seq{fields} FROM {rows} "
                       f"WHERE {entity} IS NOT NULL QUALIFY row_number() OVER (PARTITION BY {entity} "
                       f"ORDER BY __event_time DESC, __tie DESC, __seq DESC) = 1")
                ttl = view.ttl_ms
                self._sql.append(_ViewSql(view, None, -1, sql, 0 if ttl is None else ttl + TTL_MARGIN_MS, 0))

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

    def writes(self, con: duckdb.DuckDBPyConnection, table: pa.Table, partition: int, batch: PartitionBatch) -> None:
        """Add the tile and latest writes of `table` (applied rows of one partition) to `batch`."""
        con.register(RELATION, table)
        try:
            for item in self._sql:
                try:
                    rows = con.execute(item.sql).fetchall()
                except duckdb.Error as exc:
                    raise TransformFailed(str(exc).splitlines()[0]) from None
                view = item.view
                if item.layout is None:
                    for entity, event_time, tie, seq, *values in rows:
                        batch.latest.append(LatestWrite(
                            key=self.keys.state_key(view, partition, entity, None), pexpire_ms=item.pexpire_ms,
                            event_time=event_time, tie=tie, seq=seq, packed=pack_latest(event_time, tie, seq, values)))
                    continue
                per_entity: dict[object, list[tuple[int, bytes]]] = defaultdict(list)
                for entity, tile, *stats in rows:
                    per_entity[entity].append((tile, pack_stats(stats)))
                hop = item.layout.hop_ms
                for entity, tiles in per_entity.items():
                    batch.tiles.append(TileWrite(
                        key=self.keys.state_key(view, partition, entity, hop), layout=item.layout_index,  # type: ignore[arg-type]
                        pexpire_ms=item.pexpire_ms, keep_ms=item.keep_ms, tiles=tiles))
        finally:
            con.unregister(RELATION)
