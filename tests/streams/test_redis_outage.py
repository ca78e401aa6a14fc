"""Redis goes away (and comes back empty): the worker waits, then rebuilds the online state exactly once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import redis.asyncio as aioredis

from feature_store.local_stack import LocalStack
from feature_store.online import KeyLayout, OnlineReader
from feature_store.publish import EventPublisher
from feature_store.settings import load_settings
from streams.materializer import Materializer
from tests import oracle
from tests.streams.snapshot import log_rows
from tests.streams.support import config, consumed, events_repo, oracle_events, read_log
from tests.streams.test_end_to_end import generate


async def test_worker_rides_out_a_redis_outage(private_redis: LocalStack, kafka_bootstrap: str, unique: str,
                                               tmp_path: Path) -> None:
    settings = load_settings(kafka=kafka_bootstrap, redis=private_redis.redis_url, data_dir=tmp_path / "data")
    repo = events_repo(f"outage-{unique}")
    events = generate(300, seed=3, disorder_ms=1)
    materializer = Materializer(config(settings, unique), repo)
    await materializer.start()
    task = asyncio.create_task(materializer.run())
    try:
        async with EventPublisher(settings, repo) as publisher:
            assert (await publisher.publish_many("events", events[:150])).ok
            while consumed(materializer, "events") < 150:
                await asyncio.sleep(0.05)
            private_redis.stop_redis()
            assert (await publisher.publish_many("events", events[150:])).ok
            await asyncio.sleep(2)  # the worker retries the batch meanwhile
            assert not task.done()
            private_redis.start_redis()  # empty: the stored offsets are gone too
        # `consumed` counts the replay after the restart too: wait for the event log to hold every event (logged
        # after its apply; the replay applies each partition in offset order, so all are applied by then)
        deadline = time.monotonic() + 60
        while len(log_rows(Path(settings.data_dir), "events")) < len(events):
            assert not task.done()
            assert time.monotonic() < deadline, "the worker did not apply and log every event"
            await asyncio.sleep(0.1)
    finally:
        materializer.request_stop()
        await task
        await materializer.stop()

    fenced = sum(s.value for m in materializer.metrics.fenced.collect() for s in m.samples if s.name.endswith("_total"))
    assert fenced >= 1  # the store refused the batch meant for the lost state
    data_dir = Path(settings.data_dir)
    rows = log_rows(data_dir, "events")
    assert sum(rows.values()) == len(events)
    assert max(rows.values()) == 1
    log = read_log(data_dir, "events")
    redis = aioredis.Redis.from_url(private_redis.redis_url)
    try:  # ... and the worker re-applied everything from offset 0
        reader = OnlineReader(redis, KeyLayout(f"t{unique}"))
        newest = max(e["ts"] for e in events)
        for view in repo.views.values():
            logged = oracle_events(log, view)
            entities = sorted({e.entity for e in logged})
            got = await reader.read({view: view.feature_names}, [{view.entity.join_key: e} for e in entities], newest)
            for entity, values in zip(entities, got, strict=True):
                want = oracle.feature_values(view, logged, entity, newest, ignore_ingest_time=True)
                for name, expected in want.items():
                    assert oracle.close(values[f"{view.name}:{name}"].value, expected), (view.name, entity, name)
    finally:
        await redis.aclose()
