"""Read feature vectors: many entities and views in one pipelined round trip.

Windowed features are finalized at read time from the tiles (the contract's
read-time semantics, `feature_store.windows`); latest values are checked
against the view's ttl at the read time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from feature_store.aggregates import NO_ORDER, TileLayout, empty_stats, finalize, merge, tile_layouts
from feature_store.definitions import Aggregation, FeatureView
from feature_store.errors import OnlineStoreUnavailable
from feature_store.online.codec import unpack_latest, unpack_stats
from feature_store.online.keys import KeyLayout
from feature_store.windows import tile_start

__all__ = ["FeatureValue", "OnlineReader", "Status"]

Status = Literal["present", "default", "missing"]


@dataclass(frozen=True, slots=True)
class FeatureValue:
    """One served value: `present` (events behind it), `default` (a window with no events:
    count 0, others None) or `missing` (no live latest value). `event_time` is the newest
    event behind the value, epoch ms."""

    value: Any
    status: Status
    event_time: int | None = None


@dataclass
class _Plan:
    """Where one (row, view) reads its state inside the pipeline's replies."""

    row: int
    view: FeatureView
    features: Sequence[str]
    start: int
    tiles: list[tuple[TileLayout, int]]  # for windowed: layout and the start of the newest (current) tile
    partitions: int


class OnlineReader:
    """Reads online features for entity rows at a time `t_ms` (epoch ms)."""

    def __init__(self, redis: aioredis.Redis, keys: KeyLayout) -> None:
        self._redis = redis
        self._keys = keys
        self._layouts: dict[int, tuple[FeatureView, list[TileLayout]]] = {}  # id(view) -> (view, layouts)

    def _tile_layouts(self, view: FeatureView) -> list[TileLayout]:
        """`tile_layouts(view)`, built once per view object (the view is kept, so its id stays unique)."""
        entry = self._layouts.get(id(view))
        if entry is None or entry[0] is not view:
            entry = self._layouts[id(view)] = (view, tile_layouts(view))
        return entry[1]

    async def read(
        self,
        features: Mapping[FeatureView, Sequence[str]],
        rows: Sequence[Mapping[str, Any]],
        t_ms: int,
    ) -> list[dict[str, FeatureValue]]:
        """Values of `features` (view -> feature names) for each entity row, keyed 'view:feature'.

        A row maps join keys to entity keys; a view whose join key is absent
        from the row yields `missing` values.
        """
        pipe = self._redis.pipeline(transaction=False)
        plans: list[_Plan] = []
        count = 0
        for row_index, row in enumerate(rows):
            for view, names in features.items():
                entity = row.get(view.entity.join_key)
                plan = _Plan(row_index, view, names, count, [], 0)
                plans.append(plan)
                if entity is None:
                    continue
                partitions = self._keys.partitions_to_read(view, entity)
                plan.partitions = len(partitions)
                if view.is_windowed:
                    for layout in self._tile_layouts(view):
                        newest = tile_start(t_ms, layout.hop_ms)
                        plan.tiles.append((layout, newest))
                        for p in partitions:
                            # the whole hash: writers prune tiles older than the longest window, and
                            # one key argument packs far cheaper than one per tile (HMGET)
                            pipe.hgetall(self._keys.state_key(view, p, entity, layout.hop_ms))
                            count += 1
                else:
                    for p in partitions:
                        pipe.get(self._keys.state_key(view, p, entity, None))
                        count += 1
        try:
            replies = await pipe.execute() if count else []
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise OnlineStoreUnavailable(f"Redis is unreachable ({type(exc).__name__}); retry shortly") from None
        out: list[dict[str, FeatureValue]] = [{} for _ in rows]
        for plan in plans:
            values = out[plan.row]
            if plan.partitions == 0:
                for name in plan.features:
                    values[f"{plan.view.name}:{name}"] = FeatureValue(None, "missing")
            elif plan.view.is_windowed:
                self._finish_windowed(plan, replies, values)
            else:
                self._finish_latest(plan, replies, values, t_ms)
        return out

    @staticmethod
    def _finish_windowed(plan: _Plan, replies: list[Any], values: dict[str, FeatureValue]) -> None:
        wanted = set(plan.features)
        position = plan.start
        for layout, newest_start in plan.tiles:
            per_partition = replies[position:position + plan.partitions]
            position += plan.partitions
            newest_index, by_depth = _depths(layout)
            needed = {d: [a for a in aggs if a.name in wanted] for d, aggs in by_depth.items()}
            needed = {d: aggs for d, aggs in needed.items() if aggs}
            if not needed:
                continue
            hop = layout.hop_ms
            deepest = max(needed)
            # tiles by depth (1 = the current tile), each depth in partition order
            tiles: dict[int, list[bytes]] = {}
            for reply in per_partition:
                for field, packed in reply.items():
                    back = newest_start - int(field)
                    if back >= 0 and back % hop == 0 and back // hop < deepest:
                        tiles.setdefault(back // hop + 1, []).append(packed)
            cum = empty_stats(layout)
            present_depths = sorted(tiles)
            next_tile = 0
            for depth in sorted(needed):
                while next_tile < len(present_depths) and present_depths[next_tile] <= depth:
                    for packed in tiles[present_depths[next_tile]]:
                        cum = merge(layout, cum, unpack_stats(packed))
                    next_tile += 1
                newest = cum[newest_index]
                present = newest > NO_ORDER
                for agg in needed[depth]:
                    values[f"{plan.view.name}:{agg.name}"] = FeatureValue(
                        finalize(layout, agg, cum), "present" if present else "default",
                        int(newest) if present else None)

    @staticmethod
    def _finish_latest(plan: _Plan, replies: list[Any], values: dict[str, FeatureValue], t_ms: int) -> None:
        best: tuple[tuple[int, int, int], list[Any]] | None = None
        for packed in replies[plan.start:plan.start + plan.partitions]:
            if packed is not None:
                candidate = unpack_latest(packed)
                if best is None or candidate[0] > best[0]:
                    best = candidate
        ttl = plan.view.ttl_ms
        live = best is not None and (ttl is None or best[0][0] > t_ms - ttl)
        fields = list(plan.view.fields)
        for name in plan.features:
            ref = f"{plan.view.name}:{name}"
            if live and best is not None:
                values[ref] = FeatureValue(best[1][fields.index(name)], "present", int(best[0][0]))
            else:
                values[ref] = FeatureValue(None, "missing")


def _depths(layout: TileLayout) -> tuple[int, dict[int, list[Aggregation]]]:
    """(position of the newest event time, aggregations by window depth in tiles), cached on the layout."""
    cached = layout.__dict__.get("_reader_depths")
    if cached is None:
        by_depth: dict[int, list[Aggregation]] = {}
        for agg in layout.aggregations:
            by_depth.setdefault(agg.window_ms // layout.hop_ms, []).append(agg)
        cached = (layout.index("*", "et"), by_depth)
        object.__setattr__(layout, "_reader_depths", cached)  # derived from the frozen fields
    return cached  # type: ignore[no-any-return]

