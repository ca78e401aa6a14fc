"""Brute-force oracle of the feature contract: plain Python loops over events, word for word.

Use it to check any implementation (batch SQL, the stream path's Redis state)
on small inputs. API:

    Event(entity, event_time, values, ingest_time=..., tie=..., seq=..., status="applied")
        one source event; `values` maps the view's input columns (source columns
        and transform outputs) to values. `log_event(...)` builds one as the stream
        path logs it (tie = ingest time, seq = partition * 2**40 + offset).
    counts(event, t, ignore_ingest_time=False)            is the event visible at t ("as served")?
    window_events(events, entity, t, agg, ...)             the events a windowed read at t aggregates
    windowed_value(events, entity, t, agg, ...)            the value of an Aggregation at t
    aggregate(function, values)                            a non-`last` aggregate of plain values
    latest_row(events, entity, t, ttl_ms, ...)             the live newest event at t, or None
    feature_values(view, events, entity, t, ...)           {feature: value} of a whole view at t

Contract (DESIGN.md, semantics):
- only `applied` events count; "as served" an event counts at t iff
  event_time <= t and ingest_time <= t (`ignore_ingest_time` drops the latter);
- windowed (window w, hop h): events with floor(t/h)*h - w + h <= event_time <= t;
  no event -> count 0, everything else None; nulls are skipped by every function
  but count('*'); `last` is the newest non-null value by (event_time, tie, seq);
- latest: the newest counting event by (event_time, tie, seq) with event_time > t - ttl.

`write_log(data_dir, source, events)` writes events as the stream path's log
files (`feature_store.offline.layout`), so batch jobs can read them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from feature_store.aggregates import SEQ_PARTITION_SHIFT
from feature_store.definitions import Aggregation, FeatureView, StreamSource
from feature_store.offline.layout import LOG_COLUMNS, log_file_path

__all__ = [
    "Event",
    "close",
    "counts",
    "feature_values",
    "latest_row",
    "log_event",
    "window_events",
    "windowed_value",
    "write_log",
]


@dataclass(frozen=True)
class Event:
    """One source event as the contract sees it."""

    entity: Any
    event_time: int | None
    values: dict[str, Any] = field(default_factory=dict)
    ingest_time: int = 0
    tie: int = 0
    seq: int = 0
    status: str = "applied"
    partition: int = 0
    offset: int = 0

    @property
    def order(self) -> tuple[int, int, int]:
        """Newest-wins order of `last` and latest values."""
        assert self.event_time is not None
        return (self.event_time, self.tie, self.seq)


def log_event(entity: Any, event_time: int | None, values: dict[str, Any], *, ingest_time: int, partition: int,
              offset: int, status: str = "applied") -> Event:
    """An event as the stream path logs it: tie = ingest time, seq = partition * 2**40 + offset."""
    return Event(entity=entity, event_time=event_time, values=values, ingest_time=ingest_time, tie=ingest_time,
                 seq=partition * SEQ_PARTITION_SHIFT + offset, status=status, partition=partition, offset=offset)


def counts(event: Event, t: int, *, ignore_ingest_time: bool = False) -> bool:
    """Applied, event_time <= t, and (as served) ingest_time <= t."""
    if event.status != "applied" or event.event_time is None or event.event_time > t:
        return False
    return ignore_ingest_time or event.ingest_time <= t


def window_events(events: Iterable[Event], entity: Any, t: int, agg: Aggregation, *,
                  ignore_ingest_time: bool = False) -> list[Event]:
    """Events of `entity` a read at t aggregates: floor(t/h)*h - w + h <= event_time <= t."""
    lower = (t // agg.hop_ms) * agg.hop_ms - agg.window_ms + agg.hop_ms
    return [e for e in events
            if e.entity == entity and counts(e, t, ignore_ingest_time=ignore_ingest_time)
            and e.event_time is not None and lower <= e.event_time]


def windowed_value(events: Iterable[Event], entity: Any, t: int, agg: Aggregation, *,
                   ignore_ingest_time: bool = False) -> Any:
    """The aggregation's value at t, from its definition."""
    chosen = window_events(events, entity, t, agg, ignore_ingest_time=ignore_ingest_time)
    if agg.column == "*":
        return len(chosen)
    present = [e for e in chosen if e.values.get(agg.column) is not None]
    if agg.function == "last":
        return max(present, key=lambda e: e.order).values[agg.column] if present else None
    return aggregate(agg.function, [e.values[agg.column] for e in present])


