"""A stream salted with bad events: each ends in the DLQ (or the log as late) with its reason; nothing is lost."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

import streams.materializer as materializer_module
from feature_store.definitions import Aggregation, Entity, FeatureView
from feature_store.errors import BrokerUnavailable
from feature_store.online import KeyLayout, OnlineReader
from feature_store.publish import EventPublisher
from feature_store.repo import FeatureRepo
from feature_store.settings import Settings
from streams.dlq import read_dead_letters
from streams.materializer import Materializer
from tests import oracle
from tests.streams.support import config, consumed, events_repo, oracle_events, read_log, run_until

START = 1_767_225_600_000


def _repo(topic: str) -> FeatureRepo:
    base = events_repo(topic, partitions=2)
    source = base.sources["events"]
    coded = FeatureView(name="coded", entity=Entity(name="user", join_key="user"), source=source,
                        transform={"code": "CAST(label AS INTEGER)"},
                        aggregations=[Aggregation(column="code", function="sum", window="1h", hop="5m",
                                                  name="code_sum_1h")])
    return FeatureRepo.from_definitions([*base.views.values(), coded])


def _event(i: int, ts: int, **overrides: object) -> dict[str, object]:
    event: dict[str, object] = {"id": f"e{i}", "user": f"u{i % 3}", "shop": "s1", "amount": 10.0 + i, "label": "1",
                                "ts": ts}
    event.update(overrides)
    return event


async def test_bad_events_go_to_the_dlq_with_reasons(settings: Settings, unique: str,
                                                     redis_client: aioredis.Redis) -> None:
    repo = _repo(f"bad-{unique}")
    source = repo.sources["events"]
    t = START
    records: list[tuple[bytes, bytes, str]] = []  # (key, value, expected outcome)
    for i in range(60):
        t += 1_000
        records.append((f"u{i % 3}".encode(), orjson.dumps(_event(i, t)), "applied"))
    records += [
        (b"u0", b'{"id": "x1", "user": "u0", ', "not valid JSON"),
        (b"u1", orjson.dumps({"id": "x2", "user": "u1", "shop": "s1", "ts": t}) + b"", "applied"),  # optional fields
        (b"u1", orjson.dumps({"id": "x3", "user": "u1", "shop": "s1", "amount": "ten", "ts": t}), "amount: expected"),
        (b"u2", orjson.dumps({"id": "x4", "user": "u2", "ts": t}), "shop: required field missing"),
        (b"u2", orjson.dumps(_event(900, int(time.time() * 1000) + 3_600_000)), "ahead of the worker clock"),
        (b"u0", orjson.dumps(_event(901, t - 3_600_000)), "late"),  # an hour behind the watermark, lateness 1m
        (b"u1", orjson.dumps(_event(902, t - 3_600_000)), "late"),
        (b"u0", orjson.dumps(_event(903, t, label="oops")), "transform failed"),
        (b"u2", b"[1, 2]", "expected an object"),
    ]
    for i in range(60, 80):
        t += 1_000
        records.append((f"u{i % 3}".encode(), orjson.dumps(_event(i, t)), "applied"))
    async with EventPublisher(settings, repo) as publisher:
        await publisher.send_raw(source.topic, [(k, v, []) for k, v, _ in records])

    materializer = Materializer(config(settings, unique), repo)
    await run_until(materializer, lambda: consumed(materializer, "events") >= len(records))

    log = read_log(Path(settings.data_dir), "events")
    assert log.num_rows == len(records)
    statuses = Counter(log["__status"].to_pylist())
    expected_dlq = [o for _, _, o in records if o not in ("applied", "late")]
    assert statuses == {"applied": sum(o == "applied" for *_, o in records), "late": 2, "invalid": len(expected_dlq)}

    assert settings.kafka is not None
    letters = await read_dead_letters(settings.kafka, source, timeout_s=20)  # type: ignore[arg-type]
    assert len(letters) == len(expected_dlq)
    by_value = {letter.value: letter for letter in letters}
    for _key, value, outcome in records:
        if outcome in expected_dlq:
            letter = by_value[value]
            assert outcome in letter.reason, (outcome, letter.reason)
            assert letter.offset >= 0
    logged_reasons = [r for r in log["__reason"].to_pylist() if r]
    assert sum("older than the watermark" in r for r in logged_reasons) == 2

    reader = OnlineReader(redis_client, KeyLayout(f"t{unique}"))
    for view in repo.views.values():
        events = oracle_events(log, view)
        users = sorted({e.entity for e in events if e.status == "applied"})
        got = await reader.read({view: view.feature_names}, [{view.entity.join_key: u} for u in users], t)
        for user, values in zip(users, got, strict=True):
            want = oracle.feature_values(view, events, user, t, ignore_ingest_time=True)
            for name, expected in want.items():
                assert oracle.close(values[f"{view.name}:{name}"].value, expected), (view.name, user, name)


async def test_a_bad_event_larger_than_the_producer_limit_is_dead_lettered_without_stopping_the_worker(
        settings: Settings, unique: str) -> None:
    """A 2 MB malformed event (another producer allowed it; the broker took it) goes to the DLQ whole, and the
    events after it are applied: the worker's producer must not refuse what its consumer was given."""
    repo = _repo(f"huge-{unique}")
    source = repo.sources["events"]
    huge = b'{"id": "big", "user": "u0", "label": "' + b"x" * 2_000_000  # not valid JSON
    records = [orjson.dumps(_event(0, START)), huge, orjson.dumps(_event(1, START + 1_000))]
    assert settings.kafka is not None
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        for value in records:
            await (await producer.send(source.topic, value=value, key=b"u0"))
    finally:
        await producer.stop()

    materializer = Materializer(config(settings, unique), repo)
    await run_until(materializer, lambda: consumed(materializer, "events") >= len(records), timeout_s=30)
    letters = await read_dead_letters(settings.kafka, source, timeout_s=20)  # type: ignore[arg-type]
    assert [(letter.value, letter.offset) for letter in letters] == [(huge, 1)]
    assert "not valid JSON" in letters[0].reason


async def test_a_worker_that_cannot_send_a_dead_letter_retries_and_still_stops(
        settings: Settings, unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dead letter is refused (the worker's producer limit lowered below it); the worker retries, and a stop
    request ends the retries with an error naming what a restart does, instead of hanging."""
    monkeypatch.setattr(materializer_module, "_MAX_LETTER_BYTES", 1_048_576)
    repo = _repo(f"stuck-{unique}")
    source = repo.sources["events"]
    assert settings.kafka is not None
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        await (await producer.send(source.topic, value=b"{" + b"x" * 2_000_000, key=b"u0"))
    finally:
        await producer.stop()

    materializer = Materializer(config(settings, unique), repo)
    await materializer.start()
    task = asyncio.create_task(materializer.run())
    try:
        await asyncio.sleep(3)  # the batch is prepared and its dead letter refused, retried
        assert not task.done()
        assert consumed(materializer, "events") == 0  # not committed
    finally:
        materializer.request_stop()
        with pytest.raises(BrokerUnavailable, match="a restart sends them again"):
            await asyncio.wait_for(task, 15)
        await materializer.stop()
