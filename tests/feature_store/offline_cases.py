"""Shared test material for the batch-path tests: a small schema, views of every kind, log writers.

Not a test module (no `test_` prefix): the oracle, training-set and
materialization tests import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from feature_store.definitions import Aggregation, BatchSource, Entity, FeatureView, StreamSource
from feature_store.examples.card_fraud import features as card
from feature_store.examples.card_fraud.data import TransactionGenerator
from feature_store.online import partition_for
from schemas import EventSchema, Field
from tests.oracle import Event, log_event, write_log

SCHEMA = EventSchema(name="ev", version=1, fields={
    "k": Field("string"),
    "x": Field("float", nullable=True),
    "n": Field("int", nullable=True),
    "s": Field("string", nullable=True),
    "ts": Field("timestamp"),
    "ct": Field("timestamp"),
})
ENTITY = Entity(name="thing", join_key="k")
FUNCTIONS = ("count", "sum", "mean", "min", "max", "last", "stddev")


def stream_source(name: str = "ev", partitions: int = 3) -> StreamSource:
    return StreamSource(name=name, schema=SCHEMA, event_time="ts", key="k", partitions=partitions)


def batch_source(name: str = "evb", partitions: int = 1) -> BatchSource:
    return BatchSource(name=name, schema=SCHEMA, path=f"sources/{name}/*.parquet", event_time="ts",
                       created_time="ct", key="k", partitions=partitions)


def every_aggregation(combos: Sequence[tuple[int, int]]) -> list[Aggregation]:
    """Every function over x (float), min/max/last over n (int), last over s, count(*): per (hop, window)."""
    aggs = []
    for i, (hop, window) in enumerate(combos):
        def agg(column: str, function: str, *, hop: int = hop, window: int = window, i: int = i) -> Aggregation:
            label = "all" if column == "*" else column
            return Aggregation(column=column, function=function, window=window, hop=hop, name=f"{label}_{function}_{i}")
        aggs += [agg("x", f) for f in FUNCTIONS]
        aggs += [agg("n", f) for f in ("min", "max", "last", "sum")] + [agg("s", "last"), agg("*", "count")]
    return aggs


def windowed_view(source: StreamSource | BatchSource, combos: Sequence[tuple[int, int]],
                  name: str = "win") -> FeatureView:
    return FeatureView(name=name, entity=ENTITY, source=source, aggregations=every_aggregation(combos))


def latest_view(source: StreamSource | BatchSource, ttl: int | None, name: str = "lat") -> FeatureView:
    return FeatureView(name=name, entity=ENTITY, source=source, fields=["x", "n", "s"], ttl=ttl)


def values(entity: str, ts: int, x: float | None = None, n: int | None = None, s: str | None = None,
           ct: int | None = None) -> dict[str, Any]:
    return {"k": entity, "x": x, "n": n, "s": s, "ts": ts, "ct": ts if ct is None else ct}


class LogBuilder:
    """Appends events the way the stream path logs them: offsets per partition in arrival order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._next: dict[int, int] = {}

    def add(self, entity: str, ts: int | None, *, ingest: int, partition: int = 0, status: str = "applied",
            **fields: Any) -> Event:
        offset = self._next.get(partition, 0)
        self._next[partition] = offset + 1
        row = values(entity, ts if ts is not None else 0, **fields)
        if ts is None:
            row["ts"] = None
        event = log_event(entity, ts, row, ingest_time=ingest, partition=partition, offset=offset, status=status)
        self.events.append(event)
        return event


def write_batch(data_dir: Path, source: BatchSource, rows: Sequence[dict[str, Any]]) -> list[Event]:
    """Write rows as one BatchSource file; return them as oracle events (tie = created, seq = row number)."""
    path = data_dir / source.path.replace("*", "part-0")
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = SCHEMA.arrow_schema(epoch_ms=True)
    table = pa.table({f.name: pa.array([r.get(f.name) for r in rows], f.type) for f in schema})
    pq.write_table(table, path)
    return [Event(entity=r["k"], event_time=r["ts"], values=dict(r), ingest_time=r["ct"], tie=r["ct"], seq=i)
            for i, r in enumerate(rows)]


def entity_rows(rows: Sequence[tuple[str, int]]) -> pa.Table:
    return pa.table({"k": [r[0] for r in rows], "event_timestamp": pa.array([r[1] for r in rows], pa.int64()),
                     "label": list(range(len(rows)))})


def logged_transactions(data_dir: Path, gen: TransactionGenerator, count: int) -> list[Event]:
    """`count` card transactions from `gen`, written to the event log as the stream path logs them (ingested
    0.5 s after they happen, offsets per partition; files of 40 rows)."""
    offsets: dict[int, int] = {}
    events = []
    for raw, _ in gen.events(count):
        event = card.transactions_v1.validate(raw)
        p = partition_for(event["user_id"], card.transactions.partitions)
        offsets[p] = offsets.get(p, -1) + 1
        events.append(log_event(event["user_id"], event["ts"], event, ingest_time=event["ts"] + 500, partition=p,
                                offset=offsets[p]))
    write_log(data_dir, card.transactions, events, batch=40)
    return events
