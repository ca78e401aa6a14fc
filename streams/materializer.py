"""The high-volume feature materializer: an aiokafka batch consumer with exactly-once effect in Redis.

Per batch (the records `Intake` drained from the consumer over one pacing
interval; `_prepare_all` runs on a thread): validate the records of each
source's partitions together (one columnar parse), then per partition batch:
classify (future, late; `streams.batch`), dead-letter the bad ones, compute
tile stats and latest rows with DuckDB (`streams.views`, one pass per source),
apply them with one fenced script call (`OnlineWriter`), then append every
consumed event to the event log.

Positions: Redis offsets are the truth. On every assignment a partition
resumes at min(Redis offset, event-log offset) + 1 with the watermark that
held there; events at or below the Redis offset are only logged, events at or
below the log offset are only applied, so a kill -9 at any point loses and
duplicates nothing. Kafka commits are not used.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from feature_store.aggregates import NO_ORDER
from feature_store.definitions import FeatureView, StreamSource
from feature_store.errors import BrokerUnavailable, OnlineStoreUnavailable
from feature_store.heap import long_lived_heap
from feature_store.offline.log_writer import EventLogWriter
from feature_store.online.client import OnlineClient, open_online
from feature_store.online.keys import KeyLayout
from feature_store.online.writer import NO_OFFSET, OnlineWriter, PartitionBatch
from feature_store.publish import ensure_topics
from feature_store.repo import FeatureRepo
from feature_store.worker_reports import withdraw_report, worker_name, write_report
from schemas import now_ms
from schemas.event_schema import TableValidation
from streams.batch import APPLIED, INVALID, LATE, Classified, applied_table, classify, log_schema, log_table
from streams.dlq import dead_letter_headers
from streams.intake import Intake
from streams.metrics import WorkerMetrics
from streams.views import SourcePlan, TransformFailed, batch_connection

__all__ = ["AppliedBatch", "Materializer", "MaterializerConfig"]

log = structlog.get_logger("featurestream.worker")

_RETRY_S = (0.1, 0.2, 0.5, 1.0, 2.0)

_MAX_LETTER_BYTES = 64 * 1024 * 1024
"""The worker's producer's client-side size limit: above any record a broker is configured to hold."""


@dataclass(frozen=True, kw_only=True)
class MaterializerConfig:
    bootstrap: str
    redis_url: str
    data_dir: Path
    redis_cluster: bool = False
    group_id: str = "featurestream-worker"
    prefix: str = "fs"
    session_timeout_ms: int = 6_000
    heartbeat_interval_ms: int = 1_000
    max_records: int = 20_000  # per batch, across partitions: a backlog then feeds every partition at once
    poll_timeout_ms: int = 100
    fetch_max_wait_ms: int = 20  # how long the broker may hold a fetch for data: freshness floor
    # a batch at most this often: a batch of 10 events costs about what one of 500 does (~15 ms of CPU,
    # mostly DuckDB setting up each aggregate), so back-to-back small batches kept a core busy at any rate;
    # pacing halved the worker's CPU at 500-2k events/s and cut the p99 at 10k/s (~260 -> ~140 ms, median
    # of 4 interleaved runs of bench/stream.py) for ~30 ms more median freshness at low rates. 25 ms cost
    # 30% more CPU at 10k/s for no better p99
    min_fetch_interval_ms: int = 40
    log_max_rows: int = 100_000
    log_max_age_s: float = 5.0
    report_every_s: float = 5.0  # how often the worker's status report is written (`feature_store.worker_reports`)


@dataclass(frozen=True, slots=True)
class AppliedBatch:
    """What `on_applied` hears of each applied partition batch: where its events' freshness went.

    All epoch ms, on one host's clock (Redis's for `written_ms`): event time ->
    `started_ms` (the batch's CPU work starts: arrival and pacing) ->
    `prepared_ms` (its writes are computed) -> `written_ms` (Redis applied them).
    """

    event_times: Sequence[int]
    started_ms: int
    prepared_ms: int
    written_ms: int


@dataclass
class _Partition:
    """What this worker knows of one assigned partition."""

    source: _Source
    partition: int
    next_offset: int  # first offset not yet processed
    redis_offset: int  # last offset applied to Redis (by anyone, as far as we know)
    watermark: int  # after next_offset - 1
    gap_checked: bool = False  # a gap after a seek was re-checked once (a true gap, not a stale fetch)
    reset_warned: bool = False
    stale: bool = False  # a batch was fenced: batches prepared after it are dropped (work resumes from the store)


@dataclass
class _Prepared:
    """One partition batch between its CPU work and its I/O."""

    tp: TopicPartition
    part: _Partition
    records: Sequence[Any]
    c: Classified
    redis_from: int  # records[redis_from:] are beyond the stored offset: applied now
    log_from: int  # records[log_from:] are beyond the logged offset: logged now
    ingest: int
    batch: PartitionBatch | None
    started: float
    prepared_ms: int = 0  # epoch ms when the batch's CPU work ended (it started at `ingest`)


@dataclass
class _Source:
    source: StreamSource
    plan: SourcePlan
    log: EventLogWriter
    log_schema: Any



class Materializer:
    """Consumes the stream sources of a repo into Redis and the event log; `run()` until `stop()`."""

    def __init__(self, config: MaterializerConfig, repo: FeatureRepo, *, metrics: WorkerMetrics | None = None,
                 on_applied: Callable[[AppliedBatch], None] | None = None) -> None:
        self.config = config
        self.metrics = metrics or WorkerMetrics()
        self._on_applied = on_applied  # for benchmarks
        self.keys = KeyLayout(config.prefix)
        self._repo = repo
        self._sources: dict[str, _Source] = {}
        for source in repo.sources.values():
            if isinstance(source, StreamSource):
                plan = SourcePlan(source, repo.views_of(source), self.keys)
                schema = log_schema(source)
                writer = EventLogWriter(config.data_dir, source.name, schema, max_rows=config.log_max_rows,
                                        max_age_s=config.log_max_age_s)
                self._sources[source.topic] = _Source(source, plan, writer, schema)
        self._parts: dict[TopicPartition, _Partition] = {}
        self._lock = asyncio.Lock()
        self._inflight: asyncio.Future[None] | None = None  # the last fetch's commits, running while we fetch on
        self._stopping = asyncio.Event()
        self._con = batch_connection()
        self._heap = contextlib.ExitStack()  # the collector's settings while started (`long_lived_heap`)
        self._cpu: ThreadPoolExecutor | None = None  # runs `_prepare_all` off the loop, from start() to stop()
        self._redis: OnlineClient | None = None
        self._writer: OnlineWriter | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._intake: Intake | None = None  # drains the consumer into the next batch, from start() to stop()
        self._producer: AIOKafkaProducer | None = None
        self.name = worker_name()
        self._started_ms = 0
        self._reporting: asyncio.Task[None] | None = None

    @property
    def topics(self) -> list[str]:
        return sorted(self._sources)

    @property
    def definitions(self) -> dict[str, tuple[StreamSource, list[FeatureView]]]:
        """Per topic, the source and online views this worker computes: equal ones compute the same writes."""
        return {topic: (src.source, src.plan.views) for topic, src in self._sources.items()}

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        c = self.config
        self._warm_up()
        await ensure_topics(c.bootstrap, self._repo)
        self._redis = open_online(c.redis_url, cluster=c.redis_cluster)
        self._writer = OnlineWriter(self._redis)
        # dead letters carry events as the consumer got them: let the broker, not a client-side check, judge size
        self._producer = AIOKafkaProducer(bootstrap_servers=c.bootstrap, acks="all", linger_ms=5,
                                          max_request_size=_MAX_LETTER_BYTES)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=c.bootstrap, group_id=c.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=c.session_timeout_ms,
            heartbeat_interval_ms=c.heartbeat_interval_ms, max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_wait_ms=c.fetch_max_wait_ms,
        )
        self._consumer.subscribe(self.topics, listener=_Listener(self))
        await self._consumer.start()
        self._intake = Intake(self._consumer, max_records=c.max_records, poll_timeout_ms=c.poll_timeout_ms)
        self._intake.start()
        self._cpu = ThreadPoolExecutor(1, thread_name_prefix="featurestream-prepare")
        # what exists now lives as long as the worker: out of every collection, and collections rare
        # (`feature_store.heap`: full ones walked every client, module and plan, ~100 ms: freshness outliers)
        self._heap.enter_context(long_lived_heap())
        self._started_ms = now_ms()
        self._reporting = asyncio.create_task(self._report_status(), name="featurestream-worker-report")
        log.info("worker started", topics=self.topics, group=c.group_id, worker=self.name)

    def _warm_up(self) -> None:
        """Run the batch code once on empty batches: the first real batch would otherwise pay ~0.3 s of
        lazy imports (pyarrow pulls in pandas) and DuckDB's first-query setup, a freshness outlier."""
        for src in self._sources.values():
            empty = Classified(offsets=[], events=[], event_times=[], status=[], reasons=[], watermark=NO_ORDER)
            log_table(src.log_schema, empty, 0, 0, 0)
            with contextlib.suppress(TransformFailed):
                src.plan.writes_many(self._con, applied_table(src.source, empty, [], 0, 0), {}, 0)

    async def stop(self) -> None:
        """Flush the event log and close every client (safe to call twice)."""
        self._stopping.set()
        self._heap.close()
        await self._withdraw_report()
        async with self._lock:
            await self._drain()
            for source in self._sources.values():
                source.log.flush_all()
            for tp, part in self._parts.items():
                self._forget_lag(tp, part)
            self._parts.clear()
        if self._cpu is not None:
            self._cpu.shutdown()
            self._cpu = None
        if self._intake is not None:
            await self._intake.stop()
            self._intake = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def run(self) -> None:
        """The batch loop; returns after `stop()` is requested.

        Pipelined: while the scripts of one fetch run in Redis, the next fetch
        is read and its writes computed; its scripts are sent once the previous
        fetch is committed (applied and logged), so Redis still sees each
        partition's batches in offset order.
        """
        assert self._intake is not None, "start() first"
        loop = asyncio.get_running_loop()  # batches start at least config.min_fetch_interval_ms apart
        last = loop.time()
        try:
            while not self._stopping.is_set():
                batches = await self._intake.take(last + self.config.min_fetch_interval_ms / 1000)
                if self._stopping.is_set():  # stop() may have closed the clients meanwhile
                    break
                last = loop.time()
                async with self._lock:
                    selected = [(tp, *picked) for tp, records in batches.items()
                                if (picked := self._select(tp, records))]
                    # off the loop: meanwhile the previous fetch's commit completes (its Redis replies, its log)
                    prepared = await loop.run_in_executor(self._cpu, self._prepare_all, selected) if selected else []
                    await self._drain()
                    if prepared:
                        self._inflight = asyncio.ensure_future(self._commit_all(prepared))
                    for source in self._sources.values():
                        for partition in source.log.due():
                            source.log.flush_soon(partition)  # Parquet + fsync off the loop
                self._update_lag()
        finally:
            async with self._lock:
                await self._drain()

    async def _drain(self) -> None:
        """Wait for the commits in flight (call with the lock held)."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await inflight

    def request_stop(self) -> None:
        self._stopping.set()

    # -- partitions --------------------------------------------------------------------

    async def assign(self, tps: Sequence[TopicPartition]) -> None:
        """Load positions from Redis and the event log and seek each partition to where work resumes."""
        assert self._writer is not None
        assert self._consumer is not None
        tps = [tp for tp in tps if tp.topic in self._sources]
        keys = [self.keys.offset_key(self._sources[tp.topic].source, tp.partition) for tp in tps]
        for attempt in range(1_000_000):  # without positions nothing may be consumed: wait for Redis
            try:
                stored = await self._writer.positions(keys)
                break
            except OnlineStoreUnavailable as exc:
                if self._stopping.is_set():
                    raise
                log.warning("online store unavailable; cannot resume partitions yet", error=str(exc),
                            attempt=attempt)
                await asyncio.sleep(_RETRY_S[min(attempt, len(_RETRY_S) - 1)])
        for tp, position in zip(tps, stored, strict=True):
            source = self._sources[tp.topic]
            logged = source.log.open_partition(tp.partition)
            self._resume(tp, source, position.offset, position.watermark, logged)

    def _resume(self, tp: TopicPartition, source: _Source, redis_offset: int, redis_wm: int, logged: Any) -> None:
        assert self._consumer is not None
        log_offset = NO_OFFSET if logged is None else logged.offset
        if log_offset < redis_offset:
            start, watermark = log_offset, (NO_ORDER if logged is None else logged.watermark)
        else:
            start, watermark = redis_offset, redis_wm
        self._parts[tp] = _Partition(source, tp.partition, start + 1, redis_offset, watermark)
        if start == NO_OFFSET:
            self._consumer.seek(tp, 0)
        else:
            self._consumer.seek(tp, start + 1)
        log.info("partition resumed", topic=tp.topic, partition=tp.partition, redis_offset=redis_offset,
                 log_offset=log_offset, seek=start + 1)

    def revoke(self, tps: Sequence[TopicPartition]) -> None:
        for tp in tps:
            part = self._parts.pop(tp, None)
            if part is not None:
                part.source.log.close_partition(tp.partition)
                self._forget_lag(tp, part)

    def _forget_lag(self, tp: TopicPartition, part: _Partition) -> None:
        """Drop a released partition's lag gauge: its new owner reports it (a kept value would read as stuck)."""
        with contextlib.suppress(KeyError):  # never set (no fetch yet)
            self.metrics.lag.remove(part.source.source.name, str(tp.partition))

    async def _refence(self, tp: TopicPartition, part: _Partition) -> None:
        """The store refused a batch: reload its position and resume from what it and the log hold."""
        assert self._writer is not None
        self.metrics.fenced.labels(part.source.source.name).inc()
        (position,) = await self._writer.positions([self.keys.offset_key(part.source.source, part.partition)])
        log.warning("batch fenced; resuming from the stored offset", topic=tp.topic, partition=tp.partition,
                    stored=position.offset)
        self._resume(tp, part.source, position.offset, position.watermark, part.source.log.position(part.partition))

    # -- one partition batch -----------------------------------------------------------

    async def _commit_all(self, prepared: Sequence[_Prepared]) -> None:
        """Commit every partition batch of one fetch; their scripts are in flight together."""
        if len(prepared) == 1:
            await self._commit(prepared[0])
        else:
            await asyncio.gather(*(self._commit(p) for p in prepared))

    def _prepare_all(self, selected: Sequence[tuple[TopicPartition, _Partition, Sequence[Any]]]) -> list[_Prepared]:
        """Classify each partition batch (`_select`ed), then compute the online writes of all of them.

        No I/O and no consumer calls: this runs on the worker's CPU thread while
        the loop commits the previous fetch.

        Each partition's position moves past its batch now (the next fetch is
        prepared before this one is committed); a fenced batch marks its
        partition stale and the store's position replaces it.
        """
        started, ingest = time.perf_counter(), now_ms()  # ingest: the tie of every event applied from this fetch
        values = [[r.value for r in records] for _, _, records in selected]
        checked = self._validate([part for _, part, _ in selected], values)
        staged = [self._stage(tp, part, records, group, started, check)
                  for (tp, part, records), group, check in zip(selected, values, checked, strict=True)]
        by_source: dict[str, list[_Prepared]] = {}
        for p in staged:
            p.ingest = ingest
            if p.redis_from < len(p.records):
                part, c, src = p.part, p.c, p.part.source
                p.batch = PartitionBatch(offset_key=self.keys.offset_key(src.source, part.partition),
                                         expected_offset=part.redis_offset, first_offset=c.offsets[p.redis_from],
                                         last_offset=c.offsets[-1], watermark=c.watermark, layouts=src.plan.layouts)
                part.redis_offset = c.offsets[-1]  # what the store holds once this batch is applied
                by_source.setdefault(src.source.topic, []).append(p)
        for topic, group in by_source.items():
            src = self._sources[topic]
            try:
                self._writes(src, group, ingest)
            except TransformFailed:  # the rare path: find the failing rows, reject them, compute again
                for p in group:
                    assert p.batch is not None
                    self._reject_transform_failures(src, p.c, _applied_from(p.c, p.redis_from), p.part.partition,
                                                    ingest)
                    p.batch.clear()
                self._writes(src, group, ingest)
        prepared_ms = now_ms()
        for p in staged:
            p.prepared_ms = prepared_ms
        return staged

    def _writes(self, src: _Source, group: Sequence[_Prepared], ingest: int) -> None:
        """One DuckDB pass over the applied rows of every partition batch of one source."""
        tables = []
        for p in group:
            indexes = _applied_from(p.c, p.redis_from)
            if indexes:
                tables.append(applied_table(src.source, p.c, indexes, p.part.partition, ingest))
        if tables:
            table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
            src.plan.writes_many(self._con, table, {p.part.partition: p.batch for p in group if p.batch is not None},
                                 ingest)

    def _select(self, tp: TopicPartition, records: Sequence[Any]) -> tuple[_Partition, Sequence[Any]] | None:
        """The records of one partition batch to process: none already processed, none across a gap."""
        part = self._parts.get(tp)
        if part is None:
            return None
        if records and records[0].offset < part.next_offset:
            records = [r for r in records if r.offset >= part.next_offset]
        if not records:
            return None
        if records[0].offset > part.next_offset and part.next_offset > 0 and not part.gap_checked:
            # records from before a seek can still arrive; fetch again from where we are once
            assert self._consumer is not None
            part.gap_checked = True
            self._consumer.seek(tp, part.next_offset)
            return None
        part.gap_checked = False
        return part, records

    @staticmethod
    def _validate(parts: Sequence[_Partition], values: Sequence[list[bytes | None]]) -> list[TableValidation]:
        """Validate each partition's record values, the partitions of one source together.

        The columnar validation's cost is mostly fixed (~1.4 ms a call), so one
        call per source per fetch instead of one per partition.
        """
        by_source: dict[str, list[int]] = {}
        for i, part in enumerate(parts):
            by_source.setdefault(part.source.source.topic, []).append(i)
        checked: dict[int, TableValidation] = {}
        for indexes in by_source.values():
            schema = parts[indexes[0]].source.source.schema
            results = schema.validate_record_groups([values[i] for i in indexes])
            checked.update(zip(indexes, results, strict=True))
        return [checked[i] for i in range(len(parts))]

    def _stage(self, tp: TopicPartition, part: _Partition, records: Sequence[Any], values: list[bytes | None],
               started: float, checked: TableValidation) -> _Prepared:
        """Classify one partition batch and find its Redis and log parts (no I/O, no writes yet)."""
        src = part.source
        c = classify(src.source, values, [r.offset for r in records], part.watermark, now_ms(), checked)
        redis_from = _first_above(c.offsets, part.redis_offset)
        logged = src.log.position(part.partition)
        log_from = _first_above(c.offsets, NO_OFFSET if logged is None else logged.offset)
        if log_from < redis_from:  # replay: events applied before a crash; find their transform failures again
            self._reject_transform_failures(src, c, [i for i in c.applied() if log_from <= i < redis_from],
                                            part.partition, 0)
        part.next_offset = c.offsets[-1] + 1
        part.watermark = c.watermark
        return _Prepared(tp, part, records, c, redis_from, log_from, 0, None, started)

    async def _commit(self, p: _Prepared) -> None:
        """Dead letters, the fenced apply, then the event log; a fenced batch resumes from the store."""
        part, c, src = p.part, p.c, p.part.source
        if part.stale:  # an earlier batch of this partition was fenced: work resumed from the store
            return
        if p.batch is not None:
            await self._dead_letters(src.source, part.partition, c, p.records, p.redis_from)
            written = await self._apply(p.tp, part, p.batch)
            if written is None:
                return
            times = [c.event_times[i] for i in _applied_from(c, p.redis_from)]
            histogram = self.metrics.freshness.labels(src.source.name)
            for et in times[:: max(1, len(times) // 64)]:  # a sample is enough for the histogram
                histogram.observe(max(0, written - et) / 1000)  # type: ignore[operator]
            if self._on_applied is not None:
                self._on_applied(AppliedBatch(times, p.ingest, p.prepared_ms, written))  # type: ignore[arg-type]
        if p.log_from < len(p.records):
            src.log.append(part.partition, log_table(src.log_schema, c, p.log_from, part.partition, p.ingest),
                           c.offsets[-1], c.watermark)
        name = src.source.name
        counts = Counter(c.status[p.redis_from:])
        for status in (APPLIED, LATE, INVALID):
            if counts[status]:
                self.metrics.events.labels(name, status).inc(counts[status])
        self.metrics.batch_latency.labels(name).observe(time.perf_counter() - p.started)

    async def _apply(self, tp: TopicPartition, part: _Partition, batch: PartitionBatch) -> int | None:
        """One fenced script call, retried while Redis is down: when Redis applied it (its clock, epoch ms),
        None when the store refused it."""
        assert self._writer is not None
        for attempt in range(1_000_000):
            try:
                result = await self._writer.apply(batch)
                break
            except OnlineStoreUnavailable as exc:
                if self._stopping.is_set():
                    raise
                log.warning("online store unavailable; retrying the batch", error=str(exc), attempt=attempt)
                await asyncio.sleep(_RETRY_S[min(attempt, len(_RETRY_S) - 1)])
        if not result.applied:
            part.stale = True
            await self._refence(tp, part)
            return None
        return result.written_ms

    def _reject_transform_failures(self, src: _Source, c: Classified, indexes: list[int], partition: int,
                                   tie: int) -> None:
        """Find the rows whose transform fails (one by one: this is the rare path) and reject them."""
        if not indexes:
            return
        try:
            src.plan.check(self._con, applied_table(src.source, c, indexes, partition, tie))
            return
        except TransformFailed:
            pass
        for i in indexes:
            try:
                src.plan.check(self._con, applied_table(src.source, c, [i], partition, tie))
            except TransformFailed as exc:
                c.reject(i, f"transform failed: {exc}")

    async def _dead_letters(self, source: StreamSource, partition: int, c: Classified, records: Sequence[Any],
                            redis_from: int) -> None:
        """Send the batch's bad events (those not sent before a crash) and wait until the broker has them.

        Retried while Kafka refuses them, until stop() is requested (the batch
        is then not committed: a restart sends them again). A dead-letter topic
        must take records as large as its source topic does.
        """
        assert self._producer is not None
        todo = [i for i in c.dlq if i >= redis_from]
        if not todo:
            return
        for attempt in range(1_000_000):
            try:
                futures = [await self._producer.send(
                    source.dlq_topic, value=records[i].value, key=records[i].key,
                    headers=dead_letter_headers(c.reasons[i] or "", source.topic, partition, c.offsets[i]))
                    for i in todo]
                await asyncio.gather(*futures)
                break
            except KafkaError as exc:
                if self._stopping.is_set():
                    raise BrokerUnavailable(f"dead letters of {source.topic} partition {partition} were not sent "
                                            f"before the worker stopped ({type(exc).__name__}); a restart sends "
                                            "them again") from None
                log.warning("dead-letter send failed; retrying", error=type(exc).__name__, attempt=attempt)
                await asyncio.sleep(_RETRY_S[min(attempt, len(_RETRY_S) - 1)])
        self.metrics.dead_letters.labels(source.name).inc(len(todo))

    # -- status report -----------------------------------------------------------------

    def report(self, events_per_s: float) -> dict[str, Any]:
        """This worker's status: the partitions it holds with their next offset and lag (from the fetch
        highwater), and its counts."""
        partitions = []
        for tp, part in sorted(self._parts.items(), key=lambda item: (item[0].topic, item[0].partition)):
            partitions.append({"source": part.source.source.name, "partition": tp.partition,
                               "next_offset": part.next_offset, "lag": self._lag(tp, part)})
        return {"worker": self.name, "group": self.config.group_id, "sources": sorted(
                    src.source.name for src in self._sources.values()),
                "started_at": self._started_ms, "updated_at": now_ms(), "every_s": self.config.report_every_s,
                "partitions": partitions, "events_per_s": round(events_per_s, 1), "events": self.consumed(),
                "dead_letters": int(_total(self.metrics.dead_letters)), "fenced": int(_total(self.metrics.fenced))}

    def consumed(self) -> int:
        """Events consumed so far, whatever their status."""
        return int(_total(self.metrics.events))

    async def _report_status(self) -> None:
        """Write the status report every `report_every_s` until stopped (a failed write is retried next time)."""
        assert self._redis is not None
        before, counted = time.monotonic(), self.consumed()
        while True:
            now, events = time.monotonic(), self.consumed()
            rate = (events - counted) / (now - before) if now > before else 0.0
            before, counted = now, events
            try:
                await write_report(self._redis, self.keys, self.report(rate))
            except (RedisError, OSError) as exc:
                log.debug("status report not written", error=type(exc).__name__)
            await asyncio.sleep(self.config.report_every_s)

    async def _withdraw_report(self) -> None:
        """Stop reporting and remove the report."""
        task, self._reporting = self._reporting, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await withdraw_report(self._redis, self.keys, self.name)

    def _update_lag(self) -> None:
        if self._consumer is None:
            return
        for tp, part in list(self._parts.items()):
            highwater = self._consumer.highwater(tp)
            if highwater is not None and highwater <= part.redis_offset and not part.reset_warned:
                part.reset_warned = True  # e.g. a broker with memory storage restarted under a kept Redis
                log.error("the topic ends before the stored offset: it was recreated; events up to the stored "
                          "offset are skipped. Use a new FEATURESTREAM_ONLINE_PREFIX (or flush the old keys)",
                          topic=tp.topic, partition=tp.partition, highwater=highwater, stored=part.redis_offset)
            lag = self._lag(tp, part)
            if lag is not None:
                self.metrics.lag.labels(part.source.source.name, str(tp.partition)).set(lag)

    def _lag(self, tp: TopicPartition, part: _Partition) -> int | None:
        """Fetch highwater minus the next offset to process; None before the first fetch of the partition."""
        highwater = None if self._consumer is None else self._consumer.highwater(tp)
        return None if highwater is None else max(0, highwater - part.next_offset)


def _total(counter: Any) -> float:
    """The sum of a prometheus_client counter's series."""
    return float(sum(sample.value for metric in counter.collect() for sample in metric.samples
                     if sample.name.endswith("_total")))


def _first_above(offsets: Sequence[int], offset: int) -> int:
    """Index of the first offset > `offset` (len when none); offsets ascend."""
    return bisect.bisect_right(offsets, offset)


def _applied_from(c: Classified, start: int) -> list[int]:
    """Indexes of the applied events at or after `start`."""
    status = c.status
    return [i for i in range(start, len(status)) if status[i] == APPLIED]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Flush what a revoked partition logged; resume assigned ones from the stored positions."""

    def __init__(self, materializer: Materializer) -> None:
        self._m = materializer

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        async with self._m._lock:
            await self._m._drain()
            self._m.revoke(list(revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        async with self._m._lock:
            await self._m._drain()
            await self._m.assign(list(assigned))
