"""Materialization into the real Redis: what `OnlineReader` answers at `end` equals the offline value at `end`.

Also: running it twice leaves identical Redis content under the test's
prefix: the same keys, types and bytes (DUMP for strings; for hashes the
sorted field/value pairs, because DUMP of a hashtable-encoded hash - values
over 64 bytes - follows the table's internal order, which a rewrite may
shuffle without changing content).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_store.definitions import Entity, FeatureView
from feature_store.errors import OnlineStoreUnavailable
from feature_store.materialize import SET_TILES_LUA, materialize
from feature_store.offline.engine import connect
from feature_store.offline.training import TrainingSetQuery, training_set
from feature_store.online import KeyLayout, OnlineReader, partition_for
from feature_store.online.client import OnlineClient, open_online
from feature_store.online.keys import hash_tag
from tests.feature_store.offline_cases import (
    LogBuilder,
    batch_source,
    entity_rows,
    latest_view,
    stream_source,
    values,
    windowed_view,
    write_batch,
)
from tests.fixtures.redis_cluster import move_slot
from tests.oracle import Event, close, feature_values, write_log

pytestmark = pytest.mark.integration

ENTITIES = [f"e{i}" for i in range(12)]


@pytest.fixture
def redis(redis_client: aioredis.Redis) -> aioredis.Redis:
    """This test's own Redis DB (flushed at start); keys still carry the test's prefix."""
    return redis_client


def _random_log(data_dir: Path, seed: int, n: int = 400) -> list[Event]:
    """Events of 12 entities over 3 partitions (by key, as producers send them), with ingest delays, ties,
    nulls, late and invalid rows."""
    rng = random.Random(seed)
    log = LogBuilder()
    for _ in range(n):
        entity = rng.choice(ENTITIES)
        ts = rng.randrange(0, 1_000)
        status = rng.choice(["applied"] * 8 + ["late", "invalid"])
        log.add(entity, None if status == "invalid" else ts, ingest=ts + rng.randrange(-20, 60),
                partition=partition_for(entity, 3), status=status,
                x=rng.choice([None, round(rng.uniform(-100, 100), 2)]), n=rng.choice([None, rng.randrange(-9, 9)]),
                s=rng.choice([None, "p", "q", "r"]))
    write_log(data_dir, stream_source(), log.events, batch=37)
    return log.events


def _views() -> list[FeatureView]:
    source = stream_source()
    by_s = Entity(name="tag", join_key="s")  # not the message key: state per partition, merged on read
    return [
        windowed_view(source, [(50, 200), (25, 25), (100, 300)]),
        latest_view(source, ttl=150),
        latest_view(source, ttl=None, name="lat_forever"),
        FeatureView(name="by_tag", entity=by_s, source=source, aggregations=windowed_view(source, [(50, 100)])
                    .aggregations),
        FeatureView(name="tag_latest", entity=by_s, source=source, fields=["x", "k"], ttl=400),
    ]


async def _online(redis: OnlineClient, keys: KeyLayout, view: FeatureView, entities: list[Any],
                  t: int) -> list[dict[str, Any]]:
    reader = OnlineReader(redis, keys)
    got = await reader.read({view: list(view.feature_names)}, [{view.entity.join_key: e} for e in entities], t)
    return [{f: row[f"{view.name}:{f}"].value for f in view.feature_names} for row in got]


def _offline(data_dir: Path, view: FeatureView, entities: list[Any], t: int, ignore: bool) -> list[dict[str, Any]]:
    con = connect(data_dir, threads=1)
    try:
        rows = entity_rows([(e, t) for e in entities]).rename_columns([view.entity.join_key, "event_timestamp",
                                                                       "label"])
        query = TrainingSetQuery(features={view: list(view.feature_names)}, ignore_ingest_time=ignore)
        out = training_set(con, data_dir, rows, query).to_pylist()
    finally:
        con.close()
    return [{f: r[f"{view.name}__{f}"] for f in view.feature_names} for r in out]


def _unversioned(dump: dict[bytes, Any]) -> dict[bytes, Any]:
    """A `_dump` without the tile hashes' `~m` versions (a clock: each write gives a new one)."""
    return {k: [f for f in v if f[0] != b"~m"] if isinstance(v, list) else v for k, v in dump.items()}


async def _dump(redis: aioredis.Redis, prefix: str) -> dict[bytes, Any]:
    """Every key under `prefix` with its exact content."""
    out: dict[bytes, Any] = {}
    for key in sorted([k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]):
        kind = await redis.type(key)
        out[key] = sorted((await redis.hgetall(key)).items()) if kind == b"hash" else (kind, await redis.dump(key))
    return out


def _assert_same(view: FeatureView, entities: list[Any], online: list[dict[str, Any]],
                 offline: list[dict[str, Any]], t: int) -> None:
    for entity, got, want in zip(entities, online, offline, strict=True):
        for feature in view.feature_names:
            assert close(got[feature], want[feature]), (view.name, feature, entity, t, got, want)


