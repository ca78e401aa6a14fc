"""The producer side: validation before sending, keying, topics, the SDK, the publish and dlq commands."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from feature_store.errors import BrokerUnavailable, SchemaError
from feature_store.online import partition_for
from feature_store.publish import EventPublisher, ensure_topics
from feature_store.settings import Settings
from streams.dlq import dead_letter_headers
from streams.producer import AsyncProducer, Producer
from tests.streams.support import events_repo

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("featurestream"))
START = 1_767_225_600_000


async def _read_all(bootstrap: str, topic: str, partitions: int, expected: int) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        for _ in range(50):
            batches = await consumer.getmany(timeout_ms=200)
            records += [r for rs in batches.values() for r in rs]
            if len(records) >= expected:
                break
        return records
    finally:
        await consumer.stop()


def _event(i: int, **overrides: Any) -> dict[str, Any]:
    return {"id": f"e{i}", "user": f"u{i % 5}", "shop": "s1", "amount": 1.5 * i, "ts": START + i, **overrides}


async def test_publish_many_validates_before_sending_and_keys_by_entity(settings: Settings, unique: str) -> None:
    repo = events_repo(f"pub-{unique}", partitions=3)
    events: list[Any] = [_event(i) for i in range(20)]
    events[3] = {**events[3], "amount": "lots"}
    events[7] = b"{not json"
    events[9] = _event(9, ts="2026-01-01T00:00:00.250Z")  # normalized to epoch ms before sending
    async with EventPublisher(settings, repo) as publisher:
        result = await publisher.publish_many("events", events)
    assert result.published == 18
    assert [e.index for e in result.errors] == [3, 7]
    assert "amount" in result.errors[0].reason
    assert "not valid JSON" in result.errors[1].reason

    assert settings.kafka is not None
    records = await _read_all(settings.kafka, f"pub-{unique}", 3, 18)
    assert len(records) == 18
    for record in records:
        value = orjson.loads(record.value)
        assert record.key == value["user"].encode()
        assert record.partition == partition_for(value["user"], 3)
    assert {orjson.loads(r.value)["ts"] for r in records if orjson.loads(r.value)["id"] == "e9"} == {START + 250}


async def test_a_large_call_goes_in_producer_batches_keyed_and_ordered_like_single_sends(
        settings: Settings, unique: str) -> None:
    """3,000 events (~2 MB: several 256 KB producer batches per partition) arrive once each, in the
    partition Kafka's default partitioner picks for their key, in call order within a partition."""
    repo = events_repo(f"bulk-{unique}", partitions=3)
    events: list[Any] = [_event(i, user=f"u{i % 37}", label="x" * 600) for i in range(3_000)]
    bad = {5, 1_234, 2_999}
    for i in bad:
        events[i] = {**events[i], "amount": "lots"}
    async with EventPublisher(settings, repo) as publisher:
        result = await publisher.publish_many("events", events)
    assert result.published == 3_000 - len(bad)
    assert {e.index for e in result.errors} == bad

    assert settings.kafka is not None
    records = await _read_all(settings.kafka, f"bulk-{unique}", 3, 3_000 - len(bad))
    ids = [orjson.loads(r.value)["id"] for r in records]
    assert sorted(ids) == sorted(f"e{i}" for i in range(3_000) if i not in bad)
    for partition in range(3):
        order = [int(orjson.loads(r.value)["id"][1:]) for r in records if r.partition == partition]
        assert order == sorted(order)
        assert all(partition_for(f"u{i % 37}", 3) == partition for i in order)


@pytest.mark.parametrize("n", [10, 200])  # one send per event, producer batches
async def test_an_event_too_large_for_kafka_is_refused_alone_at_once(settings: Settings, unique: str, n: int) -> None:
    repo = events_repo(f"large-{n}-{unique}", partitions=2)
    events: list[Any] = [_event(i) for i in range(n)]
    events[2] = _event(2, label="x" * 2_000_000)
    async with EventPublisher(settings, repo, retry_s=30.0) as publisher:
        result = await publisher.publish_many("events", events)
        with pytest.raises(SchemaError, match="make it smaller"):
            await publisher.publish("events", events[2])
    assert result.published == n - 1
    assert [(e.index, e.retriable) for e in result.errors] == [(2, False)]
    assert "2,000,080 bytes" in result.errors[0].reason

    assert settings.kafka is not None
    records = await _read_all(settings.kafka, f"large-{n}-{unique}", 2, n - 1)
    assert sorted(orjson.loads(r.value)["id"] for r in records) == sorted(f"e{i}" for i in range(n) if i != 2)


