"""The applied events of a view as one DuckDB relation, from the event log or a BatchSource.

Every batch job (training sets, materialization, consistency checks) reads
events through `view_events_sql`, so they all agree on which rows count and
how ties order. The relation has the view's input columns (source columns
plus transform outputs, timestamps as epoch ms) and:

    __entity      the view's entity key (rows without one are dropped)
    __event_time  event time, epoch ms
    __tie, __seq  order of `last`/latest: (event_time, tie, seq), see `aggregates`
    __avail       when the event counts "as served": greatest(event_time, ingest_time),
                  ingest time being the log's; for batch rows the created time (else event time)
    __partition   log: the Kafka partition; batch: NULL (`partition_for` of the entity)

Log rows count only with status `applied` (late and invalid rows are kept
in the log for audit but never reach a feature).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import duckdb

from feature_store.aggregates import SEQ_PARTITION_SHIFT
from feature_store.definitions import BatchSource, FeatureView, Source, StreamSource
from feature_store.offline.engine import sql_list, sql_str
from feature_store.offline.layout import batch_source_glob, log_files
from feature_store.transforms import DUCKDB_TYPES, transformed_sql

__all__ = ["STRUCT_ORDER", "OrderKey", "order_key", "source_files", "source_rows_sql", "view_events_sql"]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def source_files(data_dir: Path, source: Source) -> list[str]:
    """The Parquet files holding a source's rows, in a stable (sorted) order."""
    if isinstance(source, StreamSource):
        return log_files(data_dir, source.name)
    return sorted(glob.glob(batch_source_glob(data_dir, source.path)))


def _empty_sql(source: Source) -> str:
    """A typed relation with no rows, for a source that has no files yet."""
    columns = [f"CAST(NULL AS {DUCKDB_TYPES[t]}) AS {_q(n)}" for n, t in source.schema.columns.items()]
    columns += [f"CAST(NULL AS BIGINT) AS {c}" for c in ("__event_time", "__tie", "__seq", "__avail")]
    columns.append("CAST(NULL AS INTEGER) AS __partition")
    return f"SELECT {', '.join(columns)} WHERE false"


def source_rows_sql(con: duckdb.DuckDBPyConnection, data_dir: Path, source: Source) -> str:
    """SELECT of a source's rows that count, with the bookkeeping columns above (no entity yet)."""
    files = source_files(data_dir, source)
    if not files:
        return _empty_sql(source)
    if isinstance(source, StreamSource):
        return _log_rows_sql(source, files)
    return _batch_rows_sql(con, source, files)


def _log_rows_sql(source: StreamSource, files: list[str]) -> str:
    columns = ", ".join(_q(n) for n in source.schema.columns)
    return (
        f"SELECT {columns}, __event_time, __ingest_time AS __tie, "
        f"__partition::BIGINT * {SEQ_PARTITION_SHIFT} + __offset AS __seq, "
        f"greatest(__event_time, __ingest_time) AS __avail, "
        f"__partition::INTEGER AS __partition "
        f"FROM read_parquet({sql_list(files)}, union_by_name = true, hive_partitioning = false) "
        f"WHERE __status = 'applied' AND __event_time IS NOT NULL"
    )


