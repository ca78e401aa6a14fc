"""Serving fixtures: a small repo, the app on the real Redis (own key prefix), and state writers.

Online state is written the way the stream worker writes it: `KeyLayout`
keys and `codec` values, tiles built with `aggregates.merge` from single
events (the same merge the reader uses).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from starlette.testclient import TestClient

from feature_store.aggregates import empty_stats, event_stats, merge, tile_layouts
from feature_store.definitions import (
    Aggregation,
    BatchSource,
    Entity,
    FeatureService,
    FeatureView,
    StalenessPolicy,
    StreamSource,
)
from feature_store.online import KeyLayout, pack_latest, pack_stats, partition_for
from feature_store.repo import FeatureRepo
from feature_store.settings import Settings
from feature_store.windows import tile_start
from schemas import EventSchema, Field
from serving import ServingConfig, create_app

ADMIN = "admin-secret-1"
WRITER = "writer-secret-2"

user = Entity(name="user", join_key="user_id")
clicks_v1 = EventSchema(name="clicks", version=1, fields={
    "user_id": Field("string"), "amount": Field("float"), "country": Field("string"), "ts": Field("timestamp")})
clicks = StreamSource(name="clicks", schema=clicks_v1, event_time="ts", key="user_id", partitions=2)
profiles = BatchSource(name="profiles", schema=EventSchema(name="profiles", version=1, fields={
    "user_id": Field("string"), "age": Field("int"), "ts": Field("timestamp")}), path="p/*.parquet",
    event_time="ts", key="user_id")
spend = FeatureView(name="spend", entity=user, source=clicks, aggregations=[
    Aggregation(column="*", function="count", window="1h", name="count_1h"),
    Aggregation(column="amount", function="sum", window="1h", name="amount_sum_1h"),
    Aggregation(column="amount", function="mean", window="1h", name="amount_mean_1h"),
])
last = FeatureView(name="last", entity=user, source=clicks, fields=["amount", "country"], ttl="1d")
profile = FeatureView(name="profile", entity=user, source=profiles, fields=["age"])
svc = FeatureService(
    name="svc",
    features=[spend, "last:amount", "last:country", "profile:age"],
    staleness={"last:amount": StalenessPolicy(max_age="10m", action="serve"),
               "last:country": StalenessPolicy(max_age="10m", action="default")},
    request_fields={"amount": "float", "channel": "string"},
    derived={"ratio": "amount / coalesce(spend__amount_mean_1h, amount)"},
)
strict = FeatureService(name="strict", features=["last:amount"],
                        staleness={"*": StalenessPolicy(max_age="10m", action="reject")})


@pytest.fixture(scope="session")
def repo() -> FeatureRepo:
    return FeatureRepo.from_definitions([spend, last, profile, svc, strict])


@pytest.fixture
def serving_settings(settings: Settings, redis_url: str, tmp_path: Path) -> Settings:
    """The test's settings with keys configured and no Kafka (the prediction log buffers)."""
    return settings.model_copy(update={
        "redis": redis_url, "kafka": None, "data_dir": tmp_path / "data", "registry": tmp_path / "registry.db",
        "api_keys": {}, "admin_keys": {}})


@pytest.fixture
def config(unique: str) -> ServingConfig:
    return ServingConfig(key_prefix=f"t{unique}", max_entities=50)


@pytest.fixture
def app(serving_settings: Settings, repo: FeatureRepo, config: ServingConfig) -> FastAPI:
    return create_app(serving_settings, repo, config=config)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def store(redis_url: str, config: ServingConfig) -> Iterator[OnlineWriter]:
    r = redis.Redis.from_url(redis_url)
    writer = OnlineWriter(r, KeyLayout(config.key_prefix or "fs"))
    yield writer
    for key in r.scan_iter(match=f"{config.key_prefix}:*", count=1000):
        r.delete(key)
    r.close()




class OnlineWriter:
    """Writes online state for tests exactly as the layout prescribes."""

    def __init__(self, r: redis.Redis | redis.RedisCluster, keys: KeyLayout) -> None:
        self.r = r
        self.keys = keys
        self.seq = 0

    def events(self, view: FeatureView, entity: str, rows: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """Apply (event_time, row) events of one entity to a windowed view's tiles."""
        partition = partition_for(entity, view.source.partitions)
        for layout in tile_layouts(view):
            tiles: dict[int, list[Any]] = {}
            for t, row in rows:
                self.seq += 1
                start = tile_start(t, layout.hop_ms)
                one = event_stats(layout, row, event_time=t, tie=t, seq=self.seq)
                tiles[start] = merge(layout, tiles.get(start, empty_stats(layout)), one)
            key = self.keys.state_key(view, partition, entity, layout.hop_ms)
            self.r.hset(key, mapping={str(s): pack_stats(v) for s, v in tiles.items()})

    def latest(self, view: FeatureView, entity: str, t: int, values: Sequence[Any]) -> None:
        self.seq += 1
        partition = partition_for(entity, view.source.partitions)
        self.r.set(self.keys.state_key(view, partition, entity, None), pack_latest(t, t, self.seq, values))
