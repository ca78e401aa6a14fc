"""Point-in-time training sets: entity rows joined with features as of each row's time.

The row for `(e, t)` holds what the online store answered at `t` ("as
served"): only applied events with `event_time <= t` and `ingest_time <= t`
count (`ignore_ingest_time=True` drops the second condition, for pure
event-time backfills). Output rows keep the input order; none is dropped,
duplicates stay. One SQL shape per view kind:

- windowed: a range join of rows and events on entity and
  `window_lower_bound(t) <= event_time <= t`, grouped by row, with
  `stat_sql` then `finalize_sql` (one join per distinct (hop, window)).
- latest: the state at t is the newest event (by event_time, tie, seq)
  among those visible at t. Rows and events of a view are sorted together
  by (entity hash, visibility time) once, a streaming running max over that
  order gives each row its state's seq (a small state table built before
  the main query), then one hash join on seq fetches the fields and the
  ttl applies (`state.event_time > t - ttl`).

Entity rows given as Parquet are scanned by DuckDB (never loaded whole);
with `out=` the result streams into Parquet (`COPY ... TO`).
"""

from __future__ import annotations

import contextlib
import glob
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from feature_store.aggregates import SEQ_PARTITION_SHIFT, TileLayout, finalize_sql, stat_sql, stats_for
from feature_store.definitions import Aggregation, FeatureService, FeatureView
from feature_store.errors import OfflineStoreError
from feature_store.offline.engine import Progress, run_with_progress, sql_str
from feature_store.offline.events import view_events_sql
from feature_store.transforms import DUCKDB_TYPES
from feature_store.windows import tile_start_sql

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]  # no pandas-stubs in the env

    from feature_store.expressions import Expression
    from feature_store.repo import FeatureRepo

__all__ = ["TrainingSetQuery", "load_entities", "output_name", "plan_training_set",
           "requested_features", "training_set"]

_log = structlog.get_logger(__name__)

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
        lower = f"{tile_start_sql(f'r.{T}', hop)} - {window} + {hop}"  # windows.window_lower_bound
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


@dataclass(frozen=True)
class _StateKey:
    """One sortable value per event: (entity group, event_time, tie, seq), for a streaming running max.

    The running max restarts at each entity because the group (the entity's
    rank in the sort) takes the top bits. Below it: event_time, the tie
    (absolute, or relative to event_time when that range is narrower: both
    order equal event times alike) and seq compacted to its (seq // 2**40,
    seq % 2**40) ranges, each relative to its minimum. One integer compares
    several times faster than a struct; ranges too wide for 126 bits fall
    back to a struct (exact, slower).
    """

    kind: str  # BIGINT, HUGEINT or STRUCT
    event_sql: str  # an event's value without its group
    seq_sql: str  # an event's id in its source: seq, compacted (the value's low bits) unless STRUCT
    low_bits: int  # bits below the group
    seq_bits: int

    def value_sql(self, group: str, value: str) -> str:
        if self.kind == "STRUCT":
            return f"struct_pack(g := {group}, v := {value})"
        return f"((({group})::{self.kind} << {self.low_bits}) | {value})"  # SQL: << and | bind alike

    def group_of(self, state: str) -> str:
        return f"{state}.g" if self.kind == "STRUCT" else f"({state} >> {self.low_bits})"

    def seq_of(self, state: str) -> str:
        if self.kind == "STRUCT":
            return f"{state}.v.q"
        return f"({state} & {(1 << self.seq_bits) - 1})::BIGINT"


