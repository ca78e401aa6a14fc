"""Stream-path benchmark: worker throughput (exactly-once path) and freshness, next to raw consumption.

    .venv/bin/python bench/stream.py [--events 200000] [--rate 10000 2000] [--seconds 10] [--warmup 2] [--repeat 3]

Uses FEATURESTREAM_KAFKA / FEATURESTREAM_REDIS when set, else starts the local
stack (redis-server + Tansu). Prints one JSON object:

- throughput: N card-fraud events already in a 4-partition topic, consumed by
  one Materializer (validate, transform, tile stats in DuckDB, one fenced Lua
  call per partition batch, event log) from the first batch to the last
  apply, next to a raw aiokafka `getmany(max_records=5000)` loop over the same
  topic in the same run (the physical limit), as a ratio;
- freshness: a producer process publishes at each `--rate` events/s with
  event time = wall clock while the worker runs; freshness = Redis write time
  (Redis's clock when the batch's script committed: the value is readable
  from then on) minus event time, p50/p99 over the events of the last
  `--seconds` (the steady state); the first `--warmup` seconds of the stream
  are reported apart (`warmup`: a fresh worker on a fresh key space creates
  every key and runs each code path for the first time then, beside the
  starting producer process); `where_the_time_goes` splits it into stages
  (arrival and pacing, CPU work, Redis apply) and names the fetches that
  hold the slowest 1% of events; next to it, the same producer read by a
  bare aiokafka consumer (produce -> consume latency), summarized the same
  way; `freshness_by_rate` puts the `--repeat` runs of each rate together:
  each run's p99, how many met the target, and the p50/p99 of all their
  steady events (one run's p99 moves by +-20 ms from run to run here);
- host_cpu, per freshness rate: how busy the host's cores were over the run
  and the CPU per event of the worker, the producer, Redis and the broker
  (the last two when this run started them). On a small host they share the
  cores, and the freshness tail grows with how busy those are.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import HostCpu, speed_probe
from feature_store.examples.card_fraud.data import TransactionGenerator
from feature_store.local_stack import LocalStack
from feature_store.online.keys import entity_key_bytes, partition_of_key
from feature_store.publish import EventPublisher, ensure_topics, send_in_batches
from streams.materializer import AppliedBatch, Materializer, MaterializerConfig
from tests.streams.support import card_fraud_repo


async def _fill(bootstrap: str, repo: Any, events: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    async with EventPublisher(bootstrap, repo, linger_ms=20) as publisher:
        step = 10_000
        for i in range(0, len(events), step):
            result = await publisher.publish_many("transactions", events[i:i + step])
            assert result.ok, result.errors[:2]
    return len(events) / (time.perf_counter() - start)


async def _raw_consume(bootstrap: str, topic: str, partitions: int, total: int) -> float:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        start = None
        while seen < total:
            batches = await consumer.getmany(timeout_ms=200, max_records=5_000)
            if batches and start is None:
                start = time.perf_counter()
            seen += sum(len(r) for r in batches.values())
        assert start is not None
        return total / (time.perf_counter() - start)
    finally:
        await consumer.stop()


def _config(bootstrap: str, redis_url: str, data_dir: Path, tag: str) -> MaterializerConfig:
    return MaterializerConfig(bootstrap=bootstrap, redis_url=redis_url, data_dir=data_dir / tag,
                              group_id=f"bench-{tag}", prefix=f"bench{tag}")


async def _script_usec(redis_url: str) -> int:
    """Total server time Redis spent in EVALSHA so far (microseconds)."""
    client = aioredis.from_url(redis_url)
    try:
        stats = await client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("usec", 0))
    finally:
        await client.aclose()


async def _throughput(bootstrap: str, redis_url: str, data_dir: Path, repo: Any, total: int) -> dict[str, Any]:
    script_before = await _script_usec(redis_url)
    marks: list[float] = []
    cpu: list[float] = []
    applied = [0]

    def on_applied(batch: AppliedBatch) -> None:
        if not marks:
            marks.append(time.perf_counter())
            cpu.append(time.process_time())
        applied[0] += len(batch.event_times)

    materializer = Materializer(_config(bootstrap, redis_url, data_dir, uuid.uuid4().hex[:6]), repo,
                                on_applied=on_applied)
    await materializer.start()
    task = asyncio.create_task(materializer.run())
    first_batch = time.perf_counter()
    while materializer.consumed() < total:
        await asyncio.sleep(0.01)
        if task.done():
            task.result()
    end = time.perf_counter()
    cpu_s = time.process_time() - (cpu[0] if cpu else 0.0)
    materializer.request_stop()
    await task
    await materializer.stop()
    start = marks[0] if marks else first_batch
    script_s = (await _script_usec(redis_url) - script_before) / 1e6
    return {"events_per_s": round(total / (end - start)), "seconds": round(end - start, 3), "applied": applied[0],
            "redis_script_seconds": round(script_s, 3), "cpu_seconds": round(cpu_s, 3)}


def _produce_at_rate(bootstrap: str, topic: str, rate: float, seconds: float, sent: Any,
                     cpu_s: Any = None) -> None:
    """Publish valid events with event time = now, at `rate` events/s, every 10 ms; `sent` gets the count and
    `cpu_s` (when given) this process's CPU seconds while it published.

    Keyed by user into the partition Kafka's default partitioner picks, in
    producer batches (`send_in_batches`): one `send` per event cost this
    process ~23 us of CPU per event, a fifth of a core at 10k/s, taken from
    the worker and Redis on the same two cores. Producers run elsewhere in
    production.
    """

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, acks=1)
        await producer.start()
        cpu_before = time.process_time()
        partitions = sorted(await producer.partitions_for(topic))
        gen = TransactionGenerator(users=5_000, seed=3, spacing_ms=0, disorder_ms=0)
        events = (e for e, _ in gen.events(10**12))  # lazily, as many as the clock asks for
        start = time.perf_counter()
        count = 0
        tick = 0.01
        acks: list[asyncio.Future[Any]] = []
        while time.perf_counter() - start < seconds:
            due = int((time.perf_counter() - start + tick) * rate)
            now = time.time_ns() // 1_000_000
            by_partition: dict[int, list[tuple[bytes, bytes, list[tuple[str, bytes]]]]] = {}
            while count < due:
                event = next(events)
                event["ts"] = now
                key = entity_key_bytes(str(event["user_id"]))
                by_partition.setdefault(partitions[partition_of_key(key, len(partitions))], []).append(
                    (key, orjson.dumps(event), []))
                count += 1
            for partition, records in by_partition.items():
                acks.extend([sent async for sent, _ in send_in_batches(producer, topic, partition, records)])
            await asyncio.sleep(tick)
        await asyncio.gather(*acks)
        if cpu_s is not None:
            cpu_s.value = time.process_time() - cpu_before
        await producer.stop()
        sent.value = count

    asyncio.run(run())


FRESHNESS_P99_TARGET_MS = 100
"""Issue 5's target at 10k events/s (the same bar is shown at every rate)."""

