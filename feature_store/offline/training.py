"""Point-in-time training sets: entity rows joined with features as of each row's time.

The row for `(e, t)` holds what the online store answered at `t` ("as
served"): only applied events with `event_time <= t` and `ingest_time <= t`
count (`ignore_ingest_time=True` drops the second condition, for pure
event-time backfills). Output rows keep the input order; none is dropped,
duplicates stay. One SQL shape per view kind:

- windowed: a range join of rows and events on entity and
  `window_lower_bound(t) <= event_time <= t`, grouped by row, with
  `stat_sql` then `finalize_sql` (one join per distinct (hop, window)).
- latest: the online state after each event is the running argmax by
  (event_time, tie, seq) in order of `__avail`; an ASOF join picks the state
  at `t`, then the ttl applies (`state.event_time > t - ttl`). By event time
  only, one ASOF join on the packed order key (`events.order_key`) suffices.

Entity rows given as Parquet are scanned by DuckDB (never loaded whole);
with `out=` the result streams into Parquet (`COPY ... TO`).
"""

from __future__ import annotations

import contextlib
import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from feature_store.aggregates import SEQ_PARTITION_SHIFT, TileLayout, finalize_sql, stat_sql, stats_for
from feature_store.definitions import Aggregation, FeatureService, FeatureView
from feature_store.errors import OfflineStoreError
from feature_store.offline.engine import Progress, run_with_progress, sql_str
from feature_store.offline.events import STRUCT_ORDER, order_key, view_events_sql
from feature_store.transforms import DUCKDB_TYPES

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]  # no pandas-stubs in the env

    from feature_store.expressions import Expression
    from feature_store.repo import FeatureRepo

__all__ = ["TrainingSetQuery", "build_training_set_sql", "load_entities", "output_name", "requested_features",
           "training_set"]

ROW = "__row"
T = "__t"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def output_name(view: FeatureView, feature: str) -> str:
    """Training-set column of 'view:feature': 'view__feature'."""
    return f"{view.name}__{feature}"


def load_entities(entities: str | Path | pa.Table | pd.DataFrame) -> pa.Table:
    """The entity rows as Arrow (a Parquet file, an Arrow table or a pandas DataFrame), all in memory."""
    if isinstance(entities, pa.Table):
        return entities
    if isinstance(entities, str | Path):
        try:
            return pq.read_table(str(entities))
        except (OSError, pa.ArrowInvalid) as exc:
            raise OfflineStoreError(f"cannot read entity rows from {str(entities)!r}: {exc}; "
                                    f"pass a Parquet file") from None
    try:
        return pa.Table.from_pandas(entities, preserve_index=False)
    except (TypeError, AttributeError, pa.ArrowInvalid) as exc:
        raise OfflineStoreError(f"entity rows must be a Parquet path, an Arrow table or a pandas DataFrame "
                                f"({exc})") from None


@dataclass(frozen=True)
class TrainingSetQuery:
    """What to join: features grouped by view, the row timestamp column and the as-served switch."""

    features: dict[FeatureView, list[str]]
    timestamp_column: str = "event_timestamp"
    ignore_ingest_time: bool = False
    derived: dict[str, Expression] | None = None


def requested_features(repo: FeatureRepo, features: Sequence[str] | str | FeatureService | None = None,
                       service: str | FeatureService | None = None,
                       ) -> tuple[dict[FeatureView, list[str]], FeatureService | None]:
    """Features by view from 'view:feature' references or a service (name or object), and the service.

    A single string naming a service (no ':') counts as the service.
    """
    if isinstance(features, FeatureService) or (isinstance(features, str) and ":" not in features):
        features, service = None, features
    if (features is None) == (service is None):
        raise OfflineStoreError("pass either features=['view:feature', ...] or service='name', not both or neither")
    if service is not None:
        chosen = repo.service(service) if isinstance(service, str) else service
        return repo.group_features(chosen.feature_refs), chosen
    refs = [features] if isinstance(features, str) else list(features or [])
    return repo.group_features(refs), None


def _time_ms_sql(column: str, duck_type: str) -> str:
    """Epoch ms of the row timestamp, whatever its type (epoch-ms integers or timestamps)."""
    upper = duck_type.upper()
    if upper.startswith(("TIMESTAMP", "DATE")):
        return f"epoch_ms({_q(column)}::TIMESTAMPTZ)"
    if upper in ("BIGINT", "INTEGER", "HUGEINT", "UBIGINT", "UINTEGER", "SMALLINT"):
        return f"{_q(column)}::BIGINT"
    raise OfflineStoreError(f"timestamp column {column!r} has type {duck_type}; use epoch milliseconds (int) or "
                            f"a timestamp type")


