"""Shared pieces of the stream-path tests: a small repo per test, running a worker, reading results."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute  # pa.compute
import pyarrow.parquet as pq

from feature_store.definitions import Aggregation, Entity, FeatureView, StreamSource
from feature_store.examples.card_fraud import features as card_fraud
from feature_store.offline.layout import log_files
from feature_store.repo import FeatureRepo
from feature_store.settings import Settings
from schemas import EventSchema, Field
from streams.materializer import Materializer, MaterializerConfig
from tests import oracle

EVENTS_SCHEMA = EventSchema(name="events", version=1, fields={
    "id": Field("string"),
    "user": Field("string"),
    "shop": Field("string"),
    "amount": Field("float", required=False, nullable=True),
    "label": Field("string", required=False, nullable=True),
    "ts": Field("timestamp"),
})


def events_repo(topic: str, *, partitions: int = 2, lateness: str = "1m") -> FeatureRepo:
    """Every aggregation function, two hops, a cross-partition view and a latest view over one source."""
    source = StreamSource(name="events", schema=EVENTS_SCHEMA, event_time="ts", key="user", topic=topic,
                          partitions=partitions, allowed_lateness=lateness, future_tolerance="5m")
    user = Entity(name="user", join_key="user")
    shop = Entity(name="shop", join_key="shop")
    aggs = [Aggregation(column="*", function="count", window="10m", hop="5m", name="n_10m"),
            Aggregation(column="amount", function="count", window="10m", hop="5m", name="amount_n_10m"),
            Aggregation(column="amount", function="sum", window="10m", hop="5m", name="sum_10m"),
            Aggregation(column="amount", function="mean", window="2h", hop="1h", name="mean_2h"),
            Aggregation(column="amount", function="min", window="10m", hop="5m", name="min_10m"),
            Aggregation(column="amount", function="max", window="2h", hop="1h", name="max_2h"),
            Aggregation(column="amount", function="stddev", window="2h", hop="1h", name="std_2h"),
            Aggregation(column="amount", function="last", window="10m", hop="5m", name="last_amount_10m"),
            Aggregation(column="label", function="last", window="2h", hop="1h", name="last_label_2h"),
            Aggregation(column="big", function="sum", window="10m", hop="5m", name="big_sum_10m")]
    spend = FeatureView(name="spend", entity=user, source=source, aggregations=aggs,
                        transform={"big": "CASE WHEN amount > 50 THEN 1 ELSE 0 END"})
    shops = FeatureView(name="shops", entity=shop, source=source,
                        aggregations=[Aggregation(column="*", function="count", window="1h", hop="5m", name="n_1h"),
                                      Aggregation(column="amount", function="mean", window="1h", hop="5m",
                                                  name="mean_1h")])
    last = FeatureView(name="last", entity=user, source=source, fields=["amount", "label", "shop"], ttl="1h")
    return FeatureRepo.from_definitions([spend, shops, last])


ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("featurestream"))


def spawn_worker(settings: Settings, data_dir: Path, prefix: str, group: str, *args: str, registry: Path | None = None,
                 log_level: str = "WARNING") -> subprocess.Popen[bytes]:
    """A real `featurestream worker ARGS` process (its own session, output appended to a log file in `data_dir`'s
    parent), with the short consumer timings that keep rebalances after a kill quick."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURESTREAM_")}
    env.update({"FEATURESTREAM_KAFKA": str(settings.kafka), "FEATURESTREAM_REDIS": str(settings.redis),
                "FEATURESTREAM_DATA_DIR": str(data_dir), "FEATURESTREAM_ONLINE_PREFIX": prefix,
                "FEATURESTREAM_WORKER_GROUP": group,
                "FEATURESTREAM_REGISTRY": str(registry or data_dir / "no-registry.db"),
                "FEATURESTREAM_LOG_LEVEL": log_level, "PYTHONPATH": str(ROOT),
                # a dead member leaves the group after the session timeout: keep restarts short
                "FEATURESTREAM_KAFKA_SESSION_TIMEOUT_S": "3", "FEATURESTREAM_KAFKA_HEARTBEAT_S": "0.5"})
    log = open(worker_log(data_dir, group), "ab")  # noqa: SIM115  # closed by the child's exit
    return subprocess.Popen([CLI, "worker", *args], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def worker_log(data_dir: Path, group: str) -> Path:
    """Where `spawn_worker` writes the output of the workers of `group`."""
    return data_dir.parent / f"worker-{group}.log"


def card_fraud_repo(topic: str) -> FeatureRepo:
    source = dataclasses.replace(card_fraud.transactions, topic=topic)
    views = [dataclasses.replace(v, source=source) for v in
             (card_fraud.user_spend, card_fraud.merchant_activity, card_fraud.user_last_txn)]
    return FeatureRepo.from_definitions(views)


def config(settings: Settings, unique: str, **overrides: Any) -> MaterializerConfig:
    assert settings.kafka is not None
    assert settings.redis is not None
    values: dict[str, Any] = {"bootstrap": settings.kafka, "redis_url": settings.redis,
                              "data_dir": Path(settings.data_dir), "group_id": f"g-{unique}",
                              "prefix": f"t{unique}", "log_max_age_s": 0.5}
    values.update(overrides)
    return MaterializerConfig(**values)


async def run_until(materializer: Materializer, done: Any, *, timeout_s: float = 60.0) -> None:
    """Run the worker until `done()` holds (polled), then stop it cleanly."""
    await materializer.start()
    task = asyncio.create_task(materializer.run())
    try:
        deadline = time.monotonic() + timeout_s
        while not done():
            if task.done():
                task.result()
            assert time.monotonic() < deadline, "the worker did not finish in time"
            await asyncio.sleep(0.1)
    finally:
        materializer.request_stop()
        await task
        await materializer.stop()


def consumed(materializer: Materializer, source: str) -> int:
    """Events counted by status so far (applied + late + invalid)."""
    total = 0.0
    for metric in materializer.metrics.events.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels["source"] == source:
                total += sample.value
    return int(total)


def read_log(data_dir: Path, source: str) -> pa.Table:
    files = log_files(data_dir, source)
    if not files:
        return pa.table({})
    return pa.concat_tables([pq.read_table(f).replace_schema_metadata(None) for f in files])


def oracle_events(log: pa.Table, view: FeatureView) -> list[oracle.Event]:
    """The applied logged events as the oracle sees them (values: source columns plus the view's transform)."""
    import duckdb

    from feature_store.transforms import transformed_sql

    con = duckdb.connect()
    con.register("log", log.filter(pa.compute.equal(log["__status"], "applied")))  # only applied rows count
    rows = con.sql(transformed_sql("log", view.transform)).to_arrow_table().to_pylist()
    return [oracle.log_event(r[view.entity.join_key], r["__event_time"], r, ingest_time=r["__ingest_time"],
                             partition=r["__partition"], offset=r["__offset"], status=r["__status"])
            for r in rows]


def assert_values_equal(got: dict[str, Any], want: dict[str, Any], context: str) -> None:
    for name, expected in want.items():
        value = got[name].value
        assert oracle.close(value, expected), f"{context} {name}: online {value!r} != oracle {expected!r}"


def read_times(events: Sequence[dict[str, Any]], column: str = "ts") -> list[int]:
    """Read times that exercise the windows: at the newest event, and past it by growing gaps."""
    newest = max(int(e[column]) for e in events)
    return [newest, newest + 60_000, newest + 11 * 60_000, newest + 2 * 3_600_000, newest + 9 * 86_400_000]
