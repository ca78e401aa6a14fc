"""Online serving benchmark: `/v1/features` and `/v1/predict` latency and throughput over loopback.

    .venv/bin/python bench/online.py [--rate 1000] [--seconds 5] [--users 2000]

Starts a private redis-server (or uses FEATURESTREAM_REDIS), writes the
card-fraud `user_spend` state (8 windowed features, 5 min and 1 h tiles up to
7 days) for `--users` users through the stream worker's script (`OnlineWriter`,
so the tile hashes carry the markers the reader's cache relies on), starts the
API in a subprocess as `featurestream serve` runs it (`serving.server`: 1
uvicorn worker, uvloop, httptools, one write per response) and loads it
from this process with a minimal keep-alive HTTP/1.1 client, an asyncio
protocol on uvloop: a request is written as its timer fires and its clock stops
in `data_received` (so the client adds as little as possible to the latency it
measures).

Scenarios, each for /v1/features (the 8 features) and /v1/predict (a rule
model over the same 8 features + a derived request feature):
- open loop at a fixed rate (1 entity at `--rate` req/s; 100 entities at
  `--rate-100` req/s), a free connection per request: latency runs from the
  moment the client's timer fires for a request, waiting for a connection
  included, so a stalled server cannot hide queueing (no coordinated
  omission); the timer's own lateness (event loop timers round to the
  millisecond) is reported apart as `timer_slack`; `server_core_load` is the
  share of the server's core the offered rate asks for (server CPU per request
  x rate): above 1 the queue grows for the whole phase, as it does for
  `features_100_cold` at 100 req/s on this VM;
- closed loop with `--concurrency` connections: saturation requests/s.

Warm and cold: the server caches the merged closed tiles per tile hash
(`feature_store.online.tile_cache`), so a repeated read fetches only the open
tiles. `features_*` and `predict_*` run on that server (after warm-up, the
cache holds every key; a tile boundary crossed during the run rolls the
entries forward, a second one forces whole reads, as in production).
`features_*_cold` run on a second server with the cache off: every read is a
miss, i.e. what the first read of a key after a late event or a
materialization costs.

Printed next to the physical limit measured in the same run: the reader's
pipelined Redis commands sent on its wire path (one hiredis-packed write, replies
parsed by hiredis, nothing decoded further) - the
warm probes (HMGET of markers + open tiles) and the cold whole-hash reads
(HGETALL) - and `OnlineReader.read` in process (round trip + decoding), warm
and cold; and `healthz_1`, `GET /healthz` on the same server through the same
client and middleware: the HTTP floor under the latency targets. The client
freezes and disables its own garbage collector while it measures (it is
not under test). Bounded: every phase has a fixed duration and request count cap.

CPU placement (`--pin`, the default on 2+ cores): the server process runs on
the last core, this client and redis-server on the others, so the load
generator does not preempt the server it measures (on this 2-core VM two
busy processes alone see 1-6 ms scheduler gaps, about 16 per 5 s, enough to
move a 1,000 req/s p99). `--no-pin` lets the OS place them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import process_cpu_s, speed_probe  # noqa: E402
from feature_store.aggregates import SEQ_PARTITION_SHIFT, empty_stats, event_stats, merge, tile_layouts  # noqa: E402
from feature_store.definitions import FeatureService, FeatureView  # noqa: E402
from feature_store.online import KeyLayout, OnlineReader, pack_stats, partition_for  # noqa: E402
from feature_store.online.resp import execute  # noqa: E402
from feature_store.online.tile_cache import shape_of  # noqa: E402
from feature_store.online.writer import NO_OFFSET, OnlineWriter, PartitionBatch  # noqa: E402
from feature_store.windows import tile_start  # noqa: E402

PREFIX = "bench"
FEATURES_8 = [
    "user_spend:txn_count_5m", "user_spend:txn_count_1h", "user_spend:amount_sum_1h", "user_spend:amount_mean_24h",
    "user_spend:amount_max_24h", "user_spend:foreign_count_24h", "user_spend:amount_std_7d",
    "user_spend:amount_mean_7d",
]
REPO_FILE = '''
from feature_store.definitions import FeatureService
from feature_store.examples.card_fraud.features import *  # noqa: F403
from feature_store.examples.card_fraud.features import user_spend

bench8 = FeatureService(
    name="bench8", features=[user_spend], request_fields={"amount": "float"},
    derived={"amount_ratio": "amount / coalesce(user_spend__amount_mean_24h, amount)"},
)
'''


# ---------------------------------------------------------------- state




async def write_state(redis_url: str, view: FeatureView, users: int, now: int, events_per_user: int) -> int:
    """Tiles of `users` users with events spread over the last 7 days, applied like the stream worker does
    (per partition fenced script calls with each key's tile partials); returns keys written."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    writer = OnlineWriter(r)
    keys = KeyLayout(PREFIX)
    layouts = tile_layouts(view)
    source = view.source
    offsets = dict.fromkeys(range(source.partitions), NO_OFFSET)
    batches: dict[int, PartitionBatch] = {}
    rng = random.Random(7)
    written = 0

    async def flush(partition: int) -> None:
        batch = batches.pop(partition)
        result = await writer.apply(batch)
        assert result.applied, "bench state: a fenced batch"
        offsets[partition] = result.stored_offset

    for u in range(users):
        entity = f"u{u}"
        partition = partition_for(entity, source.partitions)
        batch = batches.get(partition)
        if batch is None:
            first = offsets[partition] + 1
            batch = batches[partition] = PartitionBatch(
                offset_key=keys.offset_key(source, partition), expected_offset=offsets[partition],
                first_offset=first, last_offset=first - 1, watermark=now, layouts=layouts)
        events = []
        for _ in range(events_per_user):
            t = now - int(rng.expovariate(1 / (2 * 86_400_000))) % (7 * 86_400_000)
            events.append((t, {"amount_usd": round(rng.lognormvariate(3.5, 0.8), 2),
                               "is_foreign": int(rng.random() < 0.08)}))
        events.append((now - rng.randrange(1, 60_000), {"amount_usd": 10.0, "is_foreign": 0}))
        offsets_of = range(batch.last_offset + 1, batch.last_offset + 1 + len(events))
        batch.last_offset += len(events)
        for index, layout in enumerate(layouts):
            tiles: dict[int, list[Any]] = {}
            for offset, (t, row) in zip(offsets_of, events, strict=True):
                start = tile_start(t, layout.hop_ms)
                one = event_stats(layout, row, event_time=t, tie=t, seq=partition * SEQ_PARTITION_SHIFT + offset)
                tiles[start] = merge(layout, tiles.get(start, empty_stats(layout)), one)
            keep = layout.max_window_ms + layout.hop_ms + source.future_tolerance_ms  # as streams/views.py
            batch.add_tiles(keys.state_key(view, partition, entity, layout.hop_ms), index, keep + 86_400_000, keep,
                            max(1, keep // layout.hop_ms // 4) * layout.hop_ms, False,
                            [(start, pack_stats(v)) for start, v in sorted(tiles.items())])
            written += 1
        if len(batch.keys) >= 400:
            await flush(partition)
    for partition in list(batches):
        await flush(partition)
    await r.aclose()
    return written


# ---------------------------------------------------------------- raw limits


async def raw_limits(redis_url: str, view: FeatureView, entities: list[str], n: int, batch: int) -> dict[str, Any]:
    """The reader's pipelined commands done directly (no decoding), and OnlineReader in process, warm and cold.

    Warm: the probes a cached reader sends (HMGET of the markers and the open tiles, taken from its cache
    after a first read); cold: one HGETALL per tile hash (what a miss reads).
    """
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    keys = KeyLayout(PREFIX)
    warm_reader = OnlineReader(r, keys)
    cold_reader = OnlineReader(r, keys, cache_keys=0)
    layouts = tile_layouts(view)
    grouped = {view: list(view.feature_names)}
    samples: dict[str, list[float]] = {"probe": [], "whole": [], "warm": [], "cold": []}
    for i in range(n):
        chosen = [entities[(i * batch + j) % len(entities)] for j in range(batch)]
        rows = [{"user_id": e} for e in chosen]
        t = time.time_ns() // 1_000_000
        await warm_reader.read(grouped, rows, t)  # fills the cache for these keys (a miss, not timed)
        start = time.perf_counter()
        await warm_reader.read(grouped, rows, t)
        samples["warm"].append(time.perf_counter() - start)
        start = time.perf_counter()
        await cold_reader.read(grouped, rows, t)
        samples["cold"].append(time.perf_counter() - start)
        whole: list[tuple[Any, ...]] = []
        probe: list[tuple[Any, ...]] = []
        for entity in chosen:
            for layout in layouts:
                key = keys.state_key(view, partition_for(entity, view.source.partitions), entity, layout.hop_ms)
                whole.append(("HGETALL", key))
                entry = warm_reader.cache.get(key, shape_of(layout), tile_start(t, layout.hop_ms))
                assert entry is not None, "bench state lacks the cache markers"
                probe.append(("HMGET", key, *entry.probe))
        start = time.perf_counter()
        await execute(r, probe)  # the reader's wire path (hiredis pack/parse), replies not decoded further
        samples["probe"].append(time.perf_counter() - start)
        start = time.perf_counter()
        await execute(r, whole)
        samples["whole"].append(time.perf_counter() - start)
    await r.aclose()
    return {"redis_round_trip_warm_probes": _stats(samples["probe"]),
            "redis_round_trip_cold_hgetall": _stats(samples["whole"]),
            "online_reader_in_process_warm": _stats(samples["warm"]),
            "online_reader_in_process_cold": _stats(samples["cold"])}


# ---------------------------------------------------------------- HTTP load


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; a response's clock stops in `data_received`, as its last byte is read.

    A protocol rather than streams: no task wake-up between the read and the timestamp, so the client's
    own scheduling adds as little as possible to the latency it measures.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, float]] | None = None
        self._lost: Exception | None = None

    @classmethod
    async def open(cls, port: int) -> Conn:
        loop = asyncio.get_running_loop()
        transport, conn = await loop.create_connection(cls, "127.0.0.1", port)
        conn.transport = transport  # uvloop may call connection_made after create_connection returns
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport does not subclass it

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionResetError("the server closed the connection")
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._lost)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0 or self._waiter is None:
            return
        head = bytes(self._buffer[:head_end])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if len(self._buffer) < head_end + 4 + length:
            return
        done = time.perf_counter()
        del self._buffer[:head_end + 4 + length]
        waiter, self._waiter = self._waiter, None
        if not waiter.done():
            waiter.set_result((int(head[9:12]), done))

    def send(self, raw: bytes) -> asyncio.Future[tuple[int, float]]:
        """Write one request now; the future gives (status, perf_counter when its response was read whole)."""
        if self._lost is not None:
            raise self._lost
        assert self.transport is not None
        assert self._waiter is None, "one request at a time per connection"
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self._waiter

    async def request(self, raw: bytes) -> int:
        return (await self.send(raw))[0]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def http_post(path: str, body: dict[str, Any]) -> bytes:
    payload = orjson.dumps(body)
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload


async def open_loop(port: int, requests: list[bytes], rate: float, seconds: float, pool: int) -> dict[str, Any]:
    """Send at fixed intervals, a free connection per request (waiting for one counts as latency).

    A request's clock starts when the client's timer fires for it, not at its scheduled time: the event
    loop's timers have millisecond resolution, a client artifact reported apart as `timer_slack`.
    """
    conns = [await Conn.open(port) for _ in range(pool)]
    free: asyncio.Queue[Conn] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)
    latencies: list[float] = []
    sent_at: list[float] = []  # seconds into the run, per latency: shows whether the tail is one stall
    slack: list[float] = []
    errors = 0
    count = int(rate * seconds)
    interval = 1.0 / rate
    clock = time.perf_counter  # sub-microsecond, whatever the event loop
    begin = clock() + 0.05
    pending: set[asyncio.Future[Any]] = set()

    def send(conn: Conn, raw: bytes, start: float) -> None:
        def finished(reply: asyncio.Future[tuple[int, float]]) -> None:
            nonlocal errors
            pending.discard(reply)
            if reply.exception() is not None:  # the connection is gone: not returned to the pool
                errors += 1
                return
            free.put_nowait(conn)
            status, done = reply.result()
            errors += status != 200
            latencies.append(done - start)
            sent_at.append(start - begin)

        reply = conn.send(raw)
        pending.add(reply)
        reply.add_done_callback(finished)

    async def queued(raw: bytes, start: float) -> None:  # every connection busy: waiting counts as latency
        send(await free.get(), raw, start)

    for i in range(count):
        delay = begin + i * interval - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        start = clock()
        slack.append(start - (begin + i * interval))
        raw = requests[i % len(requests)]
        if free.empty():
            waiting = asyncio.ensure_future(queued(raw, start))
            pending.add(waiting)
            waiting.add_done_callback(pending.discard)
        else:
            send(free.get_nowait(), raw, start)
    while pending:
        await asyncio.gather(*pending, return_exceptions=True)
    elapsed = clock() - begin
    for c in conns:
        c.close()
    timer = _stats(slack)
    return {"target_rps": rate, "achieved_rps": round(count / elapsed, 1), "requests": count, "errors": errors,
            **_stats(latencies), "timer_slack": {"p50_ms": timer["p50_ms"], "p99_ms": timer["p99_ms"]},
            "worst_ms_at_s": [[round(lat * 1000, 2), round(at, 3)]
                              for lat, at in sorted(zip(latencies, sent_at, strict=True), reverse=True)[:8]]}