def _sub_layout(view: FeatureView, hop_ms: int, aggs: Sequence[Aggregation]) -> TileLayout:
    """The stats of a few aggregations of one hop (a window gets its own join)."""
    stats = sorted({s for a in aggs for s in stats_for(a)}, key=lambda s: (s.column, s.stat))
    return TileLayout(view=view.name, hop_ms=hop_ms, stats=tuple(stats), aggregations=tuple(aggs))


def _windowed_ctes(view: FeatureView, features: list[str], events: str, key: str, as_served: bool,
                   tag: str) -> tuple[list[str], list[str]]:
    """CTEs (one per (hop, window)) of per-row stats, and the output expressions finalizing them."""
    groups: dict[tuple[int, int], list[Aggregation]] = {}
    for agg in view.aggregations:
        if agg.name in features:
            groups.setdefault((agg.hop_ms, agg.window_ms), []).append(agg)
    ctes, outputs = [], []
    for i, ((hop, window), aggs) in enumerate(sorted(groups.items())):
        layout = _sub_layout(view, hop, aggs)
        name = f"{tag}_w{i}"
        lower = f"r.{T} - (((r.{T} % {hop}) + {hop}) % {hop}) - {window} + {hop}"  # windows.window_lower_bound
        served = f" AND e.__avail <= r.{T}" if as_served else ""
        ctes.append(
            f"{name} AS (SELECT r.{ROW}, {', '.join(stat_sql(layout))} FROM (SELECT {ROW}, {T}, {key} FROM __keyed) r "
            f"JOIN {events} e ON e.__entity = r.{key} AND e.__event_time >= {lower} "
            f"AND e.__event_time <= r.{T}{served} GROUP BY r.{ROW})"
        )
        mapping = {s: f"{name}.{_q(s.label)}" for s in layout.stats}
        for agg in aggs:
            outputs.append(f"{finalize_sql(agg, mapping)} AS {_q(output_name(view, agg.name))}")
    return ctes, outputs


def _latest_join(con: duckdb.DuckDBPyConnection, view: FeatureView, features: list[str], events: str,
                 events_sql: str, key: str, as_served: bool, tag: str) -> tuple[str, list[str]]:
    """ASOF join of the rows with the view's states, and the output expressions (ttl applied).

    As served, a state is an event that was the newest (by event_time, tie,
    seq) of its entity when it became visible: the running max over
    `__avail` order (peers, i.e. equal `__avail`, count together); the state
    at t is the last one with `__avail <= t`. By event time only, the state
    at t is the event with the largest order key whose event_time <= t: one
    plain ASOF join on the packed key, no window.
    """
    order = order_key(con, events_sql)
    fields = ", ".join(_q(f) for f in features)
    if not as_served and order is not None:
        states = f"SELECT __entity, {order.sql} AS __at, __event_time, {fields} FROM {events}"
        bound = order.upper_bound_sql(f"r.{T}")
    else:
        avail = "__avail" if as_served else "__event_time"
        key_sql = order.sql if order is not None else STRUCT_ORDER
        states = (
            f"SELECT __entity, {avail} AS __at, __event_time, {fields} FROM {events} "
            f"QUALIFY {key_sql} = max({key_sql}) OVER (PARTITION BY __entity ORDER BY {avail} "
            f"RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
        )
        bound = f"r.{T}"
    ttl = view.ttl_ms
    live = f"{tag}.__event_time > r.{T} - {ttl}" if ttl is not None else f"{tag}.__event_time IS NOT NULL"
    outputs = [f"CASE WHEN {live} THEN {tag}.{_q(f)} END AS {_q(output_name(view, f))}" for f in features]
    join = f"ASOF LEFT JOIN ({states}) {tag} ON r.{key} = {tag}.__entity AND {bound} >= {tag}.__at"
    return join, outputs