_Sample = tuple[int, ...]
"""Per event: its event time (ms), then figures about it."""


def _steady(samples: Sequence[_Sample], warmup_s: float) -> tuple[list[_Sample], list[_Sample]]:
    """(steady, warm-up) samples: the warm-up holds the first `warmup_s` seconds of event time."""
    if not samples:
        return [], []
    steady_from = _steady_from((sample[0] for sample in samples), warmup_s)
    return [x for x in samples if x[0] >= steady_from], [x for x in samples if x[0] < steady_from]


def _steady_from(event_times: Iterable[int], warmup_s: float) -> float:
    """Event time (ms) where the steady state starts: `warmup_s` after the first event."""
    return min(event_times) + warmup_s * 1000


def _q(ordered: Sequence[int], p: float) -> float | None:
    """The `p` quantile of sorted latencies (the nearest rank at or below)."""
    return float(ordered[min(len(ordered) - 1, int(p * len(ordered)))]) if ordered else None


def _latencies(samples: list[tuple[int, int]], warmup_s: float) -> dict[str, Any]:
    """p50/p99/max/mean of the latencies of events after the first `warmup_s` seconds of event time; the
    warm-up's own apart. `samples`: (event time ms, latency ms)."""
    steady_samples, warm_samples = _steady(samples, warmup_s)
    steady = sorted(lat for _, lat in steady_samples)
    warm = sorted(lat for _, lat in warm_samples)
    return {"events_measured": len(steady), "p50_ms": _q(steady, 0.50), "p99_ms": _q(steady, 0.99),
            "max_ms": _q(steady, 1.0), "mean_ms": round(statistics.fmean(steady), 2) if steady else None,
            "warmup": {"seconds": warmup_s, "events": len(warm), "p50_ms": _q(warm, 0.5), "p99_ms": _q(warm, 0.99),
                       "max_ms": _q(warm, 1.0)}}