async def closed_loop(port: int, requests: list[bytes], seconds: float, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal errors
        conn = await Conn.open(port)
        i = k
        while time.perf_counter() < stop:
            start = time.perf_counter()
            status, done = await conn.send(requests[i % len(requests)])
            errors += status != 200
            latencies.append(done - start)
            i += concurrency
        conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"concurrency": concurrency, "rps": round(len(latencies) / elapsed, 1), "requests": len(latencies),
            "errors": errors, **_stats(latencies)}


def _stats(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {}
    s = sorted(samples)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))] * 1000, 3)

    return {"p50_ms": q(0.50), "p99_ms": q(0.99), "max_ms": round(s[-1] * 1000, 3), "n": len(s)}


# ---------------------------------------------------------------- server process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_child(port: int, repo_file: str, cache_keys: int, core: int) -> None:
    """Runs in the subprocess: the app exactly as `featurestream serve` builds it (cache size aside)."""
    if core >= 0:
        os.sched_setaffinity(0, {core})

    from feature_store.settings import load_settings
    from serving import ServingConfig, create_app
    from serving.server import run

    settings = load_settings()
    app = create_app(settings, repo_path=Path(repo_file),
                     config=ServingConfig(key_prefix=PREFIX, online_cache_keys=cache_keys))
    run(app, host="127.0.0.1", port=port, log_level="warning")


