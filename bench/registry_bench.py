"""Registry costs, next to the raw SQLite round trip measured in the same run; prints one JSON object.

    .venv/bin/python bench/registry_bench.py [--rounds 200]

What a long-running process pays: `generation()` (the poll that notices an
apply), `current()` when nothing changed (cached) and after an apply
(rebuilt: every view re-validates, transforms bind in DuckDB), `as_of(t)`
(always rebuilt), and a whole `apply` of a breaking change. The limit is one
bare read transaction (BEGIN, SELECT, COMMIT) on an open connection to the
same WAL file; a fresh connect + SELECT is reported beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from feature_store.examples.card_fraud import features
from feature_store.logging import configure_logging
from feature_store.registry import Registry
from feature_store.repo import FeatureRepo, load_repo
from feature_store.settings import load_settings


def _timed(fn: Callable[[], object], rounds: int) -> dict[str, float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return {"p50_us": round(statistics.median(samples), 1), "p99_us": round(samples[int(len(samples) * 0.99) - 1], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    rounds = parser.parse_args().rounds
    configure_logging(load_settings(log_level="WARNING"))  # stdout carries only the JSON
    repo = load_repo(Path(features.__file__))
    view = repo.views["user_spend"]
    variants = []
    for i in range(rounds // 10 + 1):
        aggs = [dataclasses.replace(a, window=a.hop_ms * (i + 2)) if a.name == "txn_count_5m" else a
                for a in view.aggregations]
        items = [*repo.entities.values(), *repo.sources.values(), *repo.services.values(),
                 *(v for v in repo.views.values() if v.name != view.name), dataclasses.replace(view, aggregations=aggs)]
        variants.append(FeatureRepo.from_definitions(items))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "registry.db"
        registry = Registry(path)
        registry.apply(repo, applied_by="bench")

        held = sqlite3.connect(path, isolation_level=None)

        def raw() -> None:  # the floor: one read transaction on an open connection
            held.execute("BEGIN")
            held.execute("SELECT COALESCE(MAX(id), 0) FROM applies").fetchone()
            held.execute("COMMIT")

        def connect() -> None:  # what a fresh connection per call would add
            con = sqlite3.connect(path)
            con.execute("SELECT COALESCE(MAX(id), 0) FROM applies").fetchone()
            con.close()

        limit = _timed(raw, rounds)
        fresh_connection = _timed(connect, rounds)
        generation = _timed(registry.generation, rounds)
        cached = _timed(registry.current, rounds)
        fresh = _timed(lambda: Registry(path).current(), rounds // 10 + 1)  # new instance: empty cache
        as_of = _timed(lambda: registry.as_of(time.time_ns() // 1_000_000), rounds // 10 + 1)
        it = iter(variants)
        apply = _timed(lambda: registry.apply(next(it), applied_by="bench"), len(variants))
        held.close()
        registry.close()
    result = {
        "bench": "registry",
        "rounds": rounds,
        "definitions": 9,
        "limit_raw_sqlite_read_txn": limit,
        "raw_sqlite_connect_and_select": fresh_connection,
        "generation": generation,
        "current_cached": cached,
        "current_rebuilt": fresh,
        "as_of": as_of,
        "apply_breaking_change": apply,
        "ratio_generation_to_limit_p50": round(generation["p50_us"] / limit["p50_us"], 2),
        "ratio_current_cached_to_limit_p50": round(cached["p50_us"] / limit["p50_us"], 2),
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
