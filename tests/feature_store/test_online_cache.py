"""The reader's closed-tile cache against real Redis: whatever the writes, it answers what a reader without
cache answers.

Writes go through the real stream script (`apply.lua`, via `OnlineWriter`), interleaved with late and
future events, reads at an advancing clock (and some in the past), rewrites (materialization's
`set_tiles.lua`, also writing past the newest tile, and a writer keeping no markers: HDEL them, then HSET)
and key expiry (DEL). A reader without cache reads the same Redis at the same
moment; the stream script's merges themselves are checked against the oracle in tests/streams/test_writer.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_store.aggregates import SEQ_PARTITION_SHIFT, empty_stats, event_stats, merge, tile_layouts
from feature_store.definitions import FeatureView
from feature_store.durations import format_ms
from feature_store.materialize import SET_TILES_LUA
from feature_store.online import KeyLayout, OnlineReader, pack_stats, partition_for, unpack_stats
from feature_store.online.keys import NEWEST_FIELD, VERSION_FIELD
from feature_store.online.writer import NO_OFFSET, OnlineWriter, PartitionBatch
from feature_store.windows import tile_start
from tests import oracle
from tests.streams.support import events_repo

pytestmark = pytest.mark.integration

START = 1_767_225_600_000 + 7 * 60_000
MINUTE = 60_000
REPO = events_repo("cache-unused", partitions=2)
SOURCE = REPO.sources["events"]
VIEWS: list[FeatureView] = [REPO.views["spend"], REPO.views["shops"]]  # co-partitioned, and merged over partitions
USERS = ["u1", "u2", "u3"]
SHOPS = ["s1", "s2"]


class Stream:
    """Applies events like the stream worker: per partition one fenced script call with each key's tile partials."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.keys = KeyLayout(prefix)
        self.writer = OnlineWriter(redis)
        self.offsets = {p: NO_OFFSET for p in range(SOURCE.partitions)}
        self.layouts = [(view, layout) for view in VIEWS for layout in tile_layouts(view)]

    async def write(self, events: list[dict[str, Any]]) -> None:
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for event in events:
            event = {**event, "big": int((event["amount"] or 0) > 50)}  # the view's transform
            by_partition.setdefault(partition_for(event["user"], SOURCE.partitions), []).append(event)
        for partition, rows in sorted(by_partition.items()):
            first = self.offsets[partition] + 1
            batch = PartitionBatch(offset_key=self.keys.offset_key(SOURCE, partition),
                                   expected_offset=self.offsets[partition], first_offset=first,
                                   last_offset=first + len(rows) - 1, watermark=max(r["ts"] for r in rows),
                                   layouts=[layout for _, layout in self.layouts])
            for index, (view, layout) in enumerate(self.layouts):
                keep = layout.max_window_ms + layout.hop_ms + SOURCE.future_tolerance_ms
                period = max(1, keep // layout.hop_ms // 4) * layout.hop_ms
                tiles: dict[tuple[str, int], list[Any]] = {}
                for offset, row in enumerate(rows, start=first):
                    one = event_stats(layout, row, event_time=row["ts"], tie=7,
                                      seq=partition * SEQ_PARTITION_SHIFT + offset)
                    at = (row[view.entity.join_key], tile_start(row["ts"], layout.hop_ms))
                    tiles[at] = merge(layout, tiles.get(at, empty_stats(layout)), one)
                for entity in sorted({e for e, _ in tiles}):
                    key = self.keys.state_key(view, partition, entity, layout.hop_ms)
                    batch.add_tiles(key, index, 0, keep, period, False,
                                    [(s, pack_stats(v)) for (e, s), v in sorted(tiles.items()) if e == entity])
            result = await self.writer.apply(batch)
            assert result.applied
            self.offsets[partition] = result.stored_offset


async def tile_keys(redis: aioredis.Redis, prefix: str) -> list[bytes]:
    return sorted([k async for k in redis.scan_iter(match=f"{prefix}:*") if not k.endswith(b":offset")])


async def rewrite(redis: aioredis.Redis, key: bytes, how: str) -> None:
    """Tiles overwritten (here: the oldest one changed, maybe one after the newest added) as materialization
    does (`set_tiles.lua`: fresh markers), or as a writer keeping no markers did (deleted, then HSET)."""
    tiles = {f: v for f, v in (await redis.hgetall(key)).items() if not f.startswith(b"~")}
    if not tiles:
        return
    oldest, newest = min(tiles, key=int), max(tiles, key=int)
    view = next(v for v in VIEWS if f":{v.name}." in key.decode())
    layout = next(lay for lay in tile_layouts(view) if key.decode().endswith(f":h{format_ms(lay.hop_ms)}"))
    stats = unpack_stats(tiles[oldest])
    written = {oldest: pack_stats(merge(layout, stats, stats))}
    if how == "materialize_ahead":
        written[str(int(newest) + layout.hop_ms).encode()] = tiles[newest]
    if how == "unmarked":
        await redis.hdel(key, VERSION_FIELD, NEWEST_FIELD)
        await redis.hset(key, mapping=written)
        return
    fields = [x for pair in sorted(written.items(), key=lambda kv: int(kv[0])) for x in pair]
    await redis.eval(SET_TILES_LUA, 1, key, len(written), max(int(f) for f in written), 3_600_000, *fields)


async def assert_markers_cover_tiles(redis: aioredis.Redis) -> None:
    """What a cached probe relies on: a hash with `~m` has `~t` at or after every tile it holds."""
    for key in await tile_keys(redis, "c"):
        fields = await redis.hgetall(key)
        if VERSION_FIELD.encode() in fields:
            tiles = [int(f) for f in fields if not f.startswith(b"~")]
            assert int(fields[NEWEST_FIELD.encode()]) >= max(tiles, default=0), key


async def assert_same_reads(cached: OnlineReader, plain: OnlineReader, t: int) -> None:
    for view in VIEWS:
        join_key = view.entity.join_key
        rows = [{join_key: e} for e in (USERS if join_key == "user" else SHOPS)]
        features = {view: list(view.feature_names)}
        got = await cached.read(features, rows, t)
        want = await plain.read(features, rows, t)
        for row, g, w in zip(rows, got, want, strict=True):
            for ref, expected in w.items():
                value = g[ref]
                assert value.status == expected.status, (ref, row, t, value, expected)
                assert value.event_time == expected.event_time, (ref, row, t, value, expected)
                assert oracle.close(value.value, expected.value, rel=1e-9, abs_=1e-6), (ref, row, t, value, expected)


_event = st.fixed_dictionaries({
    "user": st.sampled_from(USERS),
    "shop": st.sampled_from(SHOPS),
    "amount": st.one_of(st.none(), st.integers(min_value=-5, max_value=100).map(float)),
    "label": st.one_of(st.none(), st.sampled_from(["a", "b"])),
    # mostly the current tiles; some late (older tiles, down to past the 2 h windows), some from the future
    "back": st.one_of(st.integers(0, 4 * MINUTE), st.integers(0, 3 * 60 * MINUTE), st.integers(-5 * MINUTE, 0)),
})
_step = st.one_of(
    st.tuples(st.just("write"), st.lists(_event, min_size=1, max_size=6)),
    st.tuples(st.just("read"), st.one_of(st.just(0), st.integers(0, 40 * MINUTE))),
    st.tuples(st.just("advance"), st.one_of(st.integers(0, 3 * MINUTE), st.integers(0, 90 * MINUTE),
                                            st.sampled_from([5 * MINUTE, 60 * MINUTE]))),  # exactly a tile on
    st.tuples(st.just("rewrite"), st.tuples(st.integers(0, 63), st.sampled_from(["materialize", "materialize_ahead",
                                                                                 "unmarked"]))),
    st.tuples(st.just("expire"), st.integers(0, 63)),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_step, min_size=1, max_size=25), cache_keys=st.sampled_from([8, 1_000]))
