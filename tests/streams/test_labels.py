"""Label join against a real Redis: by request id and by entity + time, late, duplicate, unknown, replayed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from feature_store.online.client import open_online
from feature_store.training.live import LiveKeys, read_live
from streams.labels import JoinConfig, LabelJoiner

T0 = 1_767_225_600_000


def prediction(rid: str, *, user: str = "u1", served_at: int = T0, model: str = "fraud", version: int = 1,
               p: float = 0.9) -> dict[str, Any]:
    return {"request_id": rid, "model": model, "model_version": version, "served_at": served_at,
            "entity_keys": orjson.dumps({"user_id": user}).decode(),
            "features": orjson.dumps({"user_spend__amount_sum_1h": 12.5, "amount": 40.0}).decode(),
            "prediction": p, "fallback": False, "service": "fraud_detection"}


@pytest.fixture(params=["server", "cluster"])
async def joiner(request: pytest.FixtureRequest, redis_client: aioredis.Redis, unique: str
                 ) -> AsyncIterator[LabelJoiner]:
    """On one Redis server, and on a Redis Cluster (the label keys of one join span its nodes)."""
    config = JoinConfig(wait_s=10.0, retention_s=3600.0)
    if request.param == "server":
        yield LabelJoiner(redis_client, LiveKeys(f"t{unique}"), config)
        return
    cluster = open_online(request.getfixturevalue("redis_cluster_url"), cluster=True)
    try:
        yield LabelJoiner(cluster, LiveKeys(f"t{unique}"), config)
    finally:
        await cluster.aclose()


async def test_joins_by_request_id_with_the_served_features(joiner: LabelJoiner) -> None:
    await joiner.add_prediction(prediction("r1"), shadow={"2": 0.2})
    got = await joiner.join({"request_id": "r1", "event_time": T0 + 5000, "label": 1.0}, source="labels:0", offset=7)
    assert got.outcome == "joined"
    j = got.joined
    assert j is not None
    assert (j.model, j.model_version, j.prediction, j.label) == ("fraud", 1, 0.9, 1.0)
    assert j.features == {"user_spend__amount_sum_1h": 12.5, "amount": 40.0}  # as served, not recomputed
    assert j.shadow == {"2": 0.2}
    assert (j.source, j.offset, j.served_at) == ("labels:0", 7, T0)
    live = await read_live(joiner.redis, joiner.keys, "fraud")
    assert live["performance"]["1"]["live"]["accuracy"] == 1.0
    assert live["performance"]["2"]["shadow"]["accuracy"] == 0.0
    assert live["labels"] == {"joined": 1.0}


async def test_joins_by_entity_and_time_point_in_time(joiner: LabelJoiner) -> None:
    await joiner.add_prediction(prediction("early", served_at=T0, p=0.1))
    await joiner.add_prediction(prediction("later", served_at=T0 + 60_000, p=0.7))
    await joiner.add_prediction(prediction("other-model", served_at=T0 + 30_000, model="churn"))
    got = await joiner.join({"entity_key": "u1", "event_time": T0 + 45_000, "label": 0.0, "model": "fraud"},
                            source="labels:1", offset=0)
    assert got.joined is not None
    assert got.joined.request_id == "early"  # newest of this model served at or before the label's time
    any_model = await joiner.join({"entity_key": "u1", "event_time": T0 + 45_000, "label": 1.0},
                                  source="labels:1", offset=1)
    assert any_model.joined is not None
    assert any_model.joined.request_id == "other-model"


async def test_duplicate_labels_are_dropped_but_a_replay_joins_again(joiner: LabelJoiner) -> None:
    await joiner.add_prediction(prediction("r1"))
    first = await joiner.join({"request_id": "r1", "event_time": T0, "label": 1.0}, source="labels:0", offset=3)
    dup = await joiner.join({"request_id": "r1", "event_time": T0 + 1, "label": 0.0}, source="labels:0", offset=4)
    replay = await joiner.join({"request_id": "r1", "event_time": T0, "label": 1.0}, source="labels:0", offset=3)
    assert [first.outcome, dup.outcome, replay.outcome] == ["joined", "duplicate", "replay"]
    assert "labels:0:3" in dup.reason
    assert replay.joined is not None
    assert replay.joined.replay
    stats = await joiner.stats()
    assert (stats["fraud:joined"], stats["fraud:duplicate"], stats["fraud:replay"]) == (1, 1, 1)
    live = await read_live(joiner.redis, joiner.keys, "fraud")
    assert live["performance"]["1"]["live"]["labels"] == 1.0  # scored once


async def test_label_before_its_prediction_waits_then_joins(joiner: LabelJoiner) -> None:
    waiting = await joiner.join({"request_id": "r9", "event_time": T0, "label": 1.0}, source="labels:2", offset=0,
                                now_ms=T0)
    assert waiting.outcome == "pending"
    assert await joiner.sweep(now_ms=T0 + 1000) == []  # still nothing to join, still within the wait
    await joiner.add_prediction(prediction("r9"))
    results = await joiner.sweep(now_ms=T0 + 2000)
    assert [r.outcome for r in results] == ["joined"]
    assert results[0].joined is not None
    assert results[0].joined.offset is None  # joined after waiting
    assert await joiner.sweep(now_ms=T0 + 3000) == []
    assert (await joiner.stats())["*:pending"] == 0


async def test_unknown_and_too_late_labels_become_orphans(joiner: LabelJoiner) -> None:
    unknown = await joiner.join({"request_id": "nope", "event_time": T0, "label": 1.0}, source="labels:0",
                                offset=1, now_ms=T0)
    no_entity = await joiner.join({"entity_key": "ghost", "event_time": T0, "label": 0.0}, source="labels:0",
                                  offset=2, now_ms=T0)
    assert (unknown.outcome, no_entity.outcome) == ("pending", "pending")
    results = await joiner.sweep(now_ms=T0 + 11_000)  # past wait_s
    assert sorted(r.outcome for r in results) == ["orphan", "orphan"]
    orphans = await joiner.orphans()
    assert {o["label"].get("request_id") for o in orphans} == {"nope", None}
    assert any("older than the retention" in o["reason"] for o in orphans)
    assert (await joiner.stats())["*:orphan"] == 2


async def test_late_label_after_retention_is_an_orphan(redis_client: aioredis.Redis, unique: str) -> None:
    short = LabelJoiner(redis_client, LiveKeys(f"t{unique}"), JoinConfig(wait_s=0.0, retention_s=0.05))
    await short.add_prediction(prediction("old"))
    import asyncio

    await asyncio.sleep(0.15)  # the prediction expires from the bounded store
    late = await short.join({"request_id": "old", "event_time": T0 + 86_400_000, "label": 1.0},
                            source="labels:0", offset=9)
    assert late.outcome == "pending"
    assert [r.outcome for r in await short.sweep()] == ["orphan"]


async def test_invalid_label_is_counted_not_raised(joiner: LabelJoiner) -> None:
    got = await joiner.join({"event_time": T0, "label": 1.0}, source="labels:0", offset=5)  # no key at all
    assert got.outcome == "invalid"
    assert "request_id" in got.reason
    assert (await joiner.stats())["*:invalid"] == 1
