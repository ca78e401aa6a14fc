"""Online serving benchmark: `/v1/features` and `/v1/predict` latency and throughput over loopback.

    .venv/bin/python bench/online.py [--rate 1000] [--seconds 5] [--users 2000]

Starts a private redis-server (or uses FEATURESTREAM_REDIS), writes the
card-fraud `user_spend` state (8 windowed features, 5 min and 1 h tiles up to
7 days) for `--users` users, starts the API with uvicorn in a subprocess
(1 worker, uvloop + httptools) and loads it from this process with a minimal
keep-alive HTTP/1.1 client on raw asyncio streams (so the client adds as
little as possible to the latency it measures).

Scenarios, each for /v1/features (the 8 features) and /v1/predict (a rule
model over the same 8 features + a derived request feature):
- open loop at a fixed rate (1 entity at `--rate` req/s; 100 entities at
  `--rate-100` req/s): latency measured from the *scheduled* send time, so a
  stalled server cannot hide queueing (no coordinated omission);
- closed loop with `--concurrency` connections: saturation requests/s.

Printed next to the physical limit measured in the same run: the same
pipelined HMGET/GET round trip done directly with redis.asyncio (no
decoding), and `OnlineReader.read` in process (round trip + decoding).
Bounded: every phase has a fixed duration and request count cap.
"""

from __future__ import annotations

import argparse
import asyncio
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feature_store.aggregates import empty_stats, event_stats, merge, tile_layouts  # noqa: E402
from feature_store.definitions import FeatureService, FeatureView  # noqa: E402
from feature_store.online import KeyLayout, OnlineReader, pack_stats, partition_for  # noqa: E402
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




def write_state(redis_url: str, view: FeatureView, users: int, now: int, events_per_user: int) -> int:
    """Tiles of `users` users with events spread over the last 7 days; returns keys written."""
    import redis

    r = redis.Redis.from_url(redis_url)
    keys = KeyLayout(PREFIX)
    rng = random.Random(7)
    written = 0
    pipe = r.pipeline(transaction=False)
    seq = 0
    for u in range(users):
        entity = f"u{u}"
        partition = partition_for(entity, view.source.partitions)
        events = []
        for _ in range(events_per_user):
            t = now - int(rng.expovariate(1 / (2 * 86_400_000))) % (7 * 86_400_000)
            events.append((t, {"amount_usd": round(rng.lognormvariate(3.5, 0.8), 2),
                               "is_foreign": int(rng.random() < 0.08)}))
        events.append((now - rng.randrange(1, 60_000), {"amount_usd": 10.0, "is_foreign": 0}))
        for layout in tile_layouts(view):
            tiles: dict[int, list[Any]] = {}
            for t, row in events:
                seq += 1
                start = tile_start(t, layout.hop_ms)
                one = event_stats(layout, row, event_time=t, tie=t, seq=seq)
                tiles[start] = merge(layout, tiles.get(start, empty_stats(layout)), one)
            pipe.hset(keys.state_key(view, partition, entity, layout.hop_ms),
                      mapping={str(s): pack_stats(v) for s, v in tiles.items()})
            written += 1
        if u % 200 == 199:
            pipe.execute()
    pipe.execute()
    r.close()
    return written


# ---------------------------------------------------------------- raw limits


async def raw_limits(redis_url: str, view: FeatureView, entities: list[str], n: int, batch: int) -> dict[str, Any]:
    """The same pipelined reads the server does, directly (no decoding), and OnlineReader in process."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    keys = KeyLayout(PREFIX)
    reader = OnlineReader(r, keys)
    layouts = tile_layouts(view)
    grouped = {view: list(view.feature_names)}
    raw: list[float] = []
    decoded: list[float] = []
    for i in range(n):
        chosen = [entities[(i * batch + j) % len(entities)] for j in range(batch)]
        t = time.time_ns() // 1_000_000
        pipe = r.pipeline(transaction=False)
        for entity in chosen:
            for layout in layouts:  # the reader's commands: one HGETALL per tile series
                pipe.hgetall(keys.state_key(view, partition_for(entity, view.source.partitions), entity,
                                            layout.hop_ms))
        start = time.perf_counter()
        await pipe.execute()
        raw.append(time.perf_counter() - start)
        start = time.perf_counter()
        await reader.read(grouped, [{"user_id": e} for e in chosen], t)
        decoded.append(time.perf_counter() - start)
    await r.aclose()
    return {"redis_pipeline_round_trip": _stats(raw), "online_reader_in_process": _stats(decoded)}


# ---------------------------------------------------------------- HTTP load


class Conn:
    """One keep-alive HTTP/1.1 connection on raw asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def http_post(path: str, body: dict[str, Any]) -> bytes:
    payload = orjson.dumps(body)
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload


