"""The prediction log: every answered prediction as a `PREDICTION_LOG` record on Kafka.

A prediction never waits for Kafka. `record()` puts the record in a bounded
queue (dropped and counted when full); a background task hands queued
records to an aiokafka producer. Without a configured broker, or while it is
down, records wait in the queue (the in-memory buffer) and the task keeps
reconnecting. The stream worker appends the topic to the offline store, so
labels can be joined to predictions by `request_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
import structlog

from feature_store.publish import send_in_batches
from schemas import PREDICTION_LOG
from serving.telemetry import Metrics

__all__ = ["PREDICTION_TOPIC", "PredictionLog"]

PREDICTION_TOPIC = "_predictions"
log = structlog.get_logger("serving.prediction_log")


class PredictionLog:
    """Bounded, non-blocking writer of prediction records to `topic`."""

    def __init__(self, bootstrap: str | None, metrics: Metrics, *, topic: str = PREDICTION_TOPIC,
                 partitions: int = 1, max_buffered: int = 10_000, retry_s: float = 2.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.metrics = metrics
        self.retry_s = retry_s
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=max_buffered)  # `record` values
        self.dropped = 0
        self.sent = 0
        self.connected = False
        self._task: asyncio.Task[None] | None = None
        self._producer: Any = None

    def record(self, *, request_id: str, model: str, model_version: int, served_at: int,
               entity_keys: Mapping[str, Any], features: Mapping[str, Any], prediction: float, fallback: bool,
               service: str) -> None:
        """Queue one record; never blocks. Drops (and counts) when the buffer is full.

        The mappings are kept as given (not copied) and encoded by the sending
        task (`encode`): a 100-entity request spent ~1 ms of its own time on it.
        """
        value = {
            "request_id": request_id, "model": model, "model_version": model_version, "served_at": served_at,
            "entity_keys": entity_keys, "features": features, "prediction": float(prediction),
            "fallback": fallback, "service": service,
        }
        try:
            self.queue.put_nowait(value)
        except asyncio.QueueFull:
            self.dropped += 1
            self.metrics.prediction_log_dropped.inc()

    @staticmethod
    def encode(value: dict[str, Any]) -> tuple[bytes, bytes]:
        """A queued record as its Kafka (key, value): a `PREDICTION_LOG` record in JSON."""
        record = {**value, "entity_keys": orjson.dumps(dict(value["entity_keys"])).decode(),
                  "features": orjson.dumps(dict(value["features"]), option=orjson.OPT_NON_STR_KEYS).decode()}
        return value["request_id"].encode(), orjson.dumps(record)

    @staticmethod
    def validate(record: bytes) -> dict[str, Any]:
        """The record checked against the `PREDICTION_LOG` schema (used by tests and the worker)."""
        return PREDICTION_LOG.validate(orjson.loads(record))

    async def start(self) -> None:
        if self.bootstrap and self._task is None:
            self._task = asyncio.create_task(self._run(), name="prediction-log")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._close_producer()

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        self.connected = False
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), timeout=2.0)

    async def _run(self) -> None:
        while True:
            try:
                await self._connect()
                await self._drain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker down or gone: keep buffering, reconnect later
                log.warning("prediction_log_unavailable", error=type(exc).__name__, detail=str(exc)[:200],
                            buffered=self.queue.qsize())
                await self._close_producer()
                await asyncio.sleep(self.retry_s)

    async def _connect(self) -> None:
        if self._producer is not None:
            return
        from aiokafka import AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(self.topic, self.partitions, 1)])
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks=1, linger_ms=5, max_batch_size=256 * 1024,
                                    enable_idempotence=False, request_timeout_ms=5000)
        await producer.start()
        self._producer = producer
        self.connected = True
        log.info("prediction_log_connected", topic=self.topic)

    async def _drain(self) -> None:
        """Send queued records as they come, up to 500 per round, each round to the next partition.

        Records go in producer batches (`send_in_batches`), not one `send` each:
        per record that cost ~33 us of the serving loop's CPU, 3.3 ms for every
        100-entity prediction. Nothing reads the log by partition (labels join
        by request id), so rounds take the partitions in turn.
        """
        producer = self._producer
        partitions = sorted(await producer.partitions_for(self.topic))
        turn = itertools.cycle(partitions)
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty() and len(batch) < 500:
                batch.append(self.queue.get_nowait())
            try:
                await self._send(producer, batch, next(turn))
            except Exception:
                for item in batch:  # put them back if there is room; the count of drops stays honest
                    try:
                        self.queue.put_nowait(item)
                    except asyncio.QueueFull:
                        self.dropped += 1
                        self.metrics.prediction_log_dropped.inc()
                raise
            self.sent += len(batch)
            self.metrics.prediction_log_sent.inc(len(batch))

    async def _send(self, producer: Any, records: list[dict[str, Any]], partition: int) -> None:
        """`records` to `partition` in producer batches; waits for the acks.

        ~15 us a record to encode: other requests (this shares their loop) get in every 50."""
        encoded: Iterator[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = (
            (key, value, []) for key, value in map(self.encode, records))
        await asyncio.gather(*[sent async for sent, _ in send_in_batches(producer, self.topic, partition, encoded,
                                                                           yield_every=50)])
