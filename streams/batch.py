"""Classify one partition's micro-batch: applied, late or invalid, deterministically.

Statuses depend only on the events in offset order and the watermark before
them (plus the ingest clock for the future check), so a replay after a crash
classifies the same events the same way; that is what lets the event log and
Redis agree with an uninterrupted run.

Boundaries: an event is late when `event_time < watermark - allowed_lateness`
(strictly older); it is from the future when `event_time > now + future_tolerance`.
The watermark is the max event time of the non-rejected events seen so far
in the partition (late events never move it, being older than it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from feature_store.aggregates import NO_ORDER, SEQ_PARTITION_SHIFT
from feature_store.definitions import StreamSource
from feature_store.offline.layout import LOG_COLUMNS
from schemas.event_schema import TableValidation

__all__ = ["APPLIED", "INVALID", "LATE", "Classified", "applied_table", "classify", "log_schema", "log_table"]

APPLIED, LATE, INVALID = "applied", "late", "invalid"


@dataclass
class Classified:
    """Per record (aligned with the input): normalized event, status and reason.

    The events are held as `table` (the schema's columns, one row per record,
    all null for a record that failed validation); `events` (dicts, None when
    invalid) is the other way to build one, turned into `table` on first use.
    """

    offsets: list[int]
    events: list[dict[str, Any] | None] | None
    event_times: list[int | None]
    status: list[str]
    reasons: list[str | None]
    watermark: int  # after the batch
    dlq: list[int] = field(default_factory=list)  # record indexes bound for the dead-letter topic
    table: pa.Table | None = None

    def applied(self) -> list[int]:
        return [i for i, s in enumerate(self.status) if s == APPLIED]

    def reject(self, index: int, reason: str) -> None:
        """Turn an applied event into an invalid one (its transform failed)."""
        self.status[index] = INVALID
        self.reasons[index] = reason
        self.dlq.append(index)

    def rows(self, source: StreamSource) -> pa.Table:
        """The events as a table of the source schema's columns (every field nullable)."""
        if self.table is None:
            schema = source.schema
            self.table = _rows_table(schema.arrow_schema(epoch_ms=True), self.events or [])
        return self.table


def classify(source: StreamSource, values: Sequence[bytes | None], offsets: Sequence[int], watermark: int,
             now_ms: int, checked: TableValidation | None = None) -> Classified:
    """Validate and classify raw record values of one partition, in offset order.

    `checked` is `source.schema.validate_records(values)` when the caller has
    it already (the worker validates a fetch's partitions together).
    """
    n = len(values)
    if checked is None:
        checked = source.schema.validate_records(values)
    table = checked.table
    status = [APPLIED] * n
    reasons: list[str | None] = [None] * n
    dlq: list[int] = []
    for index, reason in checked.invalid:
        status[index] = INVALID
        reasons[index] = reason
        dlq.append(index)
    column = source.event_time
    lateness = source.allowed_lateness_ms
    horizon = now_ms + source.future_tolerance_ms
    times = table.column(column).combine_chunks()
    if n and times.null_count < n:
        # the watermark before event i is the max time of the good events before it (late ones are older
        # than it, so taking them into the max changes nothing); invalid rows have a null time
        future = pc.fill_null(pc.greater(times, horizon), False)
        counted = pc.if_else(future, pa.scalar(None, pa.int64()), times)
        running = pc.cumulative_max(pc.fill_null(counted, NO_ORDER))
        before = pa.concat_arrays([pa.array([watermark], pa.int64()),
                                   pc.max_element_wise(running.slice(0, n - 1), watermark)]) if n > 1 else \
            pa.array([watermark], pa.int64())
        late = pc.fill_null(pc.and_(pc.not_equal(before, NO_ORDER),
                                    pc.less(counted, pc.subtract(before, lateness))), False)
        event_times: list[int | None] = counted.to_pylist()
        for index in pc.indices_nonzero(future).to_pylist():
            status[index] = INVALID
            reasons[index] = (f"{column}: {times[index].as_py()} is more than {source.future_tolerance_ms} ms "
                              f"ahead of the worker clock ({now_ms}); fix the producer's clock or the timestamp")
            dlq.append(index)
        late_rows = pc.indices_nonzero(late).to_pylist()
        if late_rows:
            marks = before.to_pylist()
            for index in late_rows:
                status[index] = LATE
                reasons[index] = (f"{column}: {event_times[index]} is older than the watermark {marks[index]} "
                                  f"minus allowed lateness {lateness} ms")
        watermark = max(watermark, running[n - 1].as_py())
    else:
        event_times = [None] * n
    dlq.sort()
    return Classified(offsets=list(offsets), events=None, event_times=event_times, status=status, reasons=reasons,
                      watermark=watermark, dlq=dlq, table=table)


def applied_table(source: StreamSource, c: Classified, indexes: Sequence[int], partition: int, tie: int) -> pa.Table:
    """The applied rows as DuckDB sees them: schema columns plus __event_time, __tie, __seq, __partition."""
    rows = c.rows(source)
    n = len(indexes)
    if n and indexes[-1] - indexes[0] == n - 1:  # one run of consecutive records (the usual batch)
        table = rows.slice(indexes[0], n)
        times: Any = c.event_times[indexes[0]:indexes[-1] + 1]
        offsets: Any = c.offsets[indexes[0]:indexes[-1] + 1]
    else:
        table = rows.take(pa.array(indexes, pa.int64()))
        times = [c.event_times[i] for i in indexes]
        offsets = [c.offsets[i] for i in indexes]
    base = partition * SEQ_PARTITION_SHIFT
    table = table.append_column("__event_time", pa.array(times, pa.int64()))
    table = table.append_column("__tie", pa.repeat(pa.scalar(tie, pa.int64()), n))
    table = table.append_column("__seq", pc.add(pa.array(offsets, pa.int64()), base))
    return table.append_column("__partition", pa.repeat(pa.scalar(partition, pa.int64()), n))


def log_schema(source: StreamSource) -> pa.Schema:
    """Event log columns: the schema's (all nullable: invalid rows have none) plus LOG_COLUMNS."""
    base = source.schema.arrow_schema(epoch_ms=True)
    fields = [f.with_nullable(True) for f in base] + list(LOG_COLUMNS)
    return pa.schema(fields, metadata=base.metadata)


def log_table(schema: pa.Schema, c: Classified, start: int, partition: int, ingest_ms: int) -> pa.Table:
    """Log rows of records `start..` of the batch (earlier ones are already durable in the log)."""
    n = len(c.offsets) - start
    if c.table is None:
        c.table = _rows_table(pa.schema(list(schema)[:len(schema) - len(LOG_COLUMNS)], schema.metadata),
                              c.events or [])
    rows = c.table.slice(start)
    arrays: list[Any] = [rows.column(i) for i in range(rows.num_columns)]
    arrays += [
        pa.array(c.event_times[start:], pa.int64()),
        pa.repeat(pa.scalar(ingest_ms, pa.int64()), n),
        pa.repeat(pa.scalar(partition, pa.int32()), n),
        pa.array(c.offsets[start:], pa.int64()),
        pa.array(c.status[start:], pa.string()),
        pa.array(c.reasons[start:], pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _rows_table(schema: pa.Schema, events: Sequence[dict[str, Any] | None]) -> pa.Table:
    """Events (None: an invalid record) as a table of `schema`'s columns, every field nullable."""
    fields = [f.with_nullable(True) for f in schema]
    arrays = [pa.array([None if e is None else e[f.name] for e in events], f.type) for f in fields]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))