async def open_loop(port: int, requests: list[bytes], rate: float, seconds: float, pool: int) -> dict[str, Any]:
    """Send at fixed intervals; latency from the scheduled time; a free connection per request."""
    conns = [await Conn.open(port) for _ in range(pool)]
    free: asyncio.Queue[Conn] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)
    latencies: list[float] = []
    errors = 0
    count = int(rate * seconds)
    interval = 1.0 / rate
    loop = asyncio.get_running_loop()
    begin = loop.time() + 0.05

    async def one(i: int) -> None:
        nonlocal errors
        scheduled = begin + i * interval
        conn = await free.get()
        try:
            status = await conn.request(requests[i % len(requests)])
            if status != 200:
                errors += 1
        finally:
            free.put_nowait(conn)
        latencies.append(loop.time() - scheduled)

    tasks = []
    for i in range(count):
        delay = begin + i * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - begin
    for c in conns:
        c.close()
    return {"target_rps": rate, "achieved_rps": round(count / elapsed, 1), "requests": count, "errors": errors,
            **_stats(latencies)}


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
            if await conn.request(requests[i % len(requests)]) != 200:
                errors += 1
            latencies.append(time.perf_counter() - start)
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


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_child(port: int, repo_file: str) -> None:
    """Runs in the subprocess: the app exactly as `featurestream serve` builds it."""
    import uvicorn

    from feature_store.settings import load_settings
    from serving import ServingConfig, create_app

    settings = load_settings()
    app = create_app(settings, repo_path=Path(repo_file), config=ServingConfig(key_prefix=PREFIX))
    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, loop="uvloop", http="httptools", access_log=False,
                log_config=None, log_level="warning")


async def _wait_http(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn = await Conn.open(port)
            conn.writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await conn.reader.readuntil(b"\r\n\r\n")
            conn.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("the API did not start")


async def run(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    from feature_store.models import ModelRegistry
    from feature_store.repo import load_repo
    from feature_store.settings import load_settings

    tmp = Path(tempfile.mkdtemp(prefix="bench-online-"))
    repo_file = tmp / "features.py"
    repo_file.write_text(REPO_FILE)
    repo = load_repo(repo_file)
    view = repo.view("user_spend")
    service: FeatureService = repo.service("bench8")
    now = time.time_ns() // 1_000_000
    written = write_state(redis_url, view, args.users, now, args.events_per_user)
    env = {**os.environ, "FEATURESTREAM_REDIS": redis_url, "FEATURESTREAM_DATA_DIR": str(tmp / "data"),
           "FEATURESTREAM_REGISTRY": str(tmp / "registry.db"), "FEATURESTREAM_LOG_LEVEL": "WARNING"}
    env.pop("FEATURESTREAM_KAFKA", None)
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
    }
    limits_1 = await raw_limits(redis_url, view, entities, 2000, 1)
    limits_100 = await raw_limits(redis_url, view, entities, 200, 100)
    port = _free_port()
    child = subprocess.Popen([sys.executable, __file__, "--serve-child", str(port), str(repo_file)], env=env,
                             cwd=str(ROOT), stdout=sys.stderr)
    try:
        await _wait_http(port)
        for name in bodies:  # warm up: model load, query cache, connections
            await closed_loop(port, bodies[name], 0.5, 2)
        results: dict[str, Any] = {}
        for name, requests in bodies.items():
            single = name.endswith("_1")
            rate = args.rate if single else args.rate_100
            cpu = _cpu_s(child.pid)
            opened = await open_loop(port, requests, rate, args.seconds, pool=32)
            cpu_open = _cpu_s(child.pid) - cpu
            closed = await closed_loop(port, requests, args.seconds, args.concurrency)
            cpu_closed = _cpu_s(child.pid) - cpu - cpu_open
            opened["server_cpu_ms_per_request"] = round(cpu_open * 1000 / max(opened["requests"], 1), 3)
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
    cores = os.cpu_count() or 1
    for name, result in results.items():
        raw = (limits_1 if name.endswith("_1") else limits_100)["redis_pipeline_round_trip"]
        result["p99_vs_raw_redis_p99"] = round(result["open_loop"]["p99_ms"] / raw["p99_ms"], 2)
    return {
        "bench": "online",
        "machine": {"cores": cores, "load_average_1m": os.getloadavg()[0],
                    "note": "server: 1 uvicorn worker (at most one core); client in this process; "
                            "rps_per_server_cpu_second = saturation per core, independent of other load"},
        "state": {"users": args.users, "keys": written, "features": len(FEATURES_8),
                  "tile_fields_per_entity": sum(lay.max_window_ms // lay.hop_ms for lay in tile_layouts(view))},
        "raw_limit_1_entity": limits_1,
        "raw_limit_100_entities": limits_100,
        "targets": {"features_1_p99_ms_at_1000_rps": 1.5, "features_100_p99_ms": 10.0},
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop req/s for 1 entity")
    parser.add_argument("--rate-100", type=float, default=100.0, help="open-loop req/s for 100 entities")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each phase")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop connections")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--events-per-user", type=int, default=30)
    parser.add_argument("--serve-child", nargs=2, metavar=("PORT", "REPO"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child:
        serve_child(int(args.serve_child[0]), args.serve_child[1])
        return
    given = os.environ.get("FEATURESTREAM_REDIS")
    if given:
        report = asyncio.run(run(args, given))
    else:
        from feature_store.local_stack import LocalStack

        with LocalStack(services=("redis",)) as stack:
            report = asyncio.run(run(args, stack.redis_url))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