def _batch_rows_sql(con: duckdb.DuckDBPyConnection, source: BatchSource, files: list[str]) -> str:
    """Batch rows: seq = file index * 2**40 + row number in the file, so later rows win ties.

    One scan per file with its index as a constant: cheaper than carrying
    each row's file name through sorts.
    """
    relation = "(" + " UNION ALL BY NAME ".join(
        f"SELECT *, {i}::BIGINT AS __file FROM read_parquet({sql_str(f)}, file_row_number = true, "
        f"hive_partitioning = false)" for i, f in enumerate(files)) + ")"
    types = {row[0]: str(row[1]).upper() for row in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()}

    def as_schema(name: str) -> str:
        """The column as the schema types it: timestamps as epoch ms whatever the file holds."""
        if source.schema.columns[name] == "timestamp" and types.get(name, "BIGINT").startswith(("TIMESTAMP", "DATE")):
            return f"epoch_ms({_q(name)}::TIMESTAMPTZ)"
        if name not in types:
            return f"CAST(NULL AS {DUCKDB_TYPES[source.schema.columns[name]]})"
        return f"{_q(name)}::{DUCKDB_TYPES[source.schema.columns[name]]}"

    columns = ", ".join(f"{as_schema(n)} AS {_q(n)}" for n in source.schema.columns)
    event_time = as_schema(source.event_time)
    created = as_schema(source.created_time) if source.created_time else None
    tie = f"coalesce({created}, 0)" if created else "0"
    avail = f"greatest({event_time}, coalesce({created}, {event_time}))" if created else event_time
    return (
        f"SELECT {columns}, {event_time} AS __event_time, {tie}::BIGINT AS __tie, "
        f"__file * {SEQ_PARTITION_SHIFT} + file_row_number "
        f"AS __seq, {avail} AS __avail, "
        f"CAST(NULL AS INTEGER) AS __partition "
        f"FROM {relation} WHERE {event_time} IS NOT NULL"
    )


def view_events_sql(con: duckdb.DuckDBPyConnection, data_dir: Path, view: FeatureView) -> str:
    """SELECT of the view's applied events: transform columns added, `__entity` set, keyless rows dropped."""
    rows = source_rows_sql(con, data_dir, view.source)
    transformed = transformed_sql(f"({rows})", dict(view.transform))
    key = _q(view.entity.join_key)
    return f"SELECT *, {key} AS __entity FROM ({transformed}) WHERE {key} IS NOT NULL"


@dataclass(frozen=True)
class OrderKey:
    """One integer ordering a view's events exactly like (event_time, tie, seq).

    The three are packed relative to their minimum into a BIGINT or HUGEINT
    when their ranges fit (always, for real data): comparing one integer is
    several times cheaper in DuckDB than comparing structs, and an ASOF join
    can then pick the newest event by (event_time, tie, seq) directly.
    """

    sql: str
    kind: str
    low_event_time: int
    high_event_time: int
    shift: int  # bits below event_time

    def upper_bound_sql(self, t: str) -> str:
        """The largest key an event with `event_time <= t` can have (t clamped to the data's range)."""
        clamped = f"least(greatest({t}, {self.low_event_time - 1}), {self.high_event_time})"
        return f"(({clamped} - {self.low_event_time} + 1)::{self.kind} * CAST('{2 ** self.shift}' AS {self.kind}) - 1)"


STRUCT_ORDER = "struct_pack(t := __event_time, k := __tie, q := __seq)"


def order_key(con: duckdb.DuckDBPyConnection, events_sql: str) -> OrderKey | None:
    """The packed order key of these events, or None (no events, or ranges too wide: use the struct)."""
    row = con.execute(f"SELECT min(__event_time), max(__event_time), min(__tie), max(__tie), min(__seq), "
                      f"max(__seq) FROM ({events_sql})").fetchall()[0]
    if row[0] is None:
        return None
    (lo_e, hi_e), (lo_t, hi_t), (lo_s, hi_s) = (row[0:2], row[2:4], row[4:6])
    bits_t, bits_s = (hi_t - lo_t).bit_length(), (hi_s - lo_s).bit_length()
    total = (hi_e - lo_e + 1).bit_length() + bits_t + bits_s
    if total > 126:
        return None
    kind = "BIGINT" if total <= 62 else "HUGEINT"

    def shifted(column: str, low: int, shift: int) -> str:
        return f"(({column} - {low})::{kind} * CAST('{2 ** shift}' AS {kind}))"

    sql = (f"({shifted('__event_time', lo_e, bits_t + bits_s)} + {shifted('__tie', lo_t, bits_s)} "
           f"+ (__seq - {lo_s})::{kind})")
    return OrderKey(sql, kind, lo_e, hi_e, bits_t + bits_s)
