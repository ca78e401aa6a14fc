"""Publish validated events to a stream source's topic: the code the SDK and HTTP push share.

Events are validated against the source's schema *before* anything is sent;
bad ones come back as per-event errors and never reach Kafka. Good ones are
sent as orjson of the normalized event (timestamps as epoch ms), keyed by
`entity_key_bytes(event[source.key])`, to the partition Kafka's default
partitioner picks for that key (`partition_for`).

A call's events for one partition go in producer batches when there are
many (aiokafka queues at most one batch per partition, the rest waits), one
`send` each when there are few (at most `max_in_flight` of those wait for
acknowledgement at once; callers beyond that wait for room): a bounded
buffer, not unbounded memory. When Kafka is down, sends are retried with
bounded backoff for at most `retry_s`. An event over the producer's record
size limit (`MAX_RECORD_BYTES`) is refused at once, alone, with its size.
Delivery is at-least-once: an event retried after a lost acknowledgement
may arrive twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from feature_store.definitions import StreamSource
from feature_store.errors import BrokerUnavailable, ConfigError, SchemaError, UnknownFeatureError
from feature_store.online.keys import entity_key_bytes, partition_of_key
from feature_store.repo import FeatureRepo
from feature_store.settings import Settings

__all__ = ["EventPublisher", "PublishError", "PublishResult", "ensure_topics", "send_in_batches", "stream_source"]

log = structlog.get_logger("featurestream.publish")

_Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]
"""(key, value, headers) of one Kafka record."""

_BATCH_FROM = 32
"""Records of one call for one partition sent as producer batches from this many on (see `_hand_over`)."""

MAX_RECORD_BYTES = 1_048_576
"""The largest record the producer sends (aiokafka's `max_request_size`, set explicitly). A broker's
`message.max.bytes` may be lower; its refusal is then retried and reported like an outage."""

_RECORD_OVERHEAD = 1_024
"""Room kept for the record's and its batch's framing when checking a record against MAX_RECORD_BYTES."""


@dataclass(frozen=True, slots=True)
class PublishError:
    """Why event `index` (its position in the call) was not published."""

    index: int
    reason: str
    retriable: bool = True  # False: sending it again cannot work (the event must change)


@dataclass(frozen=True, slots=True)
class PublishResult:
    published: int
    errors: list[PublishError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _bootstrap(settings_or_bootstrap: Settings | str) -> str:
    if isinstance(settings_or_bootstrap, str):
        return settings_or_bootstrap
    if not settings_or_bootstrap.kafka:
        raise ConfigError("no Kafka to publish to: set FEATURESTREAM_KAFKA (or run `featurestream up`)")
    return settings_or_bootstrap.kafka


def stream_source(repo: FeatureRepo, source: str | StreamSource) -> StreamSource:
    """The StreamSource named `source` (events can only be published to stream sources)."""
    if isinstance(source, StreamSource):
        return source
    found = repo.source(source)
    if not isinstance(found, StreamSource):
        streams = sorted(s.name for s in repo.sources.values() if isinstance(s, StreamSource))
        raise UnknownFeatureError(f"source {source!r} is a batch source; publish to a stream source ({streams})")
    return found


class EventPublisher:
    """Validates and sends events of a repo's stream sources; use `async with` or start()/stop()."""

    def __init__(self, settings_or_bootstrap: Settings | str, repo: FeatureRepo, *, max_in_flight: int = 50_000,
                 retry_s: float = 30.0, linger_ms: int = 5, create_topics: bool = True) -> None:
        self.bootstrap = _bootstrap(settings_or_bootstrap)
        self.repo = repo
        self._retry_s = retry_s
        self._create_topics = create_topics
        self._linger_ms = linger_ms
        self._room = asyncio.Semaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        self._producer: AIOKafkaProducer | None = None
        self._start_lock = asyncio.Lock()

    async def __aenter__(self) -> EventPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connect to Kafka, retrying for up to `retry_s` (raises BrokerUnavailable after that).

        With `create_topics` (the default) the repo's topics are created first, so a producer's
        auto-creation never makes a topic with the broker's default partition count.
        """
        async with self._start_lock:
            if self._producer is not None:
                return
            if self._create_topics:
                await ensure_topics(self.bootstrap, self.repo)
            deadline = time.monotonic() + self._retry_s
            delay = 0.1
            while True:
                producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=self._linger_ms,
                                            max_batch_size=256 * 1024, max_request_size=MAX_RECORD_BYTES,
                                            request_timeout_ms=10_000)
                try:
                    await producer.start()
                    self._producer = producer
                    return
                except KafkaError as exc:
                    await producer.stop()
                    if time.monotonic() + delay > deadline:
                        raise BrokerUnavailable(
                            f"Kafka at {self.bootstrap} is unreachable ({type(exc).__name__}); start it or fix "
                            f"FEATURESTREAM_KAFKA") from None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(self, source: str | StreamSource, event: Mapping[str, Any]) -> None:
        """Validate and send one event; raises SchemaError (what to fix) or BrokerUnavailable."""
        src = stream_source(self.repo, source)
        normalized = src.schema.validate(event)
        result = await self._send(src, [normalized], [0])
        if result:
            raise (BrokerUnavailable if result[0].retriable else SchemaError)(result[0].reason)

    async def publish_many(self, source: str | StreamSource, events: Sequence[Mapping[str, Any] | bytes]
                           ) -> PublishResult:
        """Validate all, send the valid ones, and report each refused or undelivered event by index."""
        src = stream_source(self.repo, source)
        checked = src.schema.validate_batch(events)
        errors = [PublishError(i, f"does not match {src.schema.label}: {reason}") for i, reason in checked.invalid]
        failed = await self._send(src, checked.valid, checked.valid_index)
        errors.extend(failed)
        errors.sort(key=lambda e: e.index)
        return PublishResult(published=len(checked.valid) - len(failed), errors=errors)

    async def send_raw(self, topic: str, items: Sequence[_Record]) -> None:
        """Send (key, value, headers) records as they are (no validation), with the same retries.

        Raises BrokerUnavailable (or SchemaError for a record too large) naming how many were not sent.
        """
        failed = await self._deliver(topic, list(items), list(range(len(items))))
        if failed:
            error = BrokerUnavailable if all(e.retriable for e in failed) else SchemaError
            raise error(f"{len(failed)} of {len(items)} records were not sent to {topic}; record "
                        f"{failed[0].index}: {failed[0].reason}")

    async def _send(self, src: StreamSource, events: Sequence[dict[str, Any]], indexes: Sequence[int]
                    ) -> list[PublishError]:
        key = src.key
        items: list[_Record] = [(entity_key_bytes(e[key]), orjson.dumps(e), []) for e in events]
        return await self._deliver(src.topic, items, list(indexes))

    async def _deliver(self, topic: str, items: list[_Record], indexes: list[int]) -> list[PublishError]:
        if not items:
            return []
        await self.start()
        assert self._producer is not None
        partition_of: list[int | None] = [None] * len(items)  # None: aiokafka picks (one `send` each)
        if len(items) >= _BATCH_FROM:
            partitions = sorted(await self._producer.partitions_for(topic))
            partition_of = [None if k is None else partitions[partition_of_key(k, len(partitions))]
                            for k, _, _ in items]
        deadline = time.monotonic() + self._retry_s
        sizes, limit = [_record_bytes(item) for item in items], MAX_RECORD_BYTES - _RECORD_OVERHEAD
        refused = [PublishError(indexes[j], f"the event is {size:,} bytes; Kafka takes at most {limit:,} bytes per "
                                            "event: make it smaller", retriable=False)
                   for j, size in enumerate(sizes) if size > limit]  # never sent: retrying cannot help
        pending = [j for j, size in enumerate(sizes) if size <= limit]
        delay = 0.1
        last_error = ""
        while pending:
            handed: list[tuple[list[int], asyncio.Future[Any]]] = []  # (records, their delivery)
            try:
                await self._hand_over(topic, items, pending, partition_of, handed)
            except KafkaError as exc:
                last_error = type(exc).__name__
            results = await asyncio.gather(*(f for _, f in handed), return_exceptions=True)
            sent: set[int] = set()
            for (records, _), result in zip(handed, results, strict=True):
                if not isinstance(result, BaseException):
                    sent.update(records)
                elif isinstance(result, KafkaError):
                    last_error = type(result).__name__
                else:
                    raise result
            pending = [j for j in pending if j not in sent]
            if pending:
                if time.monotonic() + delay > deadline:
                    break
                log.warning("publish failed; retrying", topic=topic, events=len(pending), error=last_error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        return refused + [PublishError(indexes[j], f"Kafka did not accept the event within {self._retry_s:g} s "
                                                   f"({last_error}); retry later") for j in pending]

    async def _hand_over(self, topic: str, items: list[_Record], pending: list[int],
                         partition_of: list[int | None], handed: list[tuple[list[int], asyncio.Future[Any]]]) -> None:
        """Give the producer the `pending` records, appending each delivery to `handed` as it is made.

        A call's records for one partition go in producer batches from
        `_BATCH_FROM` records on; fewer are sent one by one, so aiokafka puts
        them in the batch it is filling with concurrent calls' records.
        """
        assert self._producer is not None
        by_partition: dict[int | None, list[int]] = {}
        for j in pending:
            by_partition.setdefault(partition_of[j], []).append(j)
        for partition, records in by_partition.items():
            if partition is not None and len(records) >= _BATCH_FROM:
                taken = 0
                async for delivery, count in send_in_batches(self._producer, topic, partition,
                                                             (items[j] for j in records)):
                    handed.append((records[taken:taken + count], delivery))
                    taken += count
                continue
            for j in records:
                await self._room.acquire()
                key, value, headers = items[j]
                try:
                    delivery = await self._producer.send(topic, value=value, key=key, headers=headers or None)
                except BaseException:
                    self._room.release()
                    raise
                delivery.add_done_callback(lambda _f: self._room.release())
                handed.append(([j], delivery))


def _record_bytes(record: _Record) -> int:
    key, value, headers = record
    return len(key or b"") + len(value) + sum(len(name) + len(data) for name, data in headers)


async def send_in_batches(producer: AIOKafkaProducer, topic: str, partition: int, records: Iterable[_Record], *,
                          yield_every: int = 0) -> AsyncIterator[tuple[asyncio.Future[Any], int]]:
    """Hand `records` for one partition to `producer` in as few batches as its batch size allows.

    Why: `send` costs ~20-35 us of CPU per record in aiokafka (a future and a
    partition lookup each), appending to a built batch a few. Yields each
    batch's delivery future and how many of the records (in order) it holds,
    as it is handed over. `yield_every` > 0 lets other tasks of the loop run
    every that many records (a loop shared with requests).
    """
    builder, count = producer.create_batch(), 0
    for i, (key, value, headers) in enumerate(records):
        if yield_every and i and i % yield_every == 0:
            await asyncio.sleep(0)
        if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:  # full: send it
            yield await producer.send_batch(builder, topic, partition=partition), count
            builder, count = producer.create_batch(), 0
            builder.append(key=key, value=value, timestamp=None, headers=headers)
        count += 1
    if count:
        yield await producer.send_batch(builder, topic, partition=partition), count


async def ensure_topics(settings_or_bootstrap: Settings | str, repo: FeatureRepo, *, replication: int = 1) -> list[str]:
    """Create each stream source's topic (with `source.partitions`) and its `.dlq` topic; idempotent.

    Returns the topics created now. An existing topic is left as it is.
    """
    bootstrap = _bootstrap(settings_or_bootstrap)
    wanted: dict[str, int] = {}
    for source in repo.sources.values():
        if isinstance(source, StreamSource):
            wanted[source.topic] = source.partitions
            wanted[source.dlq_topic] = source.partitions
    if not wanted:
        return []
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()
        raise BrokerUnavailable(f"Kafka at {bootstrap} is unreachable ({type(exc).__name__})") from None
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name=t, num_partitions=n, replication_factor=replication)
                   for t, n in wanted.items() if t not in existing]
        created: list[str] = []
        for topic in missing:
            try:
                await admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        await admin.close()
