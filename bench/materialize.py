"""Materialization into Redis, next to raw pipelined writes of the same bytes; prints one JSON object.

    .venv/bin/python bench/materialize.py [--events 10000000] [--entities 100000] [--dir /tmp/fs-bench]
                                          [--redis redis://...] [--skip-windowed]

Data: bench/training_set.py's BatchSource (generated there, reused here):
`--events` rows over `--entities` users, 60 days. Without --redis a private
redis-server is started (and stopped) for the run.

- latest: the 8-field latest view (one SET ... PX per entity), state at the
  end of the data; limits measured in the same run: the same SETs (same
  keys, values, PX) through a redis-py pipeline in the same 10k chunks, and
  as pre-encoded RESP bytes on one raw socket (the wire limit); the compute
  limit is a bare DuckDB GROUP BY with arg_max over the same files;
- windowed: 3 aggregations in 2 hops (1 h, 1 d) over the last day plus the
  longest window (30 d): one EVALSHA of `set_tiles.lua` per 100 keys (all
  tiles, fresh reader-cache markers, PEXPIRE); limits: the same commands and bytes
  through a redis-py pipeline and a raw socket, and on the socket the same
  tiles as plain HSET + PEXPIRE (`raw_socket_without_markers_*`: what the
  markers cost);
  compute limit: bare DuckDB GROUP BY (user, tile) with count/sum over the
  same rows. `ratio_to_duckdb_plus_socket` compares with both limits added.

CPU seconds of this process (`cpu_s`) and of the Redis server (`redis_cpu_s`,
`raw_socket_redis_cpu_s`, from INFO cpu) are printed beside the wall times,
and the 1-minute load average before and after: on a shared machine they
tell a slow run from a starved one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).parent))

from training_set import BASE, DAY, definitions, generate  # the shared bench data


def _cpu_s() -> float:
    """CPU seconds of this process (DuckDB threads included): the machine is shared, wall time is noisy."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _redis_cpu_s(client: Any) -> float:
    """CPU seconds the Redis server has used (INFO cpu): its share of the work, whatever else runs."""
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _resp(*args: bytes | str | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


async def _raw_socket(url: str, commands: list[bytes], chunk: int) -> float:
    """Send pre-encoded commands on one connection, `chunk` at a time, and read every reply."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 6379)
    db = (parts.path or "/0").strip("/") or "0"
    writer.write(_resp("SELECT", db))
    await reader.readuntil(b"\r\n")
    started = time.perf_counter()
    for i in range(0, len(commands), chunk):
        batch = commands[i:i + chunk]
        writer.write(b"".join(batch))
        seen = 0
        while seen < len(batch):  # single-line replies: +OK, :n
            data = await reader.read(1 << 20)
            seen += data.count(b"\r\n")
    seconds = time.perf_counter() - started
    writer.close()
    await writer.wait_closed()
    return seconds


async def _raw_pipeline(client: Any, commands: list[tuple[Any, ...]], chunk: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(commands), chunk):
        pipe = client.pipeline(transaction=False)
        for command in commands[i:i + chunk]:
            pipe.execute_command(*command)
        await pipe.execute()
    return time.perf_counter() - started


def _raw_duckdb(data_dir: Path, name: str, end: int) -> float:
    """The compute limit: a bare DuckDB GROUP BY over the same files (no tie order, no as-served rule)."""
    from feature_store.offline.engine import connect

    files = f"read_parquet('{data_dir}/sources/bench_events/*.parquet')"
    if name == "latest":
        picks = ", ".join(f"arg_max(f{i}, ts)" for i in range(8))
        sql = f"SELECT user_id, max(ts), {picks} FROM {files} WHERE ts <= {end} GROUP BY user_id"
    else:
        sql = (f"SELECT user_id, ts // {DAY} AS tile, count(*), sum(f0), count(f1), sum(f1), max(ts) FROM {files} "
               f"WHERE ts <= {end} AND ts >= {end - 31 * DAY} GROUP BY ALL "
               f"UNION ALL SELECT user_id, ts // {DAY // 24} AS tile, count(*), sum(f0), count(f0), sum(f0), max(ts) "
               f"FROM {files} WHERE ts <= {end} AND ts >= {end - 8 * DAY} GROUP BY ALL")
    con = connect(data_dir)
    started = time.perf_counter()
    con.sql(sql).to_arrow_table()
    seconds = time.perf_counter() - started
    con.close()
    return seconds


async def _snapshot(client: Any, prefix: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], int]:
    """The commands that rewrite every key under `prefix` exactly, as materialize sends them (SET+PX, or one
    EVALSHA of `set_tiles.lua` per 100 keys: tiles, fresh reader-cache markers, PEXPIRE), and the same writes as
    plain commands without the markers (HSET of the tiles, PEXPIRE): what the markers cost."""
    from feature_store.materialize import SET_TILES_LUA

    sha = await client.script_load(SET_TILES_LUA)
    commands: list[tuple[Any, ...]] = []
    plain: list[tuple[Any, ...]] = []
    calls: list[tuple[bytes, tuple[Any, ...]]] = []  # (key, its set_tiles.lua arguments)
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=10_000)]
    fields = 0
    for i in range(0, len(keys), 5_000):
        pipe = client.pipeline(transaction=False)
        for key in keys[i:i + 5_000]:
            pipe.type(key)
            pipe.pttl(key)
        meta = await pipe.execute()
        pipe = client.pipeline(transaction=False)
        for j, key in enumerate(keys[i:i + 5_000]):
            (pipe.hgetall if meta[2 * j] == b"hash" else pipe.get)(key)
        values = await pipe.execute()
        for j, key in enumerate(keys[i:i + 5_000]):
            ttl = meta[2 * j + 1]
            if isinstance(values[j], dict):
                tiles = sorted((int(f), v) for f, v in values[j].items() if not f.startswith(b"~"))
                flat = [x for pair in tiles for x in pair]
                fields += len(tiles)
                calls.append((key, (len(tiles), tiles[-1][0], ttl, *flat)))
                plain.append(("HSET", key, *flat))
                plain.append(("PEXPIRE", key, ttl))
            else:
                commands.append(("SET", key, values[j], "PX", ttl) if ttl > 0 else ("SET", key, values[j]))
                plain.append(commands[-1])
    for i in range(0, len(calls), 100):  # as materialize groups them (one server here: any keys together)
        group = calls[i:i + 100]
        commands.append(("EVALSHA", sha, len(group), *[k for k, _ in group], *[a for _, args in group for a in args]))
    return commands, plain, fields


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from feature_store.materialize import materialize
    from feature_store.offline.engine import connect
    from feature_store.online import KeyLayout

    defs = definitions(args.dir)
    client = aioredis.from_url(url)
    end = BASE + 60 * DAY
    out: dict[str, Any] = {}
    kinds = [("latest", defs["latest"])] + ([] if args.skip_windowed else [("windowed", defs["windowed"])])
    for name, view in kinds:
        await client.flushdb()
        con = connect(args.dir)
        keys = KeyLayout(f"bench{name}")
        cpu, redis_cpu = _cpu_s(), await _redis_cpu_s(client)
        report = await materialize(client, keys, args.dir, [view], end - DAY, end, con=con, chunk=args.chunk)
        cpu, redis_cpu = _cpu_s() - cpu, await _redis_cpu_s(client) - redis_cpu
        con.close()
        commands, plain, fields = await _snapshot(client, keys.prefix)
        await client.flushdb()
        pipeline_s = await _raw_pipeline(client, commands, args.chunk)
        await client.flushdb()
        socket_redis_cpu = await _redis_cpu_s(client)
        socket_s = await _raw_socket(url, [_resp(*c) for c in commands], args.chunk)
        socket_redis_cpu = await _redis_cpu_s(client) - socket_redis_cpu
        if name == "windowed":
            await client.flushdb()
            plain_redis_cpu = await _redis_cpu_s(client)
            plain_s = await _raw_socket(url, [_resp(*c) for c in plain], args.chunk)
            plain_redis_cpu = await _redis_cpu_s(client) - plain_redis_cpu
        figures: dict[str, Any] = {
            "seconds": round(report.seconds, 3), "cpu_s": round(cpu, 3), "redis_cpu_s": round(redis_cpu, 3),
            "keys": report.keys, "commands": report.commands,
            "raw_socket_redis_cpu_s": round(socket_redis_cpu, 3),
            "raw_redis_py_pipeline_s": round(pipeline_s, 3), "raw_socket_resp_s": round(socket_s, 3),
            "ratio_to_redis_py_pipeline": round(report.seconds / pipeline_s, 2),
            "ratio_to_raw_socket": round(report.seconds / socket_s, 2),
        }
        duck_s = _raw_duckdb(args.dir, name, end)
        figures["raw_duckdb_group_by_s"] = round(duck_s, 3)
        figures["ratio_to_duckdb_plus_socket"] = round(report.seconds / (duck_s + socket_s), 2)
        if name == "latest":
            figures["source_rows_per_s"] = round(args.events / report.seconds)
            figures["keys_per_s"] = round(report.keys / report.seconds)
        else:
            figures["tiles"] = report.tiles
            figures["tiles_per_s"] = round(report.tiles / report.seconds)
            figures["raw_pipeline_tiles_per_s"] = round(fields / pipeline_s)
            figures["raw_socket_tiles_per_s"] = round(fields / socket_s)
            figures["raw_socket_without_markers_s"] = round(plain_s, 3)  # HSET + PEXPIRE, no set_tiles.lua
            figures["raw_socket_without_markers_redis_cpu_s"] = round(plain_redis_cpu, 3)
        out[name] = figures
    await client.flushdb()
    await client.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--rows", type=int, default=1_000_000, help="entity rows of the shared data (unused here)")
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/fs-bench"))
    parser.add_argument("--redis", default=os.environ.get("FEATURESTREAM_REDIS"))
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--skip-windowed", action="store_true")
    args = parser.parse_args()
    from feature_store.local_stack import LocalStack
    from feature_store.logging import configure_logging
    from feature_store.settings import load_settings

    configure_logging(load_settings(log_level="WARNING"))  # stdout carries only the JSON
    args.dir.mkdir(parents=True, exist_ok=True)
    generate(args.dir, args.events, args.rows, args.entities)
    load_before = os.getloadavg()[0]
    with LocalStack(redis_url=args.redis, services=("redis",)) as stack:
        results = asyncio.run(run(args, stack.redis_url))
    print(json.dumps({"bench": "materialize", "events": args.events, "entities": args.entities,
                      "cpus": os.cpu_count(), "chunk": args.chunk, "results": results,
                      "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}, indent=2))


if __name__ == "__main__":
    main()