async def _wait_http(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn = await Conn.open(port)
            await conn.request(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("the API did not start")


async def run(args: argparse.Namespace, redis_url: str, kafka: str | None) -> dict[str, Any]:
    from feature_store.models import ModelRegistry
    from feature_store.repo import load_repo
    from feature_store.settings import load_settings

    speed_before = speed_probe()
    tmp = Path(tempfile.mkdtemp(prefix="bench-online-"))
    repo_file = tmp / "features.py"
    repo_file.write_text(REPO_FILE)
    repo = load_repo(repo_file)
    view = repo.view("user_spend")
    service: FeatureService = repo.service("bench8")
    now = time.time_ns() // 1_000_000
    written = await write_state(redis_url, view, args.users, now, args.events_per_user)
    env = {**os.environ, "FEATURESTREAM_REDIS": redis_url, "FEATURESTREAM_DATA_DIR": str(tmp / "data"),
           "FEATURESTREAM_REGISTRY": str(tmp / "registry.db"), "FEATURESTREAM_LOG_LEVEL": "WARNING"}
    env.pop("FEATURESTREAM_KAFKA", None)
    if kafka:  # the prediction log sends every /v1/predict answer to this broker, as in production
        env["FEATURESTREAM_KAFKA"] = kafka
    settings = load_settings(redis=redis_url, data_dir=tmp / "data", registry=tmp / "registry.db")
    models = ModelRegistry.from_settings(settings)
    models.register("bench", "if_(amount_ratio > 3, 0.9, 0.1) + user_spend__txn_count_1h / 1000", flavor="rule",
                    feature_service=service.name, fallback="0.5")
    models.promote("bench", 1, "production")
    entities = [f"u{i}" for i in range(args.users)]
    rng = random.Random(1)
    one = [{"user_id": rng.choice(entities)} for _ in range(2000)]
    hundred = [[{"user_id": rng.choice(entities)} for _ in range(100)] for _ in range(200)]
    bodies = {
        "features_1": [http_post("/v1/features", {"features": FEATURES_8, "entities": [e]}) for e in one],
        "features_100": [http_post("/v1/features", {"features": FEATURES_8, "entities": b}) for b in hundred],
        "predict_1": [http_post("/v1/predict/bench", {"entities": [e], "request": {"amount": 50.0}}) for e in one],
        "predict_100": [http_post("/v1/predict/bench", {"entities": b, "request": {"amount": 50.0}})
                        for b in hundred],
        # the HTTP floor: the same client, server and middleware on a route without I/O
        "healthz_1": [b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"],
    }
    gc.collect()  # this process is the client, not under test: no collector pauses of its own in the figures
    gc.freeze()
    gc.disable()
    limits_1 = await raw_limits(redis_url, view, entities, args.raw_samples, 1)
    limits_100 = await raw_limits(redis_url, view, entities, max(args.raw_samples // 10, 1), 100)
    results: dict[str, Any] = {}
    warm = {name: bodies[name] for name in ("healthz_1", "features_1", "features_100", "predict_1",
                                                "predict_100")}
    cold = {"features_1_cold": bodies["features_1"], "features_100_cold": bodies["features_100"]}
    if args.only:
        warm = {k: v for k, v in warm.items() if k in args.only}
        cold = {k: v for k, v in cold.items() if k in args.only}
    if warm:
        await _load(args, repo_file, env, 20_000, warm, results)
    if cold:
        await _load(args, repo_file, env, 0, cold, results)
    cores = os.cpu_count() or 1
    floor = results.get("healthz_1")
    for name, result in results.items():
        if name.startswith("healthz"):
            continue
        one_entity = "_1" in name and "_100" not in name
        limits = limits_1 if one_entity else limits_100
        raw = limits["redis_round_trip_cold_hgetall" if name.endswith("_cold") else "redis_round_trip_warm_probes"]
        result["p99_vs_raw_redis_p99"] = round(result["open_loop"]["p99_ms"] / raw["p99_ms"], 2)
        if one_entity and floor is not None:  # what the route's own work adds to the tail of this machine's HTTP path
            result["p99_above_http_floor_ms"] = round(result["open_loop"]["p99_ms"] - floor["open_loop"]["p99_ms"], 3)
    return {
        "bench": "online",
        "machine": {"cores": cores, "load_average_1m": os.getloadavg()[0], "speed_before": speed_before,
                    "note": "server: 1 uvicorn worker (at most one core); client in this process; "
                            "rps_per_server_cpu_second = saturation per core, independent of other load"},
        "state": {"users": args.users, "keys": written, "features": len(FEATURES_8),
                  "tile_fields_per_entity": sum(lay.max_window_ms // lay.hop_ms for lay in tile_layouts(view)),
                  "written_by": "OnlineWriter (the stream worker's script)"},
        "scenarios": {"warm": "server with the closed-tile cache (20000 keys), warmed up: reads probe the open tiles",
                      "cold": "server with the cache off: every read is a whole-hash read (a miss)",
                      "healthz_1": "GET /healthz on the same server: the HTTP floor (client, uvicorn, middleware)",
                      "p99_vs_raw_redis_p99": "open-loop p99 / raw round trip p99 of the same commands "
                                              "(warm: probes, cold: HGETALL)",
                      "p99_above_http_floor_ms": "1 entity: open-loop p99 minus healthz_1's, both at the same rate"},
        "raw_limit_1_entity": limits_1,
        "raw_limit_100_entities": limits_100,
        "targets": {"features_1_p99_ms_at_1000_rps": 1.5, "features_100_p99_ms": 10.0},
        "results": results,
    }


async def _load(args: argparse.Namespace, repo_file: Path, env: dict[str, str], cache_keys: int,
                bodies: dict[str, list[bytes]], results: dict[str, Any]) -> None:
    """Start a server (cache of `cache_keys` keys), warm it up, run each scenario open then closed loop."""
    port = _free_port()
    core = args.server_core if args.pin else -1
    child = subprocess.Popen([sys.executable, __file__, "--serve-child", str(port), str(repo_file), str(cache_keys),
                              str(core)], env=env, cwd=str(ROOT), stdout=sys.stderr)
    try:
        await _wait_http(port)
        if core >= 0 and os.sched_getaffinity(child.pid) != {core}:
            raise SystemExit(f"the server runs on cores {sorted(os.sched_getaffinity(child.pid))}, not on {core}")
        for name in bodies:  # warm up: model load, query cache, connections
            await closed_loop(port, bodies[name], 0.5, 2)
        if cache_keys:  # and the tile cache: every user read once
            conn = await Conn.open(port)
            for chunk in range(0, args.users, 100):
                users = [{"user_id": f"u{u}"} for u in range(chunk, min(chunk + 100, args.users))]
                await conn.request(http_post("/v1/features", {"features": FEATURES_8, "entities": users}))
            conn.close()
        for name, requests in bodies.items():
            single = "_100" not in name
            rate = args.rate if single else args.rate_100
            cpu = process_cpu_s(child.pid)
            opened = await open_loop(port, requests, rate, args.seconds, pool=32)
            cpu_open = process_cpu_s(child.pid) - cpu
            closed = await closed_loop(port, requests, args.seconds, args.concurrency)
            cpu_closed = process_cpu_s(child.pid) - cpu - cpu_open
            opened["server_cpu_ms_per_request"] = round(cpu_open * 1000 / max(opened["requests"], 1), 3)
            # CPU the offered rate asks of the server's core: above 1, requests queue without bound (the
            # open-loop latencies then measure the queue)
            opened["server_core_load"] = round(opened["server_cpu_ms_per_request"] * rate / 1000, 2)
            closed["server_cpu_ms_per_request"] = round(cpu_closed * 1000 / max(closed["requests"], 1), 3)
            closed["rps_per_server_cpu_second"] = round(closed["requests"] / max(cpu_closed, 1e-9), 1)
            results[name] = {"open_loop": opened, "closed_loop": closed}
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _pin_load(server: int, pids: list[int]) -> dict[str, list[int]]:
    """Keep this client and `pids` (redis-server, Tansu) off the server's core."""
    rest = sorted(os.sched_getaffinity(0) - {server})
    for pid in [0, *pids]:
        os.sched_setaffinity(pid, rest)
    return {"server": [server], "client_and_services": rest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop req/s for 1 entity")
    parser.add_argument("--rate-100", type=float, default=100.0, help="open-loop req/s for 100 entities")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each phase")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop connections")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--events-per-user", type=int, default=30)
    parser.add_argument("--raw-samples", type=int, default=2000, help="raw limit samples (1 entity; 100: a tenth)")
    parser.add_argument("--only", nargs="*", help="run only these scenarios (e.g. features_1 features_100_cold)")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=len(os.sched_getaffinity(0)) > 1,
                        help="server on a core of its own, client, redis-server (and Tansu) on the others")
    parser.add_argument("--prediction-log", action="store_true",
                        help="connect the server's prediction log to a broker (FEATURESTREAM_KAFKA, else a local "
                             "Tansu), so /v1/predict pays for sending its records as in production")
    parser.add_argument("--serve-child", nargs=4, metavar=("PORT", "REPO", "CACHE_KEYS", "CORE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child:
        port, repo, cache_keys, core = args.serve_child
        serve_child(int(port), repo, int(cache_keys), int(core))
        return
    # the core the server gets to itself: the last one this process may use, chosen before this process
    # pins itself to the others
    args.server_core = max(os.sched_getaffinity(0))
    given = os.environ.get("FEATURESTREAM_REDIS")
    given_kafka = os.environ.get("FEATURESTREAM_KAFKA") if args.prediction_log else None
    if given and (given_kafka or not args.prediction_log):
        placement = _pin_load(args.server_core, []) if args.pin else None  # given services: placed by their owner
        report = uvloop.run(run(args, given, given_kafka))
    else:
        from feature_store.local_stack import LocalStack

        services: tuple[Any, ...] = ("redis", "kafka") if args.prediction_log else ("redis",)
        with LocalStack(services=services) as stack:
            placement = _pin_load(args.server_core, list(stack.pids().values())) if args.pin else None
            report = uvloop.run(run(args, stack.redis_url, stack.kafka_bootstrap if args.prediction_log else None))
    report["machine"]["prediction_log"] = ("every prediction sent to Kafka" if args.prediction_log else
                                           "no broker: records are queued (10,000 at most), then dropped")
    report["machine"]["speed_after"] = speed_probe()
    report["machine"]["cpu_placement"] = placement or "unpinned (the OS places client, server and redis-server)"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