def build_training_set_sql(con: duckdb.DuckDBPyConnection, data_dir: Path, query: TrainingSetQuery,
                           input_columns: Sequence[str]) -> str:
    """The whole point-in-time query over the registered `__rows` relation, ordered like the input."""
    ctes: list[str] = []
    keys: list[str] = []
    outputs: list[str] = []
    joins: list[str] = []
    as_served = not query.ignore_ingest_time
    for i, (view, features) in enumerate(query.features.items()):
        if view.entity.join_key not in input_columns:
            raise OfflineStoreError(
                f"entity rows lack column {view.entity.join_key!r}, the join key of view {view.name!r} "
                f"(columns: {', '.join(input_columns)}); add it to the entity rows"
            )
        events, events_sql, key = f"__ev{i}", view_events_sql(con, data_dir, view), f"__k{i}"
        ctes.append(f"{events} AS ({events_sql})")
        key_type = DUCKDB_TYPES[view.input_columns[view.entity.join_key]]
        keys.append(f"TRY_CAST({_q(view.entity.join_key)} AS {key_type}) AS {key}")
        tag = f"__f{i}"
        if view.is_windowed:
            view_ctes, view_outputs = _windowed_ctes(view, features, events, key, as_served, tag)
            ctes += view_ctes
            joins += [f"LEFT JOIN {name} ON {name}.{ROW} = r.{ROW}" for name in (c.split(" AS ", 1)[0]
                                                                              for c in view_ctes)]
        else:
            join, view_outputs = _latest_join(con, view, features, events, events_sql, key, as_served, tag)
            joins.append(join)
        outputs += view_outputs
    ctes.insert(0, f"__keyed AS (SELECT *{''.join(', ' + k for k in keys)} FROM __rows)")
    inputs = ", ".join(f"r.{_q(c)}" for c in input_columns)
    select = f"SELECT {inputs}{''.join(', ' + o for o in outputs)} FROM __keyed r {' '.join(joins)} ORDER BY r.{ROW}"
    if query.derived:
        derived = ", ".join(f"({expr.to_sql()}) AS {_q(name)}" for name, expr in query.derived.items())
        select = f"SELECT *, {derived} FROM ({select})"
    return f"WITH {', '.join(ctes)} {select}"


def _register_entities(con: duckdb.DuckDBPyConnection, entities: str | Path | pa.Table | Any) -> dict[str, str]:
    """Make `__input` (the rows plus `__row`, their input order) and return its columns and DuckDB types.

    Parquet paths (or globs) are scanned by DuckDB directly, never loaded
    whole; `__row` = file index * 2**40 + row number in the file.
    """
    if isinstance(entities, str | Path):
        files = sorted(glob.glob(str(entities)))
        if not files:
            raise OfflineStoreError(f"cannot read entity rows from {str(entities)!r}: no such file; pass a Parquet "
                                    f"file or glob")
        union = " UNION ALL BY NAME ".join(
            f"SELECT *, {i}::BIGINT AS __file FROM read_parquet({sql_str(f)}, file_row_number = true)"
            for i, f in enumerate(files))
        relation = (f"SELECT * EXCLUDE (__file, file_row_number), __file * {SEQ_PARTITION_SHIFT} + file_row_number "
                    f"AS {ROW} FROM ({union})")
    else:
        table = load_entities(entities)
        con.register("__input_arrow", table.append_column(ROW, pa.array(range(table.num_rows), pa.int64())))
        relation = "SELECT * FROM __input_arrow"
    try:
        con.execute(f"CREATE OR REPLACE TEMP VIEW __input AS {relation}")
        described = con.execute("SELECT column_name, column_type FROM (DESCRIBE __input)").fetchall()
    except duckdb.Error as exc:
        raise OfflineStoreError(f"cannot read entity rows from {str(entities)[:200]!r}: "
                                f"{str(exc).splitlines()[0]}") from None
    return {str(name): str(kind) for name, kind in described if name != ROW}


def training_set(con: duckdb.DuckDBPyConnection, data_dir: Path, entities: str | Path | pa.Table | Any,
                 query: TrainingSetQuery, *, out: str | Path | None = None,
                 progress: Progress | None = None) -> pa.Table:
    """Compute a training set; with `out`, stream it into that Parquet file (and return it memory-mapped)."""
    try:
        types = _register_entities(con, entities)
        if query.timestamp_column not in types:
            raise OfflineStoreError(
                f"entity rows lack the timestamp column {query.timestamp_column!r} (columns: "
                f"{', '.join(types)}); pass timestamp_column= or add the column"
            )
        t_sql = _time_ms_sql(query.timestamp_column, types[query.timestamp_column])
        con.execute(f"CREATE OR REPLACE TEMP VIEW __rows AS SELECT *, {t_sql} AS {T} FROM __input")
        sql = build_training_set_sql(con, data_dir, query, list(types))
        if out is None:
            result: pa.Table = run_with_progress(con, lambda: con.sql(sql).to_arrow_table(), progress)
            return result
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        copy = f"COPY ({sql}) TO {sql_str(str(out))} (FORMAT parquet, COMPRESSION zstd)"
        run_with_progress(con, lambda: con.execute(copy), progress)
        return pq.read_table(str(out), memory_map=True)
    finally:
        con.execute("DROP VIEW IF EXISTS __rows")
        con.execute("DROP VIEW IF EXISTS __input")
        with contextlib.suppress(duckdb.Error):
            con.unregister("__input_arrow")