async def test_online_after_materialize_equals_offline_and_oracle(tmp_path: Path, redis: aioredis.Redis,
                                                                  unique: str) -> None:
    await _online_equals_offline_and_oracle(tmp_path, redis, unique)


async def test_materialize_into_a_redis_cluster(tmp_path: Path, redis_cluster_url: str, unique: str) -> None:
    """Each key goes to the node of its partition's hash tag (one connection per node); reads find them."""
    cluster = open_online(redis_cluster_url, cluster=True)
    try:
        await _online_equals_offline_and_oracle(tmp_path, cluster, unique)
        assert len({cluster.get_node_from_key(hash_tag("ev", p)).name for p in range(3)}) > 1, \
            "the partitions' keys should span nodes"
    finally:
        await cluster.aclose()


async def test_materialize_follows_a_slot_moved_since_the_client_read_the_map(tmp_path: Path, redis_cluster_url: str,
                                                                             unique: str) -> None:
    """A partition's slot moves to another node after the client read the slot map: the writes hear MOVED,
    read the map again and land on the new owner; the values read back are still right."""
    cluster = open_online(redis_cluster_url, cluster=True)
    try:
        await cluster.initialize()
        move_slot(redis_cluster_url, hash_tag("ev", 1))
        await _online_equals_offline_and_oracle(tmp_path, cluster, unique)
    finally:
        await cluster.aclose()


async def _online_equals_offline_and_oracle(tmp_path: Path, redis: OnlineClient, unique: str) -> None:
    events = _random_log(tmp_path, seed=1)
    keys = KeyLayout(prefix=unique)
    start, end = 600, 777
    views = _views()
    report = await materialize(redis, keys, tmp_path, views, start, end)
    assert report.keys > 0
    assert report.tiles > 0
    for view in views:
        entity_col = view.entity.join_key
        entities: list[Any] = [*ENTITIES, "nobody"] if entity_col == "k" else ["p", "q", "r", "nobody"]
        online = await _online(redis, keys, view, entities, end)
        offline = _offline(tmp_path, view, entities, end, ignore=False)
        _assert_same(view, entities, online, offline, end)
        view_events = [Event(**{**e.__dict__, "entity": e.values.get(entity_col)}) for e in events]
        oracle = [feature_values(view, view_events, e, end) for e in entities]
        _assert_same(view, entities, online, oracle, end)


async def test_materialize_twice_changes_nothing(tmp_path: Path, redis: aioredis.Redis, unique: str) -> None:
    _random_log(tmp_path, seed=2)
    keys = KeyLayout(prefix=unique)
    await materialize(redis, keys, tmp_path, _views(), 100, 900)
    first = await _dump(redis, unique)
    assert first
    await materialize(redis, keys, tmp_path, _views(), 100, 900, chunk=7)
    again = await _dump(redis, unique)
    assert _unversioned(again) == _unversioned(first)
    versions = [(dict(first[k])[b"~m"], dict(again[k])[b"~m"]) for k, v in first.items() if isinstance(v, list)]
    assert versions
    assert all(int(new) > int(old) for old, new in versions)  # each rewrite tells cached readers to read again
    ttls = [await redis.pttl(k) for k in first]
    assert all(t > 0 for t in ttls if t != -1)
    assert any(k.endswith(b":latest") for k in first)


async def test_batch_source_partitions_by_entity(tmp_path: Path, redis: aioredis.Redis, unique: str) -> None:
    """Batch rows land in partition_for(entity, partitions); reads find them; ignore_ingest_time is honoured."""
    source = batch_source(partitions=3)
    rng = random.Random(3)
    rows = [values(rng.choice(ENTITIES), ts := rng.randrange(0, 500), round(rng.uniform(0, 10), 2),
                   rng.randrange(5), rng.choice("pqr"), ct=ts + rng.choice([0, 0, 5, 80])) for _ in range(300)]
    write_batch(tmp_path, source, rows)
    keys = KeyLayout(prefix=unique)
    views = [windowed_view(source, [(20, 100)], name="bw"), latest_view(source, ttl=100, name="bl")]
    for ignore in (False, True):
        await redis.delete(*[k async for k in redis.scan_iter(match=f"{unique}:*")] or ["-"])
        await materialize(redis, keys, tmp_path, views, 300, 420, ignore_ingest_time=ignore)
        for view in views:
            online = await _online(redis, keys, view, ENTITIES, 420)
            _assert_same(view, ENTITIES, online, _offline(tmp_path, view, ENTITIES, 420, ignore), 420)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), start=st.integers(0, 900), span=st.integers(0, 300))
