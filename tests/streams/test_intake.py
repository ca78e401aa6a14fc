"""The worker's intake against the real broker: batches capped, nothing lost or repeated, seeks honoured."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition

from feature_store.publish import EventPublisher
from feature_store.settings import Settings
from streams.intake import Intake
from tests.streams.support import events_repo

START = 1_767_225_600_000


async def test_batches_are_capped_and_hold_every_record_once(settings: Settings, unique: str) -> None:
    repo = events_repo(f"intake-{unique}", partitions=2)
    source = repo.sources["events"]
    events = [{"id": f"e{i}", "user": f"u{i % 7}", "shop": "s1", "amount": 1.0, "label": None, "ts": START + i}
              for i in range(250)]
    async with EventPublisher(settings, repo) as publisher:
        assert (await publisher.publish_many("events", events)).ok
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka, enable_auto_commit=False)
    await consumer.start()
    tps = [TopicPartition(source.topic, p) for p in range(source.partitions)]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    intake = Intake(consumer, max_records=100, poll_timeout_ms=100)
    intake.start()
    loop = asyncio.get_running_loop()
    try:
        seen: list[tuple[int, int]] = []
        sizes = []
        while len(seen) < len(events):
            started = loop.time()
            far = len(sizes) < 2  # 250 records: the first two batches fill up before any deadline
            batch = await intake.take(started + (30 if far else 0.5))
            assert not far or loop.time() - started < 10, "a full batch waited for the deadline"
            sizes.append(sum(len(records) for records in batch.values()))
            for tp, records in batch.items():
                offsets = [r.offset for r in records]
                assert offsets == sorted(offsets)
                seen.extend((tp.partition, o) for o in offsets)
        assert sizes[:2] == [100, 100]
        assert max(sizes) <= 100
        assert sorted(seen) == sorted(set(seen))  # none twice
        assert len(seen) == len(events)

        consumer.seek(tps[0], 0)  # read partition 0 again, from the start
        in_p0 = sum(1 for partition, _ in seen if partition == 0)
        again: list[int] = []
        while len(again) < in_p0:
            batch = await intake.take(loop.time() + 0.5)
            assert set(batch) <= {tps[0]}
            again.extend(r.offset for r in batch.get(tps[0], []))
        assert again == list(range(in_p0))
        assert await intake.take(loop.time()) == {}  # nothing new: {} after the poll timeout
    finally:
        await intake.stop()
        await consumer.stop()
