"""Read feature vectors: many entities and views in one pipelined round trip.

Windowed features are finalized at read time from the tiles (the contract's
read-time semantics, `feature_store.windows`); latest values are checked
against the view's ttl at the read time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from feature_store.aggregates import NO_ORDER, merge, tile_layouts
from feature_store.definitions import FeatureView
from feature_store.errors import OnlineStoreUnavailable
from feature_store.online.client import UNREACHABLE, OnlineClient
from feature_store.online.codec import unpack_latest
from feature_store.online.keys import KeyLayout
from feature_store.online.resp import execute
from feature_store.online.tile_cache import Entry, Merged, Shape, TileCache, from_full, from_probe, shape_of
from feature_store.windows import tile_start

__all__ = ["FeatureValue", "OnlineReader", "Status"]

Status = Literal["present", "default", "missing"]


class FeatureValue(NamedTuple):
    """One served value: `present` (events behind it), `default` (a window with no events:
    count 0, others None) or `missing` (no live latest value). `event_time` is the newest
    event behind the value, epoch ms. (A named tuple: a read builds one per value, and a frozen
    dataclass costs several times more to build.)"""

    value: Any
    status: Status
    event_time: int | None = None


_value = tuple.__new__  # FeatureValue(...) without the named tuple's Python-level __new__ (hot loop)


@dataclass(slots=True)
class _Series:
    """One tile hash of a read: its reply's position, and the cache entry probed (None: read whole)."""

    index: int
    key: str
    shape: Shape
    start: int
    entry: Entry | None
    merged: Merged | None = None


@dataclass(frozen=True, slots=True)
class _ViewKeys:
    view: FeatureView
    keys: KeyLayout
    shapes: list[Shape]  # windowed: one per tile layout
    tile_parts: list[list[tuple[str, str]]]  # per shape, per partition: state key (head, tail)
    latest_parts: list[tuple[str, str]]  # per partition
    partitions: dict[Any, tuple[int, ...]] = field(default_factory=dict)  # entity -> partitions to read (bounded)

    def partitions_of(self, entity: Any) -> tuple[int, ...]:
        """`KeyLayout.partitions_to_read`, remembered per entity (murmur2 in Python costs ~5 us); a tuple, so
        the collector untracks it (a list would add one object per entity to every full collection)."""
        found = self.partitions.get(entity)
        if found is None:
            if len(self.partitions) >= 65_536:
                self.partitions.clear()
            found = self.partitions[entity] = tuple(self.keys.partitions_to_read(self.view, entity))
        return found


@dataclass(slots=True)
class _Plan:
    """Where one (row, view) reads its state inside the pipeline's replies."""

    row: int
    view: FeatureView
    features: Sequence[str]
    wanted: frozenset[str]
    start: int
    partitions: int
    series: list[list[_Series]] = field(default_factory=list)  # windowed: per layout, one per partition


