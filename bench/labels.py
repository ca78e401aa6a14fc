"""Label join + online learning throughput of the worker's label flows; prints one JSON object.

    .venv/bin/python bench/labels.py [--pairs 5000] [--redis redis://...]

Drives `streams.labels.LabelFlows` as its Faust agents do (one prediction-log
record, then its label, sequentially: each agent handles one event at a time),
with an online river model learning every joined pair, monitors and shadow
scoring on. Without --redis a private redis-server is started and stopped.

The flows are latency-bound: each pair costs a few sequential Redis round
trips. The limit measured in the same run is the raw sequential round trip
(PING on the same client), so `limit_pairs_per_s` = 1 / (round trips per pair
x raw round trip) and `ratio` = measured / limit. The in-process parts (river
learn, monitor observe) are timed alone too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from river import linear_model, preprocessing

from feature_store.examples.card_fraud.data import TransactionGenerator
from feature_store.local_stack import LocalStack
from feature_store.models import ModelRegistry
from feature_store.monitoring.hub import MonitorHub
from feature_store.settings import load_settings
from feature_store.training import OnlineLearner
from streams.labels import FlowConfig, JoinConfig, LabelFlows

T0 = 1_767_225_600_000


def _rows(n: int) -> list[dict[str, float]]:
    gen = TransactionGenerator(users=500, seed=3)
    rows = []
    for event, fraud in gen.events(n):
        u = int(str(event["user_id"])[1:])
        rows.append({"ratio": float(event["amount"]) / max(gen.typical_spend(u), 1.0),  # type: ignore[arg-type]
                     "foreign": 1.0 if event["currency"] != "USD" else 0.0, "label": float(fraud)})
    return rows


class _Count:
    """Counts Redis round trips: single commands and pipeline executions."""

    def __init__(self) -> None:
        self.trips = 0
        original_cmd = aioredis.Redis.execute_command
        original_pipe = Pipeline.execute

        async def cmd(client: Any, *args: Any, **kw: Any) -> Any:
            self.trips += 1
            return await original_cmd(client, *args, **kw)

        async def pipe(pipeline: Any, *args: Any, **kw: Any) -> Any:
            self.trips += 1
            return await original_pipe(pipeline, *args, **kw)

        aioredis.Redis.execute_command = cmd  # type: ignore[method-assign]
        Pipeline.execute = pipe  # type: ignore[method-assign]


async def _run(redis_url: str, pairs: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="fs-bench-labels-"))
    settings = load_settings(redis=redis_url, data_dir=tmp / "data", registry=tmp / "registry.db")
    registry = ModelRegistry.from_settings(settings)
    registry.register("fraud", preprocessing.StandardScaler() | linear_model.LogisticRegression(), flavor="river",
                      features=["ratio", "foreign"], params={"online": True})
    rows = _rows(pairs)
    records = [orjson.dumps({
        "request_id": f"r{i}", "model": "fraud", "model_version": 1, "served_at": T0 + i,
        "entity_keys": orjson.dumps({"user_id": f"u{i % 500}"}).decode(),
        "features": orjson.dumps({"ratio": r["ratio"], "foreign": r["foreign"]}).decode(),
        "prediction": 0.5, "fallback": False, "service": ""}) for i, r in enumerate(rows)]
    labels = [orjson.dumps({"request_id": f"r{i}", "event_time": T0 + i + 1, "label": r["label"]})
              for i, r in enumerate(rows)]
    counter = _Count()
    flows = LabelFlows(settings, FlowConfig(prefix="bench", snapshot_every=10**9, join=JoinConfig(wait_s=0)))
    await flows.start()
    await flows.redis.ping()
    trips_before = counter.trips
    start = time.perf_counter()
    for i in range(pairs):
        await flows.on_prediction(records[i])
        await flows.on_label(labels[i], source="_labels:0", offset=i)
    elapsed = time.perf_counter() - start
    trips = (counter.trips - trips_before) / pairs
    learner = flows.trainer.learners["fraud"]
    assert learner.labels_seen == pairs, learner.labels_seen

    probes = 2000
    start = time.perf_counter()
    for _ in range(probes):
        await flows.redis.ping()
    rtt = (time.perf_counter() - start) / probes
    await flows.stop()

    alone = OnlineLearner("m", preprocessing.StandardScaler() | linear_model.LogisticRegression())
    start = time.perf_counter()
    for r in rows:
        alone.learn({"ratio": r["ratio"], "foreign": r["foreign"]}, r["label"])
    learn_us = (time.perf_counter() - start) / pairs * 1e6
    hub = MonitorHub(tmp / "data2", bootstrap=200)
    decoded = [orjson.loads(r) for r in records]
    start = time.perf_counter()
    for record in decoded:
        hub.observe(record)
    observe_us = (time.perf_counter() - start) / pairs * 1e6

    measured = pairs / elapsed
    limit = 1.0 / (trips * rtt)
    return {
        "bench": "labels", "pairs": pairs, "pairs_per_s": round(measured, 1),
        "us_per_pair": round(elapsed / pairs * 1e6, 1), "redis_round_trips_per_pair": round(trips, 2),
        "raw_redis_round_trip_us": round(rtt * 1e6, 1), "limit_pairs_per_s": round(limit, 1),
        "ratio": round(measured / limit, 3), "river_learn_us": round(learn_us, 1),
        "monitor_observe_us": round(observe_us, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--redis", default=None, help="Redis URL (default: start a private redis-server)")
    args = parser.parse_args()
    if args.redis:
        print(json.dumps(asyncio.run(_run(args.redis, args.pairs))))
        return
    with LocalStack(services=("redis",)) as stack:
        print(json.dumps(asyncio.run(_run(stack.redis_url, args.pairs))))


if __name__ == "__main__":
    main()