def test_cached_reads_equal_uncached_reads(redis_db_url: str, steps: list[tuple[str, Any]], cache_keys: int) -> None:
    """Also across tile boundaries, where entries roll forward (8 keys: some were evicted meanwhile)."""

    async def run() -> None:
        redis = aioredis.Redis.from_url(redis_db_url)
        try:
            await redis.flushdb()
            stream = Stream(redis, "c")
            cached = OnlineReader(redis, KeyLayout("c"), cache_keys=cache_keys)
            plain = OnlineReader(redis, KeyLayout("c"), cache_keys=0)
            clock = START
            for kind, arg in steps:
                if kind == "write":
                    await stream.write([{**{k: v for k, v in e.items() if k != "back"}, "ts": clock - e["back"]}
                                        for e in arg])
                elif kind == "read":
                    await assert_same_reads(cached, plain, clock - arg)
                elif kind == "advance":
                    clock += arg
                elif kind == "rewrite":
                    keys = await tile_keys(redis, "c")
                    if keys:
                        await rewrite(redis, keys[arg[0] % len(keys)], arg[1])
                else:
                    keys = await tile_keys(redis, "c")
                    if keys:
                        await redis.delete(keys[arg % len(keys)])
                await assert_same_reads(cached, plain, clock)  # every step ends with a read at the clock
                await assert_markers_cover_tiles(redis)
        finally:
            await redis.aclose()

    asyncio.run(run())