class OnlineReader:
    """Reads online features for entity rows at a time `t_ms` (epoch ms).

    Closed tiles of stream-written hashes are cached per key (`tile_cache`, at
    most `cache_keys` keys; 0 turns it off): a warm read fetches only the open
    tiles, and the markers it fetches with them prove the cached part current.
    """

    def __init__(self, redis: OnlineClient, keys: KeyLayout, *, cache_keys: int = 20_000) -> None:
        self._redis = redis
        self._keys = keys
        self._views: dict[int, _ViewKeys] = {}  # id(view) -> what reading it needs, built once
        self._cache = TileCache(cache_keys)

    @property
    def cache(self) -> TileCache:
        """The closed-tile cache (its `hits`, `stale` and `full` counters say how reads went)."""
        return self._cache

    def _view_keys(self, view: FeatureView) -> _ViewKeys:
        """Shapes and key parts of `view`, built once per view object (kept, so its id stays unique)."""
        found = self._views.get(id(view))
        if found is None or found.view is not view:
            partitions = range(view.source.partitions)
            shapes = [shape_of(layout) for layout in tile_layouts(view)] if view.is_windowed else []
            tile_parts = [[self._keys.state_key_parts(view, p, s.hop_ms) for p in partitions] for s in shapes]
            found = self._views[id(view)] = _ViewKeys(
                view, self._keys, shapes, tile_parts, [self._keys.state_key_parts(view, p, None) for p in partitions])
        return found

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
        commands: list[tuple[Any, ...]] = []
        plans: list[_Plan] = []
        windowed: list[_Series] = []
        count = 0
        cache = self._cache
        asked = [(view, names, frozenset(names), view.entity.join_key, self._view_keys(view))
                 for view, names in features.items()]  # (views hash by content: slow dict keys)
        for row_index, row in enumerate(rows):
            for view, names, wanted, join_key, known in asked:
                entity = row.get(join_key)
                plan = _Plan(row_index, view, names, wanted, count, 0)
                plans.append(plan)
                if entity is None:
                    continue
                partitions = known.partitions_of(entity)
                plan.partitions = len(partitions)
                if view.is_windowed:
                    for shape, parts in zip(known.shapes, known.tile_parts, strict=True):
                        start = tile_start(t_ms, shape.hop_ms)
                        per_partition = []
                        for p in partitions:
                            head, tail = parts[p]
                            key = f"{head}{entity}{tail}"
                            entry = cache.get(key, shape, start)
                            commands.append(("HGETALL", key) if entry is None else ("HMGET", key, *entry.probe))
                            series = _Series(count, key, shape, start, entry)
                            per_partition.append(series)
                            windowed.append(series)
                            count += 1
                        plan.series.append(per_partition)
                else:
                    for p in partitions:
                        head, tail = known.latest_parts[p]
                        commands.append(("GET", f"{head}{entity}{tail}"))
                        count += 1
        replies = await self._execute(commands) if count else []
        stale: list[_Series] = []
        for series in windowed:
            reply = replies[series.index]
            if series.entry is not None:
                series.merged = from_probe(series.shape, series.entry, reply)
                if series.merged is None:
                    stale.append(series)
            else:
                series.merged, entry = from_full(series.shape, series.start, _pairs(reply))
                cache.put(series.key, entry)
                cache.full += 1
        if windowed:
            probes = sum(1 for series in windowed if series.entry is not None)
            cache.hits += probes - len(stale)
            cache.stale += len(stale)
            cache.full += len(stale)
        if stale:  # closed tiles changed since cached (late events, rewrites): read those hashes whole
            again = await self._execute([("HGETALL", series.key) for series in stale])
            for series, reply in zip(stale, again, strict=True):
                series.merged, entry = from_full(series.shape, series.start, _pairs(reply))
                cache.put(series.key, entry)
        out: list[dict[str, FeatureValue]] = [{} for _ in rows]
        for plan in plans:
            values = out[plan.row]
            if plan.partitions == 0:
                for name in plan.features:
                    values[f"{plan.view.name}:{name}"] = FeatureValue(None, "missing")
            elif plan.view.is_windowed:
                self._finish_windowed(plan, values)
            else:
                self._finish_latest(plan, replies, values, t_ms)
        return out

    async def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        try:
            return await execute(self._redis, commands)
        except UNREACHABLE as exc:
            raise OnlineStoreUnavailable(f"Redis is unreachable ({type(exc).__name__}); retry shortly") from None

    @staticmethod
    def _finish_windowed(plan: _Plan, values: dict[str, FeatureValue]) -> None:
        wanted = plan.wanted
        for per_partition in plan.series:
            shape = per_partition[0].shape
            layout = shape.layout
            merged = per_partition[0].merged
            assert merged is not None  # filled by read()
            for other in per_partition[1:]:  # partitions of a view not keyed by its entity
                assert other.merged is not None
                merged = [a if b is None else b if a is None else merge(layout, a, b)
                          for a, b in zip(merged, other.merged, strict=True)]
            newest_index = shape.newest_index
            for stats, finals in zip(merged, shape.by_depth, strict=True):
                if stats is None or stats[newest_index] <= NO_ORDER:
                    for final in finals:
                        if final.name in wanted:
                            values[final.ref] = _value(FeatureValue, (final.default, "default", None))
                else:
                    newest = int(stats[newest_index])
                    for final in finals:
                        if final.name in wanted:
                            values[final.ref] = _value(FeatureValue, (final.value(stats), "present", newest))

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


def _pairs(reply: dict[bytes, bytes] | list[bytes]) -> dict[bytes, bytes]:
    """An HGETALL reply as a dict: RESP3 gives a map already, RESP2 a flat field, value list."""
    if isinstance(reply, dict):
        return reply
    it = iter(reply)
    return dict(zip(it, it, strict=False))
