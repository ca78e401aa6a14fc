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

from feature_store.aggregates import NO_ORDER, SEQ_PARTITION_SHIFT
from feature_store.definitions import StreamSource
from feature_store.offline.layout import LOG_COLUMNS

__all__ = ["APPLIED", "INVALID", "LATE", "Classified", "classify", "log_schema"]

APPLIED, LATE, INVALID = "applied", "late", "invalid"


@dataclass
class Classified:
    """Per record (aligned with the input): normalized event, status and reason."""

    offsets: list[int]
    events: list[dict[str, Any] | None]
    event_times: list[int | None]
    status: list[str]
    reasons: list[str | None]
    watermark: int  # after the batch
    dlq: list[int] = field(default_factory=list)  # record indexes bound for the dead-letter topic

    def applied(self) -> list[int]:
        return [i for i, s in enumerate(self.status) if s == APPLIED]

    def reject(self, index: int, reason: str) -> None:
        """Turn an applied event into an invalid one (its transform failed)."""
        self.status[index] = INVALID
        self.reasons[index] = reason
        self.dlq.append(index)


def classify(source: StreamSource, values: Sequence[bytes | None], offsets: Sequence[int], watermark: int,
             now_ms: int) -> Classified:
    """Validate and classify raw record values of one partition, in offset order."""
    n = len(values)
    out = Classified(offsets=list(offsets), events=[None] * n, event_times=[None] * n, status=[INVALID] * n,
                     reasons=[None] * n, watermark=watermark)
    result = source.schema.validate_batch([b"null" if v is None else v for v in values])
    for index, reason in result.invalid:
        out.reasons[index] = reason
        out.dlq.append(index)
    column = source.event_time
    lateness = source.allowed_lateness_ms
    horizon = now_ms + source.future_tolerance_ms
    wm = watermark
    for index, event in zip(result.valid_index, result.valid, strict=True):
        et = event[column]
        out.events[index] = event
        if et > horizon:
            out.reasons[index] = (f"{column}: {et} is more than {source.future_tolerance_ms} ms ahead of the "
                                  f"worker clock ({now_ms}); fix the producer's clock or the timestamp")
            out.dlq.append(index)
        elif wm != NO_ORDER and et < wm - lateness:
            out.status[index] = LATE
            out.event_times[index] = et
            out.reasons[index] = f"{column}: {et} is older than the watermark {wm} minus allowed lateness {lateness} ms"
        else:
            out.status[index] = APPLIED
            out.event_times[index] = et
            if et > wm:
                wm = et
    out.dlq.sort()
    out.watermark = wm
    return out


def applied_table(source: StreamSource, c: Classified, indexes: Sequence[int], partition: int, tie: int) -> pa.Table:
    """The applied rows as DuckDB sees them: schema columns plus __event_time, __tie, __seq, __partition."""
    events = [c.events[i] for i in indexes]
    table = source.schema.to_arrow(events)  # type: ignore[arg-type]  # applied rows are validated events
    base = partition * SEQ_PARTITION_SHIFT
    table = table.append_column("__event_time", pa.array([c.event_times[i] for i in indexes], pa.int64()))
    table = table.append_column("__tie", pa.array([tie] * len(indexes), pa.int64()))
    table = table.append_column("__seq", pa.array([base + c.offsets[i] for i in indexes], pa.int64()))
    return table.append_column("__partition", pa.array([partition] * len(indexes), pa.int64()))


def log_schema(source: StreamSource) -> pa.Schema:
    """Event log columns: the schema's (all nullable: invalid rows have none) plus LOG_COLUMNS."""
    base = source.schema.arrow_schema(epoch_ms=True)
    fields = [f.with_nullable(True) for f in base] + list(LOG_COLUMNS)
    return pa.schema(fields, metadata=base.metadata)


def log_table(schema: pa.Schema, c: Classified, start: int, partition: int, ingest_ms: int) -> pa.Table:
    """Log rows of records `start..` of the batch (earlier ones are already durable in the log)."""
    events = c.events[start:]
    n = len(events)
    arrays = []
    for f in schema:
        name = f.name
        if name == "__event_time":
            values: list[Any] = c.event_times[start:]
        elif name == "__ingest_time":
            values = [ingest_ms] * n
        elif name == "__partition":
            values = [partition] * n
        elif name == "__offset":
            values = c.offsets[start:]
        elif name == "__status":
            values = c.status[start:]
        elif name == "__reason":
            values = c.reasons[start:]
        else:
            values = [None if e is None else e[name] for e in events]
        arrays.append(pa.array(values, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)