def aggregate(function: str, values: Sequence[Any]) -> Any:
    """count, sum, mean, min, max or stddev of the non-null `values`, from the definition (no value: count 0,
    the others None). `last` needs the events' order, so callers pick the newest themselves."""
    if function == "count":
        return len(values)
    if not values:
        return None
    match function:
        case "sum":
            return math.fsum(values)
        case "mean":
            return math.fsum(values) / len(values)
        case "min":
            return min(values)
        case "max":
            return max(values)
        case "stddev":
            return statistics.stdev(values) if len(values) > 1 else None
    raise AssertionError(function)


def latest_row(events: Iterable[Event], entity: Any, t: int, ttl_ms: int | None, *,
               ignore_ingest_time: bool = False) -> Event | None:
    """The newest counting event of `entity` at t with event_time > t - ttl, or None."""
    live = [e for e in events
            if e.entity == entity and counts(e, t, ignore_ingest_time=ignore_ingest_time)
            and (ttl_ms is None or (e.event_time is not None and e.event_time > t - ttl_ms))]
    return max(live, key=lambda e: e.order) if live else None


def feature_values(view: FeatureView, events: Sequence[Event], entity: Any, t: int, *,
                   ignore_ingest_time: bool = False) -> dict[str, Any]:
    """Every feature of `view` for (entity, t): defaults when no event counts."""
    if view.is_windowed:
        return {a.name: windowed_value(events, entity, t, a, ignore_ingest_time=ignore_ingest_time)
                for a in view.aggregations}
    row = latest_row(events, entity, t, view.ttl_ms, ignore_ingest_time=ignore_ingest_time)
    return {f: None if row is None else row.values.get(f) for f in view.fields}


def close(a: Any, b: Any, *, rel: float = 1e-9, abs_: float = 1e-9) -> bool:
    """Equal, floats within rel/abs 1e-9 (the contract's tolerance)."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=abs_)
    return bool(a == b)


def write_log(data_dir: Path, source: StreamSource, events: Sequence[Event], *, batch: int = 50) -> list[Path]:
    """Write events as event-log files: per partition, offsets in order, `batch` offsets per file.

    Each event's `values` must hold the source's schema columns (missing ones
    are null); `entity` is not written (the key is a schema column).
    """
    schema = source.schema.arrow_schema(epoch_ms=True)
    out_schema = pa.schema([pa.field(f.name, f.type) for f in schema] + list(LOG_COLUMNS))
    written = []
    by_partition: dict[int, list[Event]] = {}
    for event in events:
        by_partition.setdefault(event.partition, []).append(event)
    for partition, part in sorted(by_partition.items()):
        part.sort(key=lambda e: e.offset)
        for i in range(0, len(part), batch):
            chunk = part[i:i + batch]
            columns: dict[str, list[Any]] = {f.name: [e.values.get(f.name) for e in chunk] for f in schema}
            columns |= {
                "__event_time": [e.event_time for e in chunk],
                "__ingest_time": [e.ingest_time for e in chunk],
                "__partition": [partition] * len(chunk),
                "__offset": [e.offset for e in chunk],
                "__status": [e.status for e in chunk],
                "__reason": [None if e.status == "applied" else e.status for e in chunk],
            }
            table = pa.table({name: pa.array(columns[name], type=out_schema.field(name).type) for name in columns},
                             schema=out_schema)
            path = log_file_path(data_dir, source.name, partition, chunk[0].offset, chunk[-1].offset,
                                 max(e.ingest_time for e in chunk))
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
            written.append(path)
    return written
