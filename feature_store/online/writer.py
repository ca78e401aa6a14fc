"""Fenced, merging writes of one partition's micro-batch: the stream worker's only Redis write.

`OnlineWriter.apply` runs `apply.lua` once per partition batch: it merges
every tile (by `TileLayout.ops`, the same rules as `aggregates.merge`),
replaces latest values when the new order (event_time, tie, seq) is larger,
refreshes TTLs, and stores the batch's last offset and the partition
watermark - all atomically, and only if the stored offset is the one the
writer expects (compare-and-set) and below the batch's first offset. A batch
that was already applied, or a zombie worker's batch, is refused ('fenced'),
which gives exactly-once effect without Kafka transactions.

The offset key is a HASH: `offset` (last applied offset) and `watermark`
(max event time seen in the partition, epoch ms).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import msgpack  # type: ignore[import-untyped]  # no stubs; packb only
from redis.exceptions import ResponseError

from feature_store.aggregates import NO_ORDER, TileLayout
from feature_store.errors import OnlineStoreUnavailable
from feature_store.online.client import UNREACHABLE, OnlineClient
from feature_store.online.resp import execute

__all__ = ["NO_OFFSET", "ApplyResult", "OnlineWriter", "PartitionBatch", "Position"]

NO_OFFSET = -1
"""Stored offset of a partition nothing was applied from yet."""

APPLY_LUA = resources.files("feature_store.online").joinpath("apply.lua").read_text()


@dataclass(frozen=True, slots=True)
class Position:
    """What the online store has applied from one partition."""

    offset: int  # NO_OFFSET when nothing yet
    watermark: int  # NO_ORDER when no event yet


@dataclass(slots=True)
class PartitionBatch:
    """Everything one script call writes for one partition.

    Writes are appended as the script's items (no object per key: a batch
    can touch tens of thousands of keys).
    """

    offset_key: str
    expected_offset: int  # the stored offset this batch continues from
    first_offset: int
    last_offset: int
    watermark: int
    layouts: Sequence[TileLayout]
    keys: list[str] = field(default_factory=list)
    items: list[list[Any]] = field(default_factory=list)

    def add_tiles(self, key: str, layout: int, pexpire_ms: int, keep_ms: int, period_ms: int, refresh: bool,
                  tiles: Sequence[tuple[int, bytes]]) -> None:
        """Partial stats of tiles of one entity and hop, merged into the stored ones.

        `layout` indexes `layouts`; `pexpire_ms` 0 means no expiry; creating a tile
        whose start is a multiple of `period_ms` drops the tiles older than it minus
        `keep_ms`; `refresh` pushes the TTL forward (always done when a tile is created).
        """
        fields: list[Any] = []
        for start, packed in tiles:
            fields.append(str(start))
            fields.append(packed)
        self.add_tile_fields(key, layout, pexpire_ms, keep_ms, period_ms, refresh, fields)

    def add_tile_fields(self, key: str, layout: int, pexpire_ms: int, keep_ms: int, period_ms: int, refresh: bool,
                        fields: list[Any]) -> None:
        """`add_tiles` with the tiles already flat: [str(start), packed, str(start), packed, ...] (hot path)."""
        self.keys.append(key)
        self.items.append([1, layout + 1, pexpire_ms, keep_ms, int(refresh), period_ms, *fields])

    def add_latest(self, key: str, pexpire_ms: int, refresh: bool, event_time: int, tie: int, seq: int,
                   packed: bytes) -> None:
        """The newest row of one entity (packed with `pack_latest`); kept only if newer than the stored one."""
        self.keys.append(key)
        self.items.append([2, 0, pexpire_ms, int(refresh), event_time, tie, seq, packed])

    def clear(self) -> None:
        self.keys.clear()
        self.items.clear()


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied: bool
    stored_offset: int  # after the call: the batch's last offset, or what refused it
    written_ms: int = 0  # Redis's clock when the batch became readable (epoch ms; 0 when refused): freshness


def _check_ops(layout: TileLayout) -> list[str]:
    ops = layout.ops
    for i, op in enumerate(ops):  # the script relies on lt, lk, lq, lv being adjacent
        if op == "last" and ops[i + 1:i + 4] != ["lastpart"] * 3:
            raise AssertionError(f"layout {layout.view}/h{layout.hop_ms}: 'last' stats are not adjacent")
    return ops


class OnlineWriter:
    """Applies partition batches with one EVALSHA each; reads stored positions."""

    def __init__(self, redis: OnlineClient) -> None:
        self._redis = redis
        self._sha = hashlib.sha1(APPLY_LUA.encode()).hexdigest()

    async def apply(self, batch: PartitionBatch) -> ApplyResult:
        """Apply `batch` unless the stored offset is not `batch.expected_offset` (then 'fenced')."""
        keys = [batch.offset_key, *batch.keys]
        ops = msgpack.packb([_check_ops(layout) for layout in batch.layouts], use_bin_type=False)
        args = [batch.expected_offset, batch.first_offset, batch.last_offset, batch.watermark, ops,
                msgpack.packb(batch.items, use_bin_type=False)]  # cmsgpack reads no bin type: bytes go as raw
        try:
            status, stored, *written = await self._evalsha(keys, args)
        except UNREACHABLE as exc:
            raise OnlineStoreUnavailable(f"Redis is unreachable ({type(exc).__name__}); the batch is retried") from None
        return ApplyResult(applied=status in (b"applied", "applied"), stored_offset=int(stored),
                           written_ms=int(written[0]) if written else 0)

    async def _evalsha(self, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA packed by hiredis (redis-py's encoding cost ~4 us per key), loading the script first when
        Redis does not know it (a restart or a flush; on a cluster, into every primary)."""
        command = ("EVALSHA", self._sha, len(keys), *keys, *args)
        try:
            (reply,) = await execute(self._redis, [command])
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            await self._redis.script_load(APPLY_LUA)
            (reply,) = await execute(self._redis, [command])
        return reply

    async def positions(self, offset_keys: Sequence[str]) -> list[Position]:
        """Stored (offset, watermark) for each offset key, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for key in offset_keys:
            pipe.hmget(key, ["offset", "watermark"])
        try:
            replies = await pipe.execute()
        except UNREACHABLE as exc:
            raise OnlineStoreUnavailable(f"Redis is unreachable ({type(exc).__name__}); retry shortly") from None
        return [Position(offset=NO_OFFSET if off is None else int(off),
                         watermark=NO_ORDER if wm is None else int(float(wm))) for off, wm in replies]
