"""apply.lua reads and writes a tile hash in slices: a batch far beyond one slice equals small batches."""

from __future__ import annotations

from typing import Any

import duckdb
import redis.asyncio as aioredis

from feature_store.online import KeyLayout, OnlineReader
from feature_store.online.writer import NO_OFFSET, OnlineWriter, PartitionBatch
from streams.batch import APPLIED, Classified, applied_table
from streams.views import SourcePlan
from tests.streams.support import events_repo

REPO = events_repo("slices-unused", partitions=1)
SOURCE = REPO.sources["events"]
START = 1_767_225_600_000


async def _apply(redis: aioredis.Redis, prefix: str, events: list[dict[str, Any]], size: int) -> None:
    keys = KeyLayout(prefix)
    plan = SourcePlan(SOURCE, REPO.views_of(SOURCE), keys)
    writer = OnlineWriter(redis)
    con = duckdb.connect()
    offset = NO_OFFSET
    for first in range(0, len(events), size):
        chunk = [SOURCE.schema.validate(e) for e in events[first:first + size]]
        n = len(chunk)
        c = Classified(offsets=list(range(offset + 1, offset + 1 + n)), events=chunk,  # type: ignore[arg-type]
                       event_times=[e["ts"] for e in chunk], status=[APPLIED] * n, reasons=[None] * n,
                       watermark=max(e["ts"] for e in chunk))
        batch = PartitionBatch(offset_key=keys.offset_key(SOURCE, 0), expected_offset=offset,
                               first_offset=offset + 1, last_offset=offset + n, watermark=c.watermark,
                               layouts=plan.layouts)
        plan.writes(con, applied_table(SOURCE, c, list(range(n)), 0, 7), 0, batch, 1_000)
        assert (await writer.apply(batch)).applied
        offset += n


async def test_one_huge_tile_item_equals_many_small_ones(redis_client: aioredis.Redis) -> None:
    # one user, one event per 5-minute tile (and a second one in every tenth), out of order at the end:
    # the 5m hash of one batch gets ~2500 tiles, more than two slices of the script
    minutes = 5 * 60_000
    events = [{"id": f"e{i}", "user": "u1", "shop": f"s{i % 3}", "amount": float(i % 17), "label": "a",
               "ts": START + i * minutes + (i % 7)} for i in range(2500)]
    events += [{**events[i], "id": f"x{i}", "ts": events[i]["ts"] + 1} for i in range(0, 2500, 10)]
    await _apply(redis_client, "big", events, len(events))
    await _apply(redis_client, "small", events, 50)
    # pruning may keep different unreachable tiles; every read from the newest event on agrees
    t = max(e["ts"] for e in events)
    for view in REPO.views.values():
        key = view.entity.join_key
        entities = [{key: x} for x in sorted({e[key] for e in events})]
        for at in (t, t + 3_600_000):
            big = await OnlineReader(redis_client, KeyLayout("big")).read({view: view.feature_names}, entities, at)
            small = await OnlineReader(redis_client, KeyLayout("small")).read({view: view.feature_names}, entities, at)
            assert [{k: v.value for k, v in row.items()} for row in big] == \
                [{k: v.value for k, v in row.items()} for row in small], (view.name, at)
    for key in [k async for k in redis_client.scan_iter("big:*") if not k.endswith(b":offset")]:
        if await redis_client.type(key) == b"hash":
            fields = await redis_client.hkeys(key)
            assert b"~m" in fields, key
            assert b"~t" in fields, key