async def test_consistency_at_random_ends(tmp_path_factory: pytest.TempPathFactory, redis: aioredis.Redis,
                                          unique: str, seed: int, start: int, span: int) -> None:
    data_dir = tmp_path_factory.mktemp("mat")
    _random_log(data_dir, seed=seed, n=150)
    keys = KeyLayout(prefix=f"{unique}{seed}x{start}x{span}")
    end = start + span
    views = _views()[:2]
    await materialize(redis, keys, data_dir, views, start, end)
    for view in views:
        online = await _online(redis, keys, view, ENTITIES, end)
        _assert_same(view, ENTITIES, online, _offline(data_dir, view, ENTITIES, end, ignore=False), end)


async def test_materialize_gives_tile_hashes_fresh_reader_cache_markers(tmp_path: Path, redis: aioredis.Redis,
                                                                       unique: str) -> None:
    """Every tile hash written carries the markers readers cache by (`~m` new, `~t` its newest tile), so a
    materialized store serves from the reader's cache at once; a stream-written newer tile keeps `~t`, and a
    hash left without markers is scanned for its newest tile."""
    _random_log(tmp_path, seed=4)
    keys = KeyLayout(prefix=unique)
    await materialize(redis, keys, tmp_path, _views(), 100, 900)
    first = await _dump(redis, unique)
    tile_keys = [k for k, v in first.items() if isinstance(v, list)]
    assert tile_keys
    for key in tile_keys:
        fields = dict(first[key])
        assert int(fields[b"~t"]) == max(int(f) for f in fields if not f.startswith(b"~"))

    # the stream wrote a newer tile since (its script moved ~t), or a writer left no markers and a newer tile
    ahead: dict[bytes, int] = {}
    for i, key in enumerate(tile_keys):
        fields = dict(first[key])
        newest = max(int(f) for f in fields if not f.startswith(b"~"))
        ahead[key] = newest + 1_000_000
        await redis.hset(key, str(ahead[key]), fields[str(newest).encode()])
        if i % 2:
            await redis.hset(key, mapping={"~m": 3, "~t": ahead[key]})
        else:
            await redis.hdel(key, "~m", "~t")
    await materialize(redis, keys, tmp_path, _views(), 100, 900)
    for key in tile_keys:
        version, newest = await redis.hmget(key, ["~m", "~t"])
        assert int(newest) == ahead[key], key
        assert version is not None
        assert int(version) > int(dict(first[key])[b"~m"]), key

    # so a reader's second read of the materialized keys only probes their open tiles
    view = _views()[0]
    assert view.is_windowed
    reader = OnlineReader(redis, keys)
    rows = [{view.entity.join_key: e} for e in ENTITIES]
    first_read = await reader.read({view: list(view.feature_names)}, rows, 900)
    whole = reader.cache.full
    assert whole > 0
    assert await reader.read({view: list(view.feature_names)}, rows, 900) == first_read
    assert (reader.cache.full, reader.cache.hits) == (whole, whole)


async def test_set_tiles_writes_hashes_of_any_size(redis: aioredis.Redis, unique: str) -> None:
    """Keys of one call get their own tiles, however many (more than one Lua `unpack` takes: a 30 d window of
    5 min tiles is 8,640), TTL and markers."""
    sizes = {f"{unique}:big": 1_201, f"{unique}:one": 1, f"{unique}:few": 7}
    tiles = {key: {str(1_000 * i).encode(): b"%s-%d" % (key.encode(), i) for i in range(n)} for key, n in sizes.items()}
    args: list[Any] = []
    for key, n in sizes.items():
        args += [n, 1_000 * (n - 1), 60_000 * n, *[x for pair in tiles[key].items() for x in pair]]
    assert await redis.eval(SET_TILES_LUA, len(sizes), *sizes, *args) == len(sizes)
    for key, n in sizes.items():
        stored = await redis.hgetall(key)
        assert {f: v for f, v in stored.items() if not f.startswith(b"~")} == tiles[key]
        assert int(stored[b"~t"]) == 1_000 * (n - 1)
        assert 60_000 * (n - 1) < await redis.pttl(key) <= 60_000 * n


async def test_a_refused_write_fails_the_run(tmp_path: Path, redis: aioredis.Redis, unique: str) -> None:
    """An error reply anywhere in the pipelined stream (here WRONGTYPE on a tile key) fails with a clear error."""
    _random_log(tmp_path, seed=6)
    keys = KeyLayout(prefix=unique)
    await materialize(redis, keys, tmp_path, _views(), 100, 900)
    tile_keys = sorted(k for k in await _dump(redis, unique) if not k.endswith(b":latest"))
    await redis.delete(tile_keys[len(tile_keys) // 2])
    await redis.set(tile_keys[len(tile_keys) // 2], "not a hash")
    with pytest.raises(OnlineStoreUnavailable, match=r"refused a write.*WRONGTYPE"):
        await materialize(redis, keys, tmp_path, _views(), 100, 900, chunk=5)