async def test_warm_reads_fetch_only_open_tiles(redis_client: aioredis.Redis) -> None:
    """A repeated read probes (no whole-hash read); late events and rewrites force whole reads, only once."""
    stream = Stream(redis_client, "w")
    view = REPO.views["spend"]
    reader = OnlineReader(redis_client, KeyLayout("w"))
    plain = OnlineReader(redis_client, KeyLayout("w"), cache_keys=0)
    t = START
    await stream.write([{"user": "u1", "shop": "s1", "amount": float(i), "label": "a", "ts": t - i * 7 * MINUTE}
                        for i in range(15)])
    rows = [{"user": "u1"}]
    features = {view: list(view.feature_names)}
    await reader.read(features, rows, t)
    assert (reader.cache.full, reader.cache.hits) == (2, 0)  # one hash per hop, read whole once
    for _ in range(3):
        assert await reader.read(features, rows, t) == await plain.read(features, rows, t)
    assert (reader.cache.full, reader.cache.hits, reader.cache.stale) == (2, 6, 0)

    # an event in the current tiles changes no closed tile: still probes
    await stream.write([{"user": "u1", "shop": "s1", "amount": 100.0, "label": "b", "ts": t}])
    assert await reader.read(features, rows, t) == await plain.read(features, rows, t)
    assert (reader.cache.full, reader.cache.hits, reader.cache.stale) == (2, 8, 0)

    # a late event (an older 5 min tile) bumps ~m of the 5 min hash: one stale probe, one whole read
    await stream.write([{"user": "u1", "shop": "s1", "amount": 5.0, "label": "c", "ts": t - 5 * MINUTE}])
    assert await reader.read(features, rows, t) == await plain.read(features, rows, t)
    assert (reader.cache.full, reader.cache.hits, reader.cache.stale) == (3, 9, 1)
    assert await reader.read(features, rows, t) == await plain.read(features, rows, t)
    assert (reader.cache.full, reader.cache.hits, reader.cache.stale) == (3, 11, 1)

    # materialization rewrites the 1 h hash with a new ~m: one stale probe and whole read, then probes again
    key = stream.keys.state_key(view, partition_for("u1", 2), "u1", 3_600_000)
    await rewrite(redis_client, key.encode(), "materialize")
    for _ in range(2):
        assert await reader.read(features, rows, t) == await plain.read(features, rows, t)
    assert (reader.cache.full, reader.cache.hits, reader.cache.stale) == (4, 14, 2)

    # a writer keeping no markers: read whole every time, until the stream writes the key again
    await rewrite(redis_client, key.encode(), "unmarked")
    for _ in range(2):
        assert await reader.read(features, rows, t) == await plain.read(features, rows, t)
    assert (reader.cache.full, reader.cache.stale) == (6, 3)
    await stream.write([{"user": "u1", "shop": "s1", "amount": 1.0, "label": "a", "ts": t}])
    marks = await redis_client.hmget(key, [VERSION_FIELD, NEWEST_FIELD])
    assert marks[0] is not None
    assert int(marks[1]) == tile_start(t, 3_600_000)  # ~t = the newest tile present
    for _ in range(2):
        assert await reader.read(features, rows, t) == await plain.read(features, rows, t)
    assert reader.cache.full == 7


async def test_a_tile_boundary_rolls_the_entries_forward_without_whole_reads(redis_client: aioredis.Redis) -> None:
    """Crossing into the next tile, a cached key is not read whole: its entry rolls forward one tile (the
    closed merges as they are then, the old current tile now probed too). Only a second boundary reads whole."""
    stream = Stream(redis_client, "r")
    view = REPO.views["spend"]
    reader = OnlineReader(redis_client, KeyLayout("r"))
    plain = OnlineReader(redis_client, KeyLayout("r"), cache_keys=0)
    t = tile_start(START, 5 * MINUTE) + 4 * MINUTE  # a minute before a 5 min boundary
    # events within the 5 min hash's keep (20 min), so creating the next tile prunes nothing (a prune bumps
    # ~m: that read is stale and whole, rolled or not)
    await stream.write([{"user": "u1", "shop": "s1", "amount": float(i), "label": "a", "ts": t - i * 7 * MINUTE}
                        for i in range(3)])
    rows = [{"user": "u1"}]
    features = {view: list(view.feature_names)}
    assert await reader.read(features, rows, t) == await plain.read(features, rows, t)
    assert (reader.cache.full, reader.cache.rolls) == (2, 0)  # one hash per hop, read whole once

    t += 2 * MINUTE  # into the next 5 min tile (the 1 h tile stays)
    await stream.write([{"user": "u1", "shop": "s1", "amount": 40.0, "label": "b", "ts": t}])
    assert await reader.read(features, rows, t) == await plain.read(features, rows, t)
    assert (reader.cache.full, reader.cache.rolls, reader.cache.stale) == (2, 1, 0)
    assert await reader.read(features, rows, t) == await plain.read(features, rows, t)
    assert (reader.cache.full, reader.cache.rolls, reader.cache.stale) == (2, 1, 0)

    t += 5 * MINUTE  # a second boundary: the rolled entry reads whole once
    assert await reader.read(features, rows, t) == await plain.read(features, rows, t)
    assert (reader.cache.full, reader.cache.rolls) == (3, 1)
