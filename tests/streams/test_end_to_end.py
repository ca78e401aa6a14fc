"""Publish a generated stream, run the worker, and check Redis against the oracle and the batch path."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import redis
import redis.asyncio as aioredis

from feature_store.aggregates import NO_ORDER
from feature_store.offline.engine import connect
from feature_store.offline.training import TrainingSetQuery, output_name, training_set
from feature_store.online import KeyLayout, OnlineReader, partition_for
from feature_store.online.client import OnlineClient, open_online
from feature_store.publish import EventPublisher
from feature_store.settings import Settings
from feature_store.worker_reports import read_reports
from streams.materializer import Materializer, MaterializerConfig
from tests import oracle
from tests.streams.support import (
    assert_values_equal,
    config,
    consumed,
    events_repo,
    oracle_events,
    read_log,
    read_times,
    run_until,
)

START = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def generate(n: int, *, seed: int, users: int = 6, shops: int = 3, disorder_ms: int = 90_000) -> list[dict[str, Any]]:
    """Events over ~3 h with nulls, ties and some disorder (part of it beyond the 1 min lateness)."""
    rng = random.Random(seed)
    clock = START
    out = []
    for i in range(n):
        clock += rng.randrange(0, 40_000)
        ts = clock - (rng.randrange(disorder_ms) if rng.random() < 0.15 else 0)
        out.append({"id": f"e{i}", "user": f"u{rng.randrange(users)}", "shop": f"s{rng.randrange(shops)}",
                    "amount": None if rng.random() < 0.1 else round(rng.uniform(1, 100), 2),
                    "label": rng.choice(["a", "b", None]), "ts": ts})
    return out


def expected_status(events: list[dict[str, Any]], partitions: int, lateness_ms: int) -> dict[str, str]:
    """Brute force: per partition in publish order, late iff older than the max seen minus lateness."""
    watermark: dict[int, int] = {}
    status = {}
    for e in events:
        p = partition_for(e["user"], partitions)
        wm = watermark.get(p, NO_ORDER)
        if wm != NO_ORDER and e["ts"] < wm - lateness_ms:
            status[e["id"]] = "late"
        else:
            status[e["id"]] = "applied"
            watermark[p] = max(wm, e["ts"])
    return status


async def test_stream_into_redis_equals_oracle_and_batch_path(settings: Settings, unique: str,
                                                              redis_client: aioredis.Redis) -> None:
    await _stream_equals_oracle_and_batch_path(settings, unique, redis_client, config(settings, unique, max_records=97))


async def test_stream_into_a_redis_cluster_equals_oracle_and_batch_path(settings: Settings, unique: str,
                                                                        redis_cluster_url: str) -> None:
    """The same on a 3-node cluster: scripts and reads go to the node of their partition's hash tag (the
    `shops` view reads every partition, so one read spans nodes); the cluster starts without the script."""
    cluster = open_online(redis_cluster_url, cluster=True)
    try:
        await _stream_equals_oracle_and_batch_path(settings, unique, cluster, config(
            settings, unique, max_records=97, redis_url=redis_cluster_url, redis_cluster=True))
    finally:
        await cluster.aclose()


async def _stream_equals_oracle_and_batch_path(settings: Settings, unique: str, client: OnlineClient,
                                               worker: MaterializerConfig) -> None:
    repo = events_repo(f"ev-{unique}")
    events = generate(500, seed=11)
    async with EventPublisher(settings, repo) as publisher:
        result = await publisher.publish_many("events", events)
    assert result.ok, result.errors[:3]

    materializer = Materializer(worker, repo)  # many small batches
    await run_until(materializer, lambda: consumed(materializer, "events") >= len(events))

    data_dir = Path(settings.data_dir)
    log = read_log(data_dir, "events")
    assert log.num_rows == len(events)
    assert len(set(zip(log["__partition"].to_pylist(), log["__offset"].to_pylist(), strict=True))) == len(events)
    want_status = expected_status(events, 2, 60_000)
    got_status = dict(zip(log["id"].to_pylist(), log["__status"].to_pylist(), strict=True))
    assert got_status == want_status
    assert "late" in got_status.values()

    reader = OnlineReader(client, KeyLayout(f"t{unique}"))
    con = connect(data_dir, threads=1)
    for view in repo.views.values():
        logged = oracle_events(log, view)
        entities = sorted({e.entity for e in logged})
        times = read_times(events)
        rows = [{view.entity.join_key: entity} for t in times for entity in entities]
        batch = training_set(con, data_dir, pa.Table.from_pylist(
            [{**r, "t": t} for t in times for r in [{view.entity.join_key: e} for e in entities]]),
            TrainingSetQuery(features={view: view.feature_names}, timestamp_column="t", ignore_ingest_time=True))
        batch_rows = batch.to_pylist()
        index = 0
        for t in times:
            online = await reader.read({view: view.feature_names}, rows[index:index + len(entities)], t)
            for entity, got in zip(entities, online, strict=True):
                want = oracle.feature_values(view, logged, entity, t, ignore_ingest_time=True)
                context = f"{view.name} {entity} t={t}"
                assert_values_equal({f: got[f"{view.name}:{f}"] for f in want}, want, context)
                from_batch = {f: batch_rows[index][output_name(view, f)] for f in want}
                for name, value in want.items():
                    assert oracle.close(from_batch[name], value), f"{context} {name}: batch {from_batch[name]!r}"
                index += 1


async def test_batches_are_paced_and_hold_the_events_that_arrived_meanwhile(settings: Settings, unique: str) -> None:
    """Small fetches cost about what large ones do, so the worker processes at most one batch per
    `min_fetch_interval_ms`; it drains the consumer meanwhile, so a batch holds the events published up to
    its start (a buffer left to wait out the interval held them one interval longer)."""
    interval_s = 0.3
    repo = events_repo(f"pace-{unique}")
    materializer = Materializer(config(settings, unique, min_fetch_interval_ms=int(interval_s * 1000)), repo)
    prepare = materializer._prepare_all
    batches: list[tuple[float, int]] = []  # (wall clock ms the batch started, newest event's publish time ms)

    def timed(selected: Any) -> Any:  # the real step, its start and its newest event noted
        newest = max(int(orjson.loads(r.value)["id"]) for _, _, records in selected for r in records)
        batches.append((time.time() * 1000, newest))
        return prepare(selected)

    materializer._prepare_all = timed  # type: ignore[method-assign]
    await materializer.start()
    task = asyncio.create_task(materializer.run())
    while not materializer._parts:  # the group is joined
        await asyncio.sleep(0.05)
    published = 0
    async with EventPublisher(settings, repo, linger_ms=0) as publisher:
        for _ in range(100):  # an event every 20 ms for 2 s, its publish time as its id
            now = time.time_ns() // 1_000_000
            event = {"id": str(now), "user": f"u{published % 5}", "shop": "s1", "amount": 1.0, "label": None,
                     "ts": now}
            assert (await publisher.publish_many("events", [event])).ok
            published += 1
            await asyncio.sleep(0.02)
    deadline = time.monotonic() + 10
    while consumed(materializer, "events") < published and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    materializer.request_stop()
    await task
    await materializer.stop()
    assert consumed(materializer, "events") == published
    starts = [started for started, _ in batches]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert len(batches) >= 4, batches
    assert min(gaps) >= interval_s * 1000 - 5, gaps
    lags = sorted(started - newest for started, newest in batches)
    assert lags[len(lags) // 2] < interval_s * 1000 / 2, lags


def _lag_partitions(materializer: Materializer) -> set[str]:
    return {sample.labels["partition"] for metric in materializer.metrics.lag.collect() for sample in metric.samples}


def _reported(settings: Settings, unique: str) -> dict[str, set[int]]:
    """Per worker, the partitions its status report in Redis says it holds."""
    assert settings.redis is not None
    with redis.Redis.from_url(settings.redis) as client:
        reports = read_reports(client, KeyLayout(f"t{unique}"), time.time_ns() // 1_000_000)
    return {r["worker"]: {p["partition"] for p in r["partitions"]} for r in reports}


async def test_lag_and_reports_cover_only_the_partitions_a_worker_holds(settings: Settings, unique: str) -> None:
    """Each worker reports lag for the partitions it holds, in its gauges and in its status report in Redis;
    when a second worker joins and takes some, the first stops reporting them (a kept gauge would read as a
    partition stuck at its last lag), and a stopped worker reports none and withdraws its report."""
    repo = events_repo(f"lag-{unique}", partitions=4)
    first = Materializer(config(settings, unique, report_every_s=0.2), repo)
    second = Materializer(config(settings, unique, report_every_s=0.2), repo)
    await first.start()
    task = asyncio.create_task(first.run())
    try:
        async with EventPublisher(settings, repo, linger_ms=0) as publisher:
            events = generate(40, seed=3, users=12)
            assert (await publisher.publish_many("events", events)).ok
        deadline = time.monotonic() + 30
        while _lag_partitions(first) != {"0", "1", "2", "3"}:
            assert time.monotonic() < deadline, _lag_partitions(first)
            await asyncio.sleep(0.1)
        await second.start()
        other = asyncio.create_task(second.run())
        try:
            while not second._parts or len(first._parts) + len(second._parts) != 4:
                assert time.monotonic() < deadline + 30, "the group did not rebalance"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # a few batch loops: each worker's gauges cover its partitions
            held = {str(tp.partition) for tp in first._parts}
            assert 0 < len(held) < 4
            assert _lag_partitions(first) == held
            assert _reported(settings, unique) == {first.name: {tp.partition for tp in first._parts},
                                                   second.name: {tp.partition for tp in second._parts}}
        finally:
            second.request_stop()
            await other
            await second.stop()
        assert not _lag_partitions(second)
        assert set(_reported(settings, unique)) == {first.name}, "a stopped worker withdraws its report"
    finally:
        first.request_stop()
        await task
        await first.stop()
    assert not _lag_partitions(first)
    assert _reported(settings, unique) == {}