def _where_the_time_goes(batches: list[AppliedBatch], warmup_s: float) -> dict[str, Any]:
    """Mean freshness split into its stages over all steady events and over the slowest 1% of them."""
    parts = [(t, b.written_ms - t, b.started_ms - t, b.prepared_ms - b.started_ms, b.written_ms - b.prepared_ms)
             for b in batches for t in b.event_times]
    steady = sorted(_steady(parts, warmup_s)[0], key=lambda x: x[1])

    def means(rows: list[_Sample]) -> dict[str, float] | None:
        if not rows:
            return None
        return {name: round(statistics.fmean(row[i] for row in rows), 1) for i, name in
                ((1, "total_ms"), (2, "arrival_and_pacing_ms"), (3, "cpu_work_ms"), (4, "redis_apply_ms"))}

    slowest = steady[-max(1, len(steady) // 100):]
    return {"all": means(steady), "slowest_1pct": means(slowest),
            "slowest_fetches": _slowest_fetches(batches, slowest[0][1] if slowest else 0, warmup_s)}


def _slowest_fetches(batches: list[AppliedBatch], p99_ms: int, warmup_s: float) -> dict[str, Any]:
    """Which fetches (the partition batches prepared together) hold the events at or above the p99.

    Why: a run's p99 is often decided by a few late fetches in a row: one
    whose CPU work ran long delays the next one's start, which then holds
    more events. Each of the 3 worst shows when it started (seconds into the
    run), the gap since the fetch before it started, its events and its stages.
    """
    fetches: dict[int, list[AppliedBatch]] = {}
    for b in batches:
        fetches.setdefault(b.started_ms, []).append(b)
    if not fetches:
        return {"fetches": 0}
    first = min(fetches)
    steady_from = _steady_from((t for b in batches for t in b.event_times), warmup_s)
    rows, previous = [], None
    for started in sorted(fetches):
        group = fetches[started]
        latencies = [b.written_ms - t for b in group for t in b.event_times]
        if started >= steady_from and latencies:
            rows.append({"at_s": round((started - first) / 1000, 2),
                         "gap_ms": None if previous is None else started - previous,
                         "events": len(latencies), "at_or_above_p99": sum(1 for x in latencies if x >= p99_ms),
                         "cpu_work_ms": group[0].prepared_ms - started,
                         "redis_apply_ms": max(b.written_ms for b in group) - group[0].prepared_ms,
                         "worst_ms": max(latencies)})
        previous = started
    holding = [r for r in rows if r["at_or_above_p99"]]
    return {"fetches": len(rows), "holding_the_slowest_1pct": len(holding),
            "worst": sorted(holding, key=lambda r: -r["at_or_above_p99"])[:3]}


async def _freshness(bootstrap: str, redis_url: str, data_dir: Path, rate: float, seconds: float,
                     warmup_s: float, services: dict[str, int]) -> tuple[dict[str, Any], list[int]]:
    """Freshness at `rate`, and the latencies (ms) of its steady events; `services`: the pids of the broker
    and Redis when this run started them."""
    repo = card_fraud_repo(f"bench-fresh-{uuid.uuid4().hex[:6]}")
    topic = repo.sources["transactions"].topic
    await ensure_topics(bootstrap, repo)
    batches: list[AppliedBatch] = []
    materializer = Materializer(_config(bootstrap, redis_url, data_dir, uuid.uuid4().hex[:6]), repo,
                                on_applied=batches.append)
    await materializer.start()
    task = asyncio.create_task(materializer.run())
    while not materializer._parts:  # wait for the group join before producing
        await asyncio.sleep(0.1)
    script_before, cpu_before = await _script_usec(redis_url), time.process_time()
    host = HostCpu({{"redis": "redis", "kafka": "broker"}[name]: pid for name, pid in services.items()})
    ctx = multiprocessing.get_context("spawn")  # a fork would inherit this process's running event loop
    sent, producer_cpu_s = ctx.Value("q", 0), ctx.Value("d", 0.0)
    produced_s = warmup_s + seconds
    producer = ctx.Process(target=_produce_at_rate, args=(bootstrap, topic, rate, produced_s, sent, producer_cpu_s))
    producer.start()
    while producer.is_alive():
        await asyncio.sleep(0.1)
    assert producer.exitcode == 0, f"the producer process failed (exit {producer.exitcode})"
    deadline = time.monotonic() + 30
    while sum(len(b.event_times) for b in batches) < sent.value and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    cpu_s = time.process_time() - cpu_before
    host_cpu = host.shares(sent.value, {"worker": cpu_s, "producer": producer_cpu_s.value})
    script_s = (await _script_usec(redis_url) - script_before) / 1e6
    materializer.request_stop()
    await task
    await materializer.stop()
    samples = [(t, b.written_ms - t) for b in batches for t in b.event_times]
    steady = [latency for _, latency in _steady(samples, warmup_s)[0]]
    return {"input_rate_target": rate, "input_rate_achieved": round(sent.value / produced_s),
            "events": sent.value, "applied": len(samples), **_latencies(samples, warmup_s),
            "where_the_time_goes": _where_the_time_goes(batches, warmup_s),
            # where the CPU goes, warm-up included: Redis's time in the worker's scripts, and the whole
            # host: how busy its cores were and who kept them busy (the broker and Redis processes only when
            # this run started them)
            "redis_script_us_per_event": round(script_s / max(1, sent.value) * 1e6, 1),
            "host_cpu": host_cpu,
            "load_average_1m": round(os.getloadavg()[0], 2)}, steady


def _over_runs(runs: list[dict[str, Any]], pooled: list[int]) -> dict[str, Any]:
    """One rate's runs together: each run's p99, how many met the target, and the p50/p99 of all their events.

    Why: one 8-10 s run's p99 is the worst ~1% of its events, often one or two
    late batches, and moved by +-20 ms from run to run on this shared VM; the
    pooled figure is the one to compare with the target.
    """
    p99s = [run["p99_ms"] for run in runs]
    return {"runs": len(runs), "p99_ms_per_run": p99s,
            "runs_within_target": sum(1 for p99 in p99s if p99 is not None and p99 < FRESHNESS_P99_TARGET_MS),
            "pooled": {"events": len(pooled), "p50_ms": _q(pooled, 0.50), "p99_ms": _q(pooled, 0.99)}}


async def _raw_latency(bootstrap: str, rate: float, seconds: float, warmup_s: float) -> dict[str, Any]:
    """The same producer at the same rate, read by a bare aiokafka consumer: the freshness floor here."""
    repo = card_fraud_repo(f"bench-raw-{uuid.uuid4().hex[:6]}")
    source = repo.sources["transactions"]
    await ensure_topics(bootstrap, repo)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20)
    await consumer.start()
    samples: list[tuple[int, int]] = []
    try:
        tps = [TopicPartition(source.topic, p) for p in range(source.partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        ctx = multiprocessing.get_context("spawn")
        sent = ctx.Value("q", 0)
        producer = ctx.Process(target=_produce_at_rate,
                               args=(bootstrap, source.topic, rate, warmup_s + seconds, sent))
        producer.start()
        while producer.is_alive() or len(samples) < sent.value:
            batches = await consumer.getmany(timeout_ms=50)
            now = time.time_ns() // 1_000_000
            event_times = [orjson.loads(r.value)["ts"] for rs in batches.values() for r in rs]
            samples.extend((t, now - t) for t in event_times)
            if not producer.is_alive() and not batches:
                break
    finally:
        await consumer.stop()
    return {"input_rate_target": rate, "events": len(samples), **_latencies(samples, warmup_s)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    bootstrap = os.environ.get("FEATURESTREAM_KAFKA")
    redis_url = os.environ.get("FEATURESTREAM_REDIS")
    with LocalStack(redis_url=redis_url, kafka_bootstrap=bootstrap) as stack, \
            tempfile.TemporaryDirectory(prefix="fs-bench-") as tmp:
        bootstrap, redis_url = stack.kafka_bootstrap, stack.redis_url
        speed_before = speed_probe()
        data_dir = Path(tmp)
        repo = card_fraud_repo(f"bench-{uuid.uuid4().hex[:6]}")
        source = repo.sources["transactions"]
        gen = TransactionGenerator(users=args.users, merchants=args.merchants, seed=1)
        events = [e for e, _ in gen.events(args.events)]
        fill_rate = await _fill(bootstrap, repo, events)
        raw = await _raw_consume(bootstrap, source.topic, source.partitions, args.events)
        worker = await _throughput(bootstrap, redis_url, data_dir, repo, args.events)
        fresh: list[dict[str, Any]] = []
        by_rate: dict[str, Any] = {}
        for rate in args.rate:
            runs, pooled = [], []
            for run in range(1, args.repeat + 1):
                result, steady = await _freshness(bootstrap, redis_url, data_dir, rate, args.seconds, args.warmup,
                                                  stack.pids())
                runs.append({**result, "run": run})
                pooled += steady
            fresh += runs
            by_rate[str(rate)] = _over_runs(runs, sorted(pooled))
        raw_fresh = [await _raw_latency(bootstrap, rate, args.seconds, args.warmup) for rate in args.rate]
        return {
            "bench": "stream",
            "cpu_count": os.cpu_count(),
            "machine_speed": {"before": speed_before, "after": speed_probe()},
            "events": args.events,
            "users": args.users,
            "merchants": args.merchants,
            "partitions": source.partitions,
            "views": sorted(repo.views),
            "publish_events_per_s": round(fill_rate),
            "raw_aiokafka_consume_events_per_s": round(raw),
            "worker_events_per_s": worker["events_per_s"],
            "worker_vs_raw": round(worker["events_per_s"] / raw, 3),
            "worker_seconds": worker["seconds"],
            "worker_redis_script_seconds": worker["redis_script_seconds"],
            "worker_redis_script_share": round(worker["redis_script_seconds"] / worker["seconds"], 3),
            "worker_cpu_seconds": worker["cpu_seconds"],
            "worker_events_per_cpu_s": round(args.events / worker["cpu_seconds"]) if worker["cpu_seconds"] else None,
            "worker_redis_script_us_per_event": round(worker["redis_script_seconds"] / args.events * 1e6, 1),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "freshness": fresh,
            "freshness_by_rate": by_rate,
            "raw_produce_to_consume_latency": raw_fresh,
            "targets": {"worker_events_per_s": 50_000, "freshness_p99_ms": FRESHNESS_P99_TARGET_MS},
        }


if __name__ == "__main__":
    from feature_store.logging import configure_logging
    from feature_store.settings import load_settings

    configure_logging(load_settings(log_level="WARNING"))  # stdout carries only the JSON
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=float, nargs="+", default=[10_000.0, 2_000.0],
                        help="input rates (events/s) to measure freshness at")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds of each rate's stream")
    parser.add_argument("--repeat", type=int, default=3,
                        help="freshness runs per rate, each on a fresh topic (`freshness_by_rate` pools them)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of stream before those, reported apart (`warmup`)")
    parser.add_argument("--users", type=int, default=10_000, help="entity cardinality of the throughput stream")
    parser.add_argument("--merchants", type=int, default=1_000)
    # on the event loop `featurestream worker` runs on
    print(orjson.dumps(uvloop.run(main(parser.parse_args())), option=orjson.OPT_INDENT_2).decode())
