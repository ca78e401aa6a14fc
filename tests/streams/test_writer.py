"""The fenced Lua apply against real Redis: merges equal the one aggregation definition, fences hold."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_store.aggregates import covering_layout, event_stats, merge, stat_sql, tile_layouts
from feature_store.definitions import Aggregation, Entity, FeatureView, StreamSource
from feature_store.durations import to_ms
from feature_store.online import KeyLayout, OnlineReader
from feature_store.online.client import OnlineClient, open_online
from feature_store.online.codec import pack_stats, unpack_stats
from feature_store.online.keys import hash_tag
from feature_store.online.writer import NO_OFFSET, OnlineWriter, PartitionBatch
from feature_store.repo import FeatureRepo
from feature_store.transforms import transformed_sql
from feature_store.windows import tile_start_sql
from schemas import EventSchema, Field
from streams.batch import APPLIED, Classified, applied_table
from streams.views import SourcePlan, TransformFailed, batch_connection
from tests import oracle
from tests.fixtures.redis_cluster import move_slot
from tests.streams.support import events_repo

START = 1_767_225_600_000
PRE_1970 = -400 * 86_400_000 - 7 * 60_000  # 1968-11-26T23:53Z: tiles of 5 min and 1 h cross it
REPO = events_repo("writer-unused", partitions=1)
SOURCE = REPO.sources["events"]

_event = st.fixed_dictionaries({
    "user": st.sampled_from(["u1", "u2"]),
    "shop": st.sampled_from(["s1", "s2"]),
    "amount": st.one_of(st.none(), st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
                        st.integers(min_value=-5, max_value=5).map(float)),
    "label": st.one_of(st.none(), st.sampled_from(["a", "b", "c"])),
    "ts": st.integers(min_value=START, max_value=START + 20 * 60_000),  # dense: batches share tiles
})


def _classified(events: list[dict[str, Any]], first_offset: int, source: StreamSource = SOURCE) -> Classified:
    n = len(events)
    normalized = [source.schema.validate({"id": f"e{first_offset + i}", **e}) for i, e in enumerate(events)]
    return Classified(offsets=list(range(first_offset, first_offset + n)), events=normalized,  # type: ignore[arg-type]
                      event_times=[e["ts"] for e in normalized], status=[APPLIED] * n, reasons=[None] * n,
                      watermark=max(e["ts"] for e in normalized))


async def _apply_batches(redis: OnlineClient, repo: FeatureRepo, prefix: str,
                         batches: list[list[dict[str, Any]]], tie: int = 7, offset: int = NO_OFFSET) -> list[bool]:
    """Apply each batch in turn (offsets continue from `offset`, the one stored): whether each was applied."""
    plan = SourcePlan(SOURCE, repo.views_of(SOURCE), KeyLayout(prefix))
    writer = OnlineWriter(redis)
    con = duckdb.connect()
    results = []
    for events in batches:
        c = _classified(events, offset + 1)
        batch = PartitionBatch(offset_key=KeyLayout(prefix).offset_key(SOURCE, 0), expected_offset=offset,
                               first_offset=offset + 1, last_offset=offset + len(events), watermark=c.watermark,
                               layouts=plan.layouts)
        plan.writes(con, applied_table(SOURCE, c, list(range(len(events))), 0, tie), 0, batch, 1_000)
        result = await writer.apply(batch)
        results.append(result.applied)
        offset = result.stored_offset
    return results


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(_event, min_size=1, max_size=40), cuts=st.lists(st.integers(0, 40), max_size=4),
       reads=st.lists(st.integers(0, 3 * 3_600_000), min_size=1, max_size=3),
       shift=st.sampled_from([0, PRE_1970 - START]))
def test_merged_tiles_equal_the_oracle(redis_db_url: str, events: list[dict[str, Any]], cuts: list[int],
                                       reads: list[int], shift: int) -> None:
    """Any split of the events into batches gives the values the oracle computes over all of them (also for
    events before 1970, whose tiles floor to a multiple of the hop like every other's)."""
    events = [{**e, "ts": e["ts"] + shift} for e in events]
    bounds = sorted({0, len(events), *(c for c in cuts if c < len(events))})
    batches = [events[a:b] for a, b in itertools.pairwise(bounds) if b > a]

    async def check() -> None:
        redis = aioredis.Redis.from_url(redis_db_url)
        try:
            await redis.flushdb()
            assert all(await _apply_batches(redis, REPO, "w", batches))
            logged = [oracle.log_event(e["user"], e["ts"], {**e, "big": int((e["amount"] or 0) > 50)},
                                       ingest_time=7, partition=0, offset=i) for i, e in enumerate(events)]
            newest = max(e["ts"] for e in events)
            reader = OnlineReader(redis, KeyLayout("w"))
            for view in REPO.views.values():
                key = view.entity.join_key
                view_events = [oracle.Event(entity=e.values[key], event_time=e.event_time, values=e.values,
                                            ingest_time=7, tie=7, seq=e.seq) for e in logged]
                entities = sorted({e.entity for e in view_events})
                for gap in reads:
                    t = newest + gap
                    got = await reader.read({view: view.feature_names}, [{key: x} for x in entities], t)
                    for entity, values in zip(entities, got, strict=True):
                        # the store holds every applied event whenever it was ingested (tie 7: 1970)
                        want = oracle.feature_values(view, view_events, entity, t, ignore_ingest_time=True)
                        for name, expected in want.items():
                            value = values[f"{view.name}:{name}"].value
                            assert oracle.close(value, expected, rel=1e-9, abs_=1e-6), (view.name, entity, t, name,
                                                                                        value, expected)
        finally:
            await redis.aclose()

    asyncio.run(check())


async def test_a_batch_applies_once_and_a_stale_writer_is_fenced(redis_client: aioredis.Redis) -> None:
    events = [{"user": "u1", "shop": "s1", "amount": 3.0, "label": "a", "ts": START + i} for i in range(5)]
    assert await _apply_batches(redis_client, REPO, "f", [events[:3], events[3:]]) == [True, True]
    before = {k: await redis_client.dump(k) for k in sorted([k async for k in redis_client.scan_iter("f:*")])}

    plan = SourcePlan(SOURCE, REPO.views_of(SOURCE), KeyLayout("f"))
    writer = OnlineWriter(redis_client)
    offset_key = KeyLayout("f").offset_key(SOURCE, 0)
    for expected, first in ((NO_OFFSET, 0), (2, 3), (4, 4), (10, 11)):  # replay, zombie, overlap, a gap ahead
        c = _classified(events[:2], first)
        batch = PartitionBatch(offset_key=offset_key, expected_offset=expected, first_offset=first,
                               last_offset=first + 1, watermark=c.watermark, layouts=plan.layouts)
        plan.writes(duckdb.connect(), applied_table(SOURCE, c, [0, 1], 0, 9), 0, batch, 1_000)
        result = await writer.apply(batch)
        assert not result.applied
        assert result.stored_offset == 4
    after = {k: await redis_client.dump(k) for k in sorted([k async for k in redis_client.scan_iter("f:*")])}
    assert after == before
    assert await redis_client.hgetall(offset_key) == {b"offset": b"4", b"watermark": str(START + 4).encode()}


async def test_the_script_is_loaded_again_when_redis_forgot_it(redis_client: aioredis.Redis) -> None:
    """A Redis restart or SCRIPT FLUSH drops the cached script: the next apply loads it and succeeds."""
    events = [{"user": "u1", "shop": "s1", "amount": 2.0, "label": "a", "ts": START + i} for i in range(4)]
    assert await _apply_batches(redis_client, REPO, "s", [events[:2]]) == [True]
    await redis_client.script_flush()
    sha = OnlineWriter(redis_client)._sha
    assert await redis_client.script_exists(sha) == [False]
    plan = SourcePlan(SOURCE, REPO.views_of(SOURCE), KeyLayout("s"))
    c = _classified(events[2:], 2)
    batch = PartitionBatch(offset_key=KeyLayout("s").offset_key(SOURCE, 0), expected_offset=1, first_offset=2,
                           last_offset=3, watermark=c.watermark, layouts=plan.layouts)
    plan.writes(duckdb.connect(), applied_table(SOURCE, c, [0, 1], 0, 9), 0, batch, 1_000)
    before = await _server_ms(redis_client)
    result = await OnlineWriter(redis_client).apply(batch)
    assert (result.applied, result.stored_offset) == (True, 3)
    assert before <= result.written_ms <= await _server_ms(redis_client)  # when Redis applied it: freshness
    assert await redis_client.script_exists(sha) == [True]


async def _server_ms(redis_client: aioredis.Redis) -> int:
    seconds, micros = await redis_client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_keys_get_ttls_and_old_tiles_are_dropped(redis_client: aioredis.Redis) -> None:
    hour = 3_600_000
    events = [{"user": "u1", "shop": "s1", "amount": 1.0, "label": "a", "ts": START + k * hour} for k in range(8)]
    assert all(await _apply_batches(redis_client, REPO, "x", [[e] for e in events]))
    keys = [k async for k in redis_client.scan_iter("x:*") if not k.endswith(b":offset")]
    assert keys
    for key in keys:
        assert await redis_client.pttl(key) > 0, key
        if await redis_client.type(key) == b"hash":  # pruned to about (max window + hop + future tolerance)
            view = REPO.views[key.decode().split(":")[4].split(".")[0]]  # x:v1:{events:0}:<view>.<fp>:...
            hop = to_ms(key.decode().rsplit(":h", 1)[1])
            keep = max(a.window_ms for a in view.aggregations if a.hop_ms == hop) + hop + SOURCE.future_tolerance_ms
            fields = sorted(int(f) for f in await redis_client.hkeys(key) if not f.startswith(b"~"))  # markers
            assert fields[-1] == START + 7 * hour
            assert fields[0] >= fields[-1] - 2 * keep, (key, fields)


def test_a_row_without_the_views_entity_is_not_transformed() -> None:
    """On the worker's connection, as on the batch path's, a view's entity filter runs before its transform:
    a row whose transform fails but that has no entity for the view fails nothing (the event is applied to
    the other views); a row with the entity fails the batch (the worker then dead-letters that event)."""
    schema = EventSchema(name="orders", version=1, fields={
        "id": Field("string"), "buyer": Field("string", required=False, nullable=True), "code": Field("string"),
        "ts": Field("timestamp")})
    source = StreamSource(name="orders", schema=schema, event_time="ts", key="id", topic="orders-unused")
    view = FeatureView(name="codes", entity=Entity(name="buyer", join_key="buyer"), source=source,
                       transform={"n": "CAST(code AS INTEGER)"},
                       aggregations=[Aggregation(column="n", function="sum", window="1h", name="n_sum_1h")])
    plan = SourcePlan(source, [view], KeyLayout("e"))

    def writes(events: list[dict[str, Any]]) -> PartitionBatch:
        c = _classified([{"ts": START, **e} for e in events], 0, source)
        batch = PartitionBatch(offset_key="o", expected_offset=0, first_offset=0, last_offset=0, watermark=0,
                               layouts=plan.layouts)
        plan.writes(batch_connection(), applied_table(source, c, list(range(len(events))), 0, 1), 0, batch, 1_000)
        return batch

    batch = writes([{"buyer": "b1", "code": "3"}, {"buyer": None, "code": "not a number"}])
    ((key, item),) = zip(batch.keys, batch.items, strict=True)
    (layout,) = plan.layouts
    assert key == KeyLayout("e").state_key(view, 0, "b1", layout.hop_ms)
    assert unpack_stats(item[7])[layout.index("n", "s")] == 3
    with pytest.raises(TransformFailed, match="not a number"):
        writes([{"buyer": "b2", "code": "not a number"}])


class _Unprepared(SourcePlan):
    """The plan running each query's SQL text as it is (what writes_many did before preparing them)."""

    def _statements(self, con: duckdb.DuckDBPyConnection) -> list[str]:
        return [query.sql for query in self._queries]


@settings(max_examples=40, deadline=None)
@given(fetches=st.lists(st.lists(st.tuples(st.integers(0, 2), _event), min_size=1, max_size=30), min_size=1,
                        max_size=4))
def test_prepared_writes_equal_the_plain_queries(fetches: list[list[tuple[int, dict[str, Any]]]]) -> None:
    """Fetch after fetch on the worker's connection (`batch_connection`: most optimizer passes off), the
    prepared queries read the batch registered now: the same items, in the same order, as each query's SQL
    run on a fresh connection with DuckDB's full optimizer."""
    repo = events_repo("writer-unused", partitions=3)
    source = repo.sources["events"]
    assert isinstance(source, StreamSource)
    keys = KeyLayout("p")
    plan, reference = SourcePlan(source, repo.views_of(source), keys), _Unprepared(source, repo.views_of(source), keys)
    con = batch_connection()
    for n, fetch in enumerate(fetches):
        tables: list[pa.Table] = []
        got: dict[int, PartitionBatch] = {}
        want: dict[int, PartitionBatch] = {}
        for partition in sorted({p for p, _ in fetch}):
            c = _classified([e for p, e in fetch if p == partition], 100 * n)
            tables.append(applied_table(source, c, list(range(len(c.offsets))), partition, n))
            for out in (got, want):
                out[partition] = PartitionBatch(offset_key="o", expected_offset=0, first_offset=0, last_offset=0,
                                                watermark=0, layouts=plan.layouts)
        table = pa.concat_tables(tables)
        plan.writes_many(con, table, got, 1_000 * n)
        reference.writes_many(duckdb.connect(), table, want, 1_000 * n)
        assert {p: (b.keys, b.items) for p, b in got.items()} == {p: (b.keys, b.items) for p, b in want.items()}


@settings(max_examples=60, deadline=None)
@given(fetch=st.lists(st.tuples(st.integers(0, 2), _event), min_size=1, max_size=40),
       shift=st.sampled_from([0, PRE_1970 - START]))
def test_tiles_merged_from_the_covering_query_equal_each_layouts_own_query(
        fetch: list[tuple[int, dict[str, Any]]], shift: int) -> None:
    """A view with 5 min and 1 h tiles runs one query at 5 min with every stat (`covering_layout`), one with
    10 and 15 min tiles at 5 min (their gcd); the tiles of each layout merged from its rows equal that layout's
    own `stat_sql` over the batch (the batch path's query): the same keys and tiles, ints exact, floats within
    rounding (merges add in another order)."""
    base = events_repo("writer-unused", partitions=3)
    source = base.sources["events"]
    assert isinstance(source, StreamSource)
    odd = FeatureView(name="odd", entity=base.views["spend"].entity, source=source, aggregations=[
        Aggregation(column="amount", function="sum", window="20m", hop="10m", name="sum_20m"),
        Aggregation(column="amount", function="max", window="45m", hop="15m", name="max_45m"),
        Aggregation(column="label", function="last", window="45m", hop="15m", name="last_45m")])
    repo = FeatureRepo.from_definitions([*base.views.values(), odd])
    assert covering_layout(tile_layouts(odd)).hop_ms == 5 * 60_000  # tiles of neither layout's hop
    keys = KeyLayout("c")
    plan = SourcePlan(source, repo.views_of(source), keys)
    assert len({layout.view for layout in plan.layouts}) < len(plan.layouts)  # some view has several layouts
    fetch = [(p, {**e, "ts": e["ts"] + shift}) for p, e in fetch]
    batches: dict[int, PartitionBatch] = {}
    tables: list[pa.Table] = []
    for partition in sorted({p for p, _ in fetch}):
        c = _classified([e for p, e in fetch if p == partition], 0)
        tables.append(applied_table(source, c, list(range(len(c.offsets))), partition, 1))
        batches[partition] = PartitionBatch(offset_key="o", expected_offset=0, first_offset=0, last_offset=0,
                                            watermark=0, layouts=plan.layouts)
    table = pa.concat_tables(tables)
    con = duckdb.connect()
    plan.writes_many(con, table, batches, 0)
    got = {}
    for batch in batches.values():
        for key, item in zip(batch.keys, batch.items, strict=True):
            if item[0] == 1:  # tiles: [1, layout + 1, pexpire, keep, refresh, period, start, packed, ...]
                fields = item[6:]
                for start, packed in zip(fields[::2], fields[1::2], strict=True):
                    got[(key, int(start))] = unpack_stats(packed)
    want = {}
    con.register("__batch", table)
    for layout in plan.layouts:
        view = repo.views[layout.view]
        entity = f'"{view.entity.join_key}"'
        rows = con.execute(f"SELECT __partition, {entity}, {tile_start_sql('__event_time', layout.hop_ms)}, "
                           f"{', '.join(stat_sql(layout))} FROM ({transformed_sql('__batch', view.transform)}) "
                           f"WHERE {entity} IS NOT NULL GROUP BY 1, 2, 3").fetchall()
        for partition, key_value, start, *stats in rows:
            want[(keys.state_key(view, partition, key_value, layout.hop_ms), start)] = unpack_stats(pack_stats(stats))
    assert got.keys() == want.keys()
    amounts = [abs(e["amount"]) for _, e in fetch if e["amount"] is not None]
    scale = len(fetch) * max([1.0, *amounts]) ** 2  # sums and squared deviations round at this magnitude
    for tile, stats in want.items():
        assert all(oracle.close(a, b, abs_=1e-12 * scale) for a, b in zip(got[tile], stats, strict=True)), \
            (tile, got[tile], stats)


async def test_an_item_of_thousands_of_tiles_with_a_repeated_tile_merges_every_one(
        redis_client: aioredis.Redis) -> None:
    """A backlog batch can carry thousands of tiles of one entity; a tile named twice merges both parts."""
    layout = SourcePlan(SOURCE, REPO.views_of(SOURCE), KeyLayout("big")).layouts[0]
    hop = layout.hop_ms
    key = "big:v1:{events:0}:spend.h:u1"
    offset_key = KeyLayout("big").offset_key(SOURCE, 0)

    def stats(i: int, amount: float) -> list[Any]:
        return event_stats(layout, {"amount": amount, "label": "a", "big": 0}, event_time=START + i * hop,
                           tie=1, seq=i)

    writer = OnlineWriter(redis_client)
    first = PartitionBatch(offset_key=offset_key, expected_offset=NO_OFFSET, first_offset=0, last_offset=0,
                           watermark=START, layouts=[layout])
    first.add_tiles(key, 0, 0, 10**12, 0, False,
                    [(START + i * hop, pack_stats(stats(i, 1.0))) for i in range(0, 4_500, 2)])
    assert (await writer.apply(first)).applied
    tiles = [(START + i * hop, pack_stats(stats(i, 2.0))) for i in range(4_500)]
    tiles.append((START, pack_stats(stats(0, 5.0))))  # tile 0 again
    second = PartitionBatch(offset_key=offset_key, expected_offset=0, first_offset=1, last_offset=1,
                            watermark=START, layouts=[layout])
    second.add_tiles(key, 0, 0, 10**12, 0, False, tiles)
    assert (await writer.apply(second)).applied
    stored = await redis_client.hgetall(key)
    for i in range(4_500):
        want = stats(i, 2.0)
        if i % 2 == 0:
            want = merge(layout, stats(i, 1.0), want)
        if i == 0:
            want = merge(layout, want, stats(0, 5.0))
        assert unpack_stats(stored[str(START + i * hop).encode()]) == want, i
    assert int(stored[b"~t"]) == START + 4_499 * hop


async def test_reads_and_batches_follow_a_resharded_slot(redis_cluster_url: str, unique: str) -> None:
    """The partition's slot moves to another node after the client read the slot map: the next read and the
    next batch hear MOVED, refresh the map, and land on the new owner with the state intact."""
    prefix = f"mv{unique}"
    events = [{"user": "u1", "shop": "s1", "amount": float(i), "label": "a", "ts": START + i * 1_000} for i in range(6)]
    cluster = open_online(redis_cluster_url, cluster=True)
    reader = OnlineReader(cluster, KeyLayout(prefix))
    view = REPO.views["spend"]
    try:
        assert await _apply_batches(cluster, REPO, prefix, [events[:3]]) == [True]
        before = await reader.read({view: ["n_10m"]}, [{"user": "u1"}], START + 10_000)
        assert before[0]["spend:n_10m"].value == 3
        owner = cluster.get_node_from_key(hash_tag(SOURCE.name, 0)).name
        move_slot(redis_cluster_url, hash_tag(SOURCE.name, 0))
        moved = await reader.read({view: ["n_10m"]}, [{"user": "u1"}], START + 10_000)  # a stale slot map
        assert moved[0]["spend:n_10m"].value == 3
        assert await _apply_batches(cluster, REPO, prefix, [events[3:]], offset=2) == [True]
        after = await reader.read({view: ["n_10m", "sum_10m"]}, [{"user": "u1"}], START + 10_000)
        assert after[0]["spend:n_10m"].value == 6
        assert after[0]["spend:sum_10m"].value == sum(e["amount"] for e in events)
        assert cluster.get_node_from_key(hash_tag(SOURCE.name, 0)).name != owner
    finally:
        await cluster.aclose()