def _state_key(con: duckdb.DuckDBPyConnection, events: str, at: str, rows: int, *, packed: bool = True,
               ) -> tuple[_StateKey, int, int]:
    """The state key of a view's events and the range of their visibility time `at` ((0, 0) without events)."""
    mask = SEQ_PARTITION_SHIFT - 1
    shift = SEQ_PARTITION_SHIFT.bit_length() - 1
    stats = con.execute(
        f"SELECT count(*), min(__event_time), max(__event_time), min(__tie), max(__tie), min(__tie - __event_time), "
        f"max(__tie - __event_time), min(__seq), max(__seq), min(__seq >> {shift}), max(__seq >> {shift}), "
        f"min(__seq & {mask}), max(__seq & {mask}), min({at}), max({at}) FROM ({events})").fetchall()[0]
    count, lo_e, hi_e, lo_t, hi_t, lo_d, hi_d, lo_s, hi_s, lo_h, hi_h, lo_l, hi_l, lo_a, hi_a = (
        v if v is not None else 0 for v in stats)
    if lo_s >= 0:  # seq = high * 2**40 + low: rank (high, low) within their ranges
        span = hi_l - lo_l + 1
        seq = f"(((__seq >> {shift}) - {lo_h}) * {span} + ((__seq & {mask}) - {lo_l}))"
        seq_bits = ((hi_h - lo_h + 1) * span - 1).bit_length()
    else:
        seq, seq_bits = f"(__seq - {lo_s})", (hi_s - lo_s).bit_length()
    if (hi_d - lo_d) < (hi_t - lo_t):
        tie, tie_bits = f"(__tie - __event_time - {lo_d})", (hi_d - lo_d).bit_length()
    else:
        tie, tie_bits = f"(__tie - {lo_t})", (hi_t - lo_t).bit_length()
    low_bits = (hi_e - lo_e).bit_length() + tie_bits + seq_bits
    total = (count + rows + 1).bit_length() + low_bits
    if not packed or total > 126:
        key = _StateKey("STRUCT", "struct_pack(t := __event_time, k := __tie, q := __seq)", "__seq", 0, 0)
    else:
        kind = "BIGINT" if total <= 62 else "HUGEINT"
        part = "BIGINT" if tie_bits + seq_bits <= 62 else kind  # the low part in BIGINT when it fits: cheaper
        value = (f"(((__event_time - {lo_e})::{kind} << {tie_bits + seq_bits}) | (({tie}::{part} << {seq_bits}) "
                 f"| {seq}::{part})::{kind})")
        key = _StateKey(kind, value, seq, low_bits, seq_bits)
    return key, lo_a, hi_a


_GROUP_HASH = "hash({})"
"""Groups a string entity's rows and events for the sort: a 64-bit hash sorts several times faster than text."""


_CLASH = "featurestream: two entities share a hash"


@dataclass(frozen=True)
class _Plan:
    """The training-set query, and the statements that must run before it (one state table per latest view).

    `exact` rebuilds the state tables grouped by the entity key itself: the
    query raises `_CLASH` when a row's state belongs to another entity.
    """

    sql: str
    steps: list[Callable[[], None]]
    exact: list[Callable[[], None]]
    tables: list[str]