async def test_ensure_topics_is_idempotent(settings: Settings, unique: str) -> None:
    repo = events_repo(f"topics-{unique}", partitions=3)
    assert settings.kafka is not None
    assert sorted(await ensure_topics(settings.kafka, repo)) == [f"topics-{unique}", f"topics-{unique}.dlq"]
    assert await ensure_topics(settings.kafka, repo) == []
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka)
    await consumer.start()
    try:
        await consumer.topics()
        assert consumer.partitions_for_topic(f"topics-{unique}") == {0, 1, 2}
    finally:
        await consumer.stop()


async def test_async_sdk(settings: Settings, unique: str) -> None:
    repo = events_repo(f"sdk-{unique}")
    async with AsyncProducer(settings, repo) as producer:
        await producer.publish("events", _event(1))
        with pytest.raises(SchemaError, match="user"):
            await producer.publish("events", {**_event(2), "user": None})


def test_sync_sdk(settings: Settings, unique: str) -> None:
    repo = events_repo(f"sdk-{unique}")
    with Producer(settings, repo) as producer:
        producer.publish("events", _event(1))
        result = producer.publish_many("events", [_event(2), {"id": "x"}])
        assert result.published == 1
        assert [e.index for e in result.errors] == [1]
        with pytest.raises(SchemaError):
            producer.publish("events", {"id": "x"})


async def test_kafka_down_is_a_bounded_wait_then_a_clear_error(unique: str) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = events_repo(f"down-{unique}")
    publisher = EventPublisher(f"127.0.0.1:{port}", repo, retry_s=1.0)
    with pytest.raises(BrokerUnavailable, match="unreachable"):
        await publisher.publish("events", _event(1))


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURESTREAM_")}
    env.update({"FEATURESTREAM_KAFKA": str(settings.kafka), "PYTHONPATH": str(ROOT),
                "FEATURESTREAM_REGISTRY": str(Path(settings.data_dir) / "no-registry.db")})
    return subprocess.run([CLI, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def _repo_file(tmp_path: Path, topic: str) -> Path:
    path = tmp_path / "features.py"
    path.write_text("from tests.streams.support import events_repo\n"
                    f"spend = events_repo({topic!r}).views['spend']\n")
    return path


async def test_publish_command_and_dlq_replay_with_fix_file(settings: Settings, unique: str, tmp_path: Path) -> None:
    topic = f"cli-{unique}"
    repo_file = _repo_file(tmp_path, topic)
    lines = [orjson.dumps(_event(i)) for i in range(5)] + [b'{"id": "bad"}']
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    done = _cli(settings, "publish", "events", str(tmp_path / "events.jsonl"), "--repo", str(repo_file))
    assert done.returncode == 1, done.stderr
    assert "published 5 event(s)" in done.stdout
    assert "event 6:" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: 1 event(s)")

    repo = events_repo(topic)
    source = repo.sources["events"]
    broken = orjson.dumps({**_event(99), "amount": "NaN?"})
    async with EventPublisher(settings, repo) as publisher:
        await publisher.send_raw(source.dlq_topic, [
            (b"u4", broken, dead_letter_headers("amount: expected float", topic, 1, 42))])
    fixes = tmp_path / "fixes.jsonl"
    fixes.write_bytes(orjson.dumps({"partition": 1, "offset": 42, "event": _event(99)}) + b"\n")
    done = _cli(settings, "dlq", "replay", "events", "--fix-file", str(fixes), "--repo", str(repo_file))
    assert done.returncode == 0, done.stderr
    assert "re-published: 1" in done.stdout

    assert settings.kafka is not None
    records = await _read_all(settings.kafka, topic, source.partitions, 6)
    assert sorted(orjson.loads(r.value)["id"] for r in records) == ["e0", "e1", "e2", "e3", "e4", "e99"]

    export = tmp_path / "dlq.jsonl"
    done = _cli(settings, "dlq", "export", "events", str(export), "--repo", str(repo_file))
    assert done.returncode == 0, done.stderr
    exported = [orjson.loads(line) for line in export.read_bytes().splitlines()]
    assert exported == [{"partition": 1, "offset": 42, "reason": "amount: expected float",
                         "event": orjson.loads(broken)}]


async def test_send_raw_says_what_it_could_not_send(settings: Settings, unique: str) -> None:
    repo = events_repo(f"raw-{unique}")
    async with EventPublisher(settings, repo) as publisher:
        with pytest.raises(SchemaError, match=r"1 of 2 records were not sent .*record 1: the event is 2,000,00"):
            await publisher.send_raw(f"raw-{unique}", [(b"u1", b"{}", []), (b"u1", b"x" * 2_000_000, [])])
