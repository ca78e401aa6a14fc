"""Point-in-time training sets at scale, next to a raw DuckDB ASOF JOIN on the same data; prints one JSON object.

    .venv/bin/python bench/training_set.py [--events 10000000] [--rows 1000000] [--entities 100000]
                                           [--dir /tmp/fs-bench] [--skip-windowed]

Data (generated once per size into --dir with DuckDB, reused on later runs):
a BatchSource of `--events` rows over `--entities` users and 60 days, event
times on whole hours so an entity's rows often share one (created-time ties),
created time = event time + 0..6 h; 8 feature columns. Entity rows: `--rows`
(user, time) pairs over 70 days, some users without events.

Measured, each in a fresh process (wall time, CPU time - the machine is
shared, so CPU ratios are the steadier figure - rows/s, peak RSS), writing
zstd Parquet:
- limit: `rows ASOF LEFT JOIN events ON user AND t >= event_time` - no tie
  order, no ingest-time rule, no ttl, no row order;
- latest (as served): the training set of the 8-feature latest view with ttl;
- latest (event time only): the same with ignore_ingest_time;
- windowed: a view with 3 aggregations over 1 d / 7 d / 30 d windows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HOUR = 3_600_000
DAY = 24 * HOUR
BASE = 1_767_225_600_000  # 2026-01-01
FEATURES = ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7"]


def definitions(data_dir: Path) -> dict[str, Any]:
    """The bench's source and views (built lazily so --help stays fast)."""
    from feature_store.definitions import Aggregation, BatchSource, Entity, FeatureView
    from schemas import EventSchema, Field

    schema = EventSchema(name="bench_events", version=1, fields={
        "user_id": Field("string"), "ts": Field("timestamp"), "created": Field("timestamp"),
        "f0": Field("float"), "f1": Field("float"), "f2": Field("int"), "f3": Field("int"),
        "f4": Field("string"), "f5": Field("string", nullable=True), "f6": Field("float", nullable=True),
        "f7": Field("int"),
    })
    user = Entity(name="user", join_key="user_id")
    source = BatchSource(name="bench_events", schema=schema, path="sources/bench_events/*.parquet", event_time="ts",
                         created_time="created", key="user_id", partitions=4)
    latest = FeatureView(name="profile", entity=user, source=source, fields=FEATURES, ttl="14d")
    windowed = FeatureView(name="activity", entity=user, source=source, aggregations=[
        Aggregation(column="*", function="count", window="1d", name="events_1d"),
        Aggregation(column="f0", function="sum", window="7d", name="f0_sum_7d"),
        Aggregation(column="f1", function="mean", window="30d", name="f1_mean_30d"),
    ])
    return {"source": source, "latest": latest, "windowed": windowed}


def generate(data_dir: Path, events: int, rows: int, entities: int) -> None:
    import duckdb

    marker = data_dir / f".generated-v2-{events}-{rows}-{entities}"
    if marker.exists():
        return
    out = data_dir / "sources" / "bench_events"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.parquet"):
        old.unlink()
    con = duckdb.connect()
    files = 10
    per = events // files
    for k in range(files):
        con.execute(f"""
            COPY (SELECT user_id, ts, (ts + CASE WHEN h2 % 4 = 0 THEN 0 ELSE h2 % {6 * HOUR} END)::BIGINT AS created,
                         (h1 % 100000) / 100.0 AS f0, (h2 % 7919) / 7.0 AS f1, (h1 % 1000)::BIGINT AS f2,
                         i AS f3, 'cat' || (h2 % 50) AS f4, CASE WHEN h1 % 10 = 0 THEN NULL ELSE 'x' || (h1 % 7) END
                         AS f5, CASE WHEN h2 % 9 = 0 THEN NULL ELSE (h1 % 997) * 1.5 END AS f6, (h2 % 3)::BIGINT AS f7
                  FROM (SELECT i, hash(i) AS h1, hash(i * 31 + 7) AS h2,
                               'u' || (hash(i * 17 + 3) % {entities}) AS user_id,
                               ({BASE} + (hash(i * 13 + 5) % 1440) * {HOUR})::BIGINT AS ts
                        FROM range({k * per}, {(k + 1) * per}) t(i)))
            TO '{out}/part-{k}.parquet' (FORMAT parquet, COMPRESSION zstd)""")
    con.execute(f"""
        COPY (SELECT 'u' || (hash(i * 7 + 11) % {int(entities * 1.2)}) AS user_id,
                     ({BASE} + (hash(i * 3 + 1) % {70 * DAY}))::BIGINT AS event_timestamp,
                     (hash(i) % 2)::INTEGER AS label
              FROM range({rows}) t(i))
        TO '{data_dir}/entity_rows.parquet' (FORMAT parquet, COMPRESSION zstd)""")
    marker.touch()


def phase(name: str, data_dir: Path) -> dict[str, Any]:
    """Run one measurement in this process and return its figures."""
    from feature_store.offline.engine import connect
    from feature_store.offline.training import TrainingSetQuery, training_set

    defs = definitions(data_dir)
    rows_path = data_dir / "entity_rows.parquet"
    out = data_dir / f"out-{name}.parquet"
    con = connect(data_dir)
    started = time.perf_counter()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    if name == "limit":
        events = f"read_parquet('{data_dir}/sources/bench_events/*.parquet')"
        cols = ", ".join(f"e.{f}" for f in FEATURES)
        con.execute(f"COPY (SELECT r.*, {cols} FROM read_parquet('{rows_path}') r ASOF LEFT JOIN {events} e "
                    f"ON r.user_id = e.user_id AND r.event_timestamp >= e.ts) TO '{out}' "
                    f"(FORMAT parquet, COMPRESSION zstd)")
    else:
        view = defs["windowed" if name == "windowed" else "latest"]
        query = TrainingSetQuery(features={view: list(view.feature_names)},
                                 ignore_ingest_time=name == "latest_event_time")
        training_set(con, data_dir, rows_path, query, out=out)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    written = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchall()[0]
    return {"seconds": round(seconds, 3), "cpu_s": round(cpu_s, 3), "rows": written[0] if written else 0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/fs-bench"))
    parser.add_argument("--skip-windowed", action="store_true")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.dir)))
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    generate(args.dir, args.events, args.rows, args.entities)
    generated = time.perf_counter() - started
    names = ["limit", "latest", "latest_event_time"] + ([] if args.skip_windowed else ["windowed"])
    results: dict[str, Any] = {}
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--phase", name, "--dir", str(args.dir)],
                              capture_output=True, text=True, check=False, env=os.environ.copy())
        if proc.returncode:
            results[name] = {"error": proc.stderr.strip().splitlines()[-1:]}
            continue
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        figures["rows_per_s"] = round(figures["rows"] / figures["seconds"]) if figures["seconds"] else None
        results[name] = figures
    limit, limit_cpu = results["limit"].get("seconds"), results["limit"].get("cpu_s")
    for name in names[1:]:
        if limit and "seconds" in results[name]:
            results[name]["ratio_to_limit"] = round(results[name]["seconds"] / limit, 3)
            results[name]["cpu_ratio_to_limit"] = round(results[name]["cpu_s"] / limit_cpu, 3)
    print(json.dumps({"bench": "training_set", "events": args.events, "entity_rows": args.rows,
                      "entities": args.entities, "cpus": os.cpu_count(), "generate_s": round(generated, 1),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