def _state_step(con: duckdb.DuckDBPyConnection, events_sql: str, at: str, key: str, group: str, table: str,
                state: _StateKey, low: int, high: int) -> Callable[[], None]:
    """A statement making `table` (`__r`, `__pick`): the seq of each row's state, NULL when it has none.

    Rows and events go through one sort by (group, visibility time `at`), a
    row after the events visible at its time; a streaming running max then
    gives each row its state. Rows with a null key or time see no event.
    """
    kind = "BIGINT" if high - low < 2**61 else "HUGEINT"
    row_at = f"coalesce(least(greatest({T}, {low - 1}), {high}), {low - 1})"
    running = "OVER (ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    ordered = (f"SELECT {group.format('__entity')} AS __h, ({at} - {low})::{kind} * 2 AS __o, "
               f"{state.event_sql} AS __v, NULL::BIGINT AS __r FROM ({events_sql}) UNION ALL SELECT "
               f"{group.format(key)}, ({row_at} - {low})::{kind} * 2 + 1, NULL, {ROW} FROM __keyed "
               f"WHERE {key} IS NOT NULL ORDER BY __h, __o")
    # count(*) FILTER is the one running aggregate DuckDB streams without a call per row
    grouped = (f"SELECT __v, __r, count(*) FILTER (WHERE __new) {running} AS __g FROM (SELECT __v, __r, "
               f"__h IS DISTINCT FROM lag(__h) OVER () AS __new FROM ({ordered}))")
    sql = (f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT __r, {state.seq_of('__m')} AS __pick FROM (SELECT __r, "
           f"__g, max({state.value_sql('__g', '__v')}) {running} AS __m FROM ({grouped})) "
           f"WHERE __r IS NOT NULL AND {state.group_of('__m')} = __g")

    def step() -> None:
        con.execute(sql)

    return step


def _latest_view(con: duckdb.DuckDBPyConnection, view: FeatureView, features: list[str], events: str,
                 events_sql: str, key: str, as_served: bool, rows: int, tag: str,
                 ) -> tuple[Callable[[], None], Callable[[], None], str, list[str]]:
    """The state step and its exact twin (grouped by key), the CTE of each row's state with its fields (`tag`),
    and the outputs (ttl applied).

    The state at t is the newest event (by event_time, tie, seq) among those
    visible at t: `__avail <= t` as served, else `__event_time <= t`. Its seq
    identifies it in its source (partition and offset, or file and row): one
    hash join fetches its fields.
    """
    at = "__avail" if as_served else "__event_time"
    state, low, high = _state_key(con, events_sql, at, rows)
    hashed = DUCKDB_TYPES[view.input_columns[view.entity.join_key]] == "VARCHAR"
    steps = [_state_step(con, events_sql, at, key, group, f"{tag}_state", state, low, high)
             for group in (_GROUP_HASH if hashed else "{}", "{}")]
    fields = ", ".join(f"e.{_q(f)}" for f in features)
    cte = (f"{tag} AS (SELECT s.__r, e.__entity, e.__event_time, {fields} FROM {tag}_state s JOIN (SELECT *, "
           f"{state.seq_sql} AS __pick FROM {events}) e ON e.__pick = s.__pick)")
    # Grouped by hash, a row's running max covers every entity of its hash: if the newest is its own entity's
    # event it is the right state, else (two entities share a 64-bit hash) the query stops with _CLASH and the
    # caller rebuilds the states grouped by key. So the check is exact and costs one comparison per row.
    event_time = (f"CASE WHEN {tag}.__entity <> r.{key} THEN error({sql_str(_CLASH)})::BIGINT "
                  f"ELSE {tag}.__event_time END")
    ttl = view.ttl_ms
    live = f"{event_time} > r.{T} - {ttl}" if ttl is not None else f"{event_time} IS NOT NULL"
    outputs = [f"CASE WHEN {live} THEN {tag}.{_q(f)} END AS {_q(output_name(view, f))}" for f in features]
    return steps[0], steps[1], cte, outputs


def plan_training_set(con: duckdb.DuckDBPyConnection, data_dir: Path, query: TrainingSetQuery,
                      input_columns: Sequence[str]) -> _Plan:
    """The whole point-in-time query over the registered `__rows` relation, ordered like the input.

    Creates the temp view `__keyed` (the rows with each view's typed key);
    the steps create each latest view's state table.
    """
    ctes: list[str] = []
    keys: list[str] = []
    outputs: list[str] = []
    joins: list[str] = []
    steps: list[Callable[[], None]] = []
    exact: list[Callable[[], None]] = []
    tables: list[str] = []
    as_served = not query.ignore_ingest_time
    for i, view in enumerate(query.features):
        if view.entity.join_key not in input_columns:
            raise OfflineStoreError(
                f"entity rows lack column {view.entity.join_key!r}, the join key of view {view.name!r} "
                f"(columns: {', '.join(input_columns)}); add it to the entity rows"
            )
        key_type = DUCKDB_TYPES[view.input_columns[view.entity.join_key]]
        keys.append(f"TRY_CAST({_q(view.entity.join_key)} AS {key_type}) AS __k{i}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW __keyed AS SELECT *{''.join(', ' + k for k in keys)} FROM __rows")
    rows = 0
    if any(not view.is_windowed for view in query.features):
        rows = con.execute("SELECT count(*) FROM __rows").fetchall()[0][0]
    for i, (view, features) in enumerate(query.features.items()):
        events, events_sql, key, tag = f"__ev{i}", view_events_sql(con, data_dir, view), f"__k{i}", f"__f{i}"
        ctes.append(f"{events} AS ({events_sql})")
        if view.is_windowed:
            view_ctes, view_outputs = _windowed_ctes(view, features, events, key, as_served, tag)
            ctes += view_ctes
            joins += [f"LEFT JOIN {name} ON {name}.{ROW} = r.{ROW}" for name in (c.split(" AS ", 1)[0]
                                                                              for c in view_ctes)]
        else:
            step, exact_step, cte, view_outputs = _latest_view(con, view, features, events, events_sql, key,
                                                               as_served, rows, tag)
            steps.append(step)
            exact.append(exact_step)
            tables.append(f"{tag}_state")
            ctes.append(cte)
            joins.append(f"LEFT JOIN {tag} ON {tag}.__r = r.{ROW}")
        outputs += view_outputs
    inputs = ", ".join(f"r.{_q(c)}" for c in input_columns)
    select = f"SELECT {inputs}{''.join(', ' + o for o in outputs)} FROM __keyed r {' '.join(joins)} ORDER BY r.{ROW}"
    if query.derived:
        derived = ", ".join(f"({expr.to_sql()}) AS {_q(name)}" for name, expr in query.derived.items())
        select = f"SELECT *, {derived} FROM ({select})"
    return _Plan(f"WITH {', '.join(ctes)} {select}", steps, exact, tables)


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
    tables: list[str] = []
    try:
        types = _register_entities(con, entities)
        if query.timestamp_column not in types:
            raise OfflineStoreError(
                f"entity rows lack the timestamp column {query.timestamp_column!r} (columns: "
                f"{', '.join(types)}); pass timestamp_column= or add the column"
            )
        t_sql = _time_ms_sql(query.timestamp_column, types[query.timestamp_column])
        con.execute(f"CREATE OR REPLACE TEMP VIEW __rows AS SELECT *, {t_sql} AS {T} FROM __input")
        plan = plan_training_set(con, data_dir, query, list(types))
        tables = plan.tables
        stage = [0]
        stages = len(plan.steps) + 1

        def run(final: Callable[[], Any]) -> Any:
            for step in plan.steps:
                step()
                stage[0] += 1
            try:
                return final()
            except duckdb.Error as exc:
                if _CLASH not in str(exc):
                    raise
            _log.info("training_set.hash_clash", fix="states rebuilt grouped by the entity key")
            for step in plan.exact:
                step()
            return final()

        scaled = None if progress is None else (lambda done: progress((stage[0] + done) / stages))
        if out is None:
            result: pa.Table = run_with_progress(con, lambda: run(lambda: con.sql(plan.sql).to_arrow_table()), scaled)
            return result
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        copy = f"COPY ({plan.sql}) TO {sql_str(str(out))} (FORMAT parquet, COMPRESSION zstd)"
        run_with_progress(con, lambda: run(lambda: con.execute(copy)), scaled)
        return pq.read_table(str(out), memory_map=True)
    finally:
        for table in tables:
            con.execute(f"DROP TABLE IF EXISTS {table}")
        con.execute("DROP VIEW IF EXISTS __keyed")
        con.execute("DROP VIEW IF EXISTS __rows")
        con.execute("DROP VIEW IF EXISTS __input")
        with contextlib.suppress(duckdb.Error):
            con.unregister("__input_arrow")
