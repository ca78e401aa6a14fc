"""Per tile hash, the merged stats of its closed tiles, so a read fetches only the open ones.

Why: a windowed read needs every tile of its longest window (180 tiles of two
hashes for 7 days of 1 h tiles plus 1 h of 5 min tiles), yet the tiles before
the newest one written rarely change (late events only). The stream writer
keeps two markers in each tile hash (`keys.VERSION_FIELD` `~m`,
`keys.NEWEST_FIELD` `~t`, see `apply.lua`): `~m` changes whenever a tile older
than `~t` is written or pruned. So for a read at tile start `S`, with
boundary `b = min(~t, S)`:

- tiles with start < b are *closed*: their merge per window depth is cached
  with `~m` and stays valid while `~m` is unchanged;
- tiles b .. S are *open*: fetched on every read with `HMGET key ~m ~t <b> .. <S>`
  (one atomic command, so markers and tiles agree). When b is far behind S
  (an idle entity) only tile b is fetched and `~t` must be unchanged (then
  nothing newer exists).

A hash without `~m` (written by a version of materialization that deleted
the markers; today's sets fresh ones, `set_tiles.lua`) is read whole and not
cached. Entries are per (key, S). When the clock crosses into the next tile,
S + hop, the entry rolls forward without a read: it also holds the closed
merges as they are one tile later (each window reaches one tile less far
back), and tile S joins the open tiles. Otherwise a read at another S
rebuilds the entry from a full `HGETALL`. Without the roll, every cached key
of a hop missed at once at each of its tile boundaries: for 100 entities,
requests cost up to ~2x the CPU until the keys were read again. The cache is
a bounded LRU.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from feature_store.aggregates import TileLayout, empty_stats, finalizer, merge
from feature_store.definitions import Aggregation
from feature_store.online.codec import unpack_stats
from feature_store.online.keys import NEWEST_FIELD, VERSION_FIELD

__all__ = ["PROBE_SPAN", "Entry", "Final", "Shape", "TileCache", "from_full", "from_probe", "shape_of"]

PROBE_SPAN = 3
"""Open tiles fetched by name at most; beyond, only the boundary tile is fetched and `~t` must be unchanged."""

_VERSION = VERSION_FIELD.encode()
_NEWEST = NEWEST_FIELD.encode()

Stats = list[Any]
Merged = Sequence[Sequence[Any] | None]  # per window depth (Shape.depths): merged stats, None when no tile


@dataclass(frozen=True, slots=True)
class Shape:
    """What a read of one layout needs, derived once from the layout."""

    layout: TileLayout
    hop_ms: int
    depths: tuple[int, ...]  # the window depths in tiles (window / hop) of its aggregations, ascending
    by_depth: tuple[tuple[Final, ...], ...]  # aligned with depths
    newest_index: int  # position of the newest event time in the stat vector
    max_depth: int


@dataclass(frozen=True, slots=True)
class Final:
    """How one aggregation is served: its name, 'view:name', its finalizer and its value without events."""

    name: str
    ref: str
    value: Callable[[Sequence[Any]], Any]
    default: Any


def shape_of(layout: TileLayout) -> Shape:
    """The layout's `Shape`, cached on the (frozen) layout."""
    shape = layout.__dict__.get("_read_shape")
    if shape is None:
        grouped: dict[int, list[Aggregation]] = {}
        for agg in layout.aggregations:
            grouped.setdefault(agg.window_ms // layout.hop_ms, []).append(agg)
        depths = tuple(sorted(grouped))
        empty = empty_stats(layout)

        def final(agg: Aggregation) -> Final:
            value = finalizer(layout, agg)
            return Final(agg.name, f"{layout.view}:{agg.name}", value, value(empty))

        shape = Shape(layout, layout.hop_ms, depths, tuple(tuple(final(a) for a in grouped[d]) for d in depths),
                      layout.index("*", "et"), depths[-1])
        object.__setattr__(layout, "_read_shape", shape)  # derived from the frozen fields
    return shape


class Entry(NamedTuple):
    """One tile hash read at tile start `start`: closed merges per depth, valid while `~m` is `version`.

    Tuples of atomic values inside, which the garbage collector untracks: a cached hash adds one object
    (the entry) to the full collections that pause serving, not one per depth and probe field.
    """

    version: bytes
    newest: bytes  # `~t` as stored, checked when `check_newest`
    start: int
    boundary: int  # tiles before it are closed
    closed: tuple[tuple[Any, ...] | None, ...]  # merged stats per depth (Shape.depths), None when no tile
    rolled: tuple[tuple[Any, ...] | None, ...] | None  # `closed` as it is at start + hop (None: rolled already)
    probe: tuple[str, ...]  # HMGET fields: ~m, ~t, then the open tiles by name (depth ascending)
    open_depths: tuple[int, ...]  # depth of each open tile in `probe[2:]`
    check_newest: bool


class TileCache:
    """Bounded LRU of `Entry` by Redis key."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self.hits = 0  # probes answered from the entry and the open tiles
        self.stale = 0  # probes that found the closed tiles changed (then read whole)
        self.full = 0  # hashes read whole (no entry for the key and tile start, or stale)
        self.rolls = 0  # entries rolled forward into the next tile instead

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, shape: Shape, start: int) -> Entry | None:
        """The entry of `key` for a read at tile start `start`, rolled forward one tile when it is for the one
        before; None when there is none."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.start != start:
            if entry.rolled is None or start != entry.start + shape.hop_ms:
                return None
            entry = self._entries[key] = _rolled(shape, entry)
            self.rolls += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: Entry | None) -> None:
        """Store `entry` (None: forget the key, e.g. it became uncacheable)."""
        if entry is None:
            self._entries.pop(key, None)
            return
        if self.max_keys <= 0:
            return
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)


def _combine(shape: Shape, closed: Merged, open_tiles: list[tuple[int, Stats]]) -> Merged:
    """Per depth: closed merge + the open tiles within the depth (open_tiles by ascending depth)."""
    layout = shape.layout
    out: list[Sequence[Any] | None] = []
    cum: Stats | None = None
    i, n = 0, len(open_tiles)
    for di, depth in enumerate(shape.depths):
        while i < n and open_tiles[i][0] <= depth:
            stats = open_tiles[i][1]
            cum = stats if cum is None else merge(layout, cum, stats)
            i += 1
        base = closed[di]
        out.append(cum if base is None else base if cum is None else merge(layout, base, cum))
    return out


def from_full(shape: Shape, start: int, reply: dict[bytes, bytes]) -> tuple[Merged, Entry | None]:
    """Per-depth merges of a whole hash (`HGETALL` reply) read at tile start `start`, and its cache entry
    (None when the hash carries no markers)."""
    version = reply.pop(_VERSION, None)
    newest = reply.pop(_NEWEST, None)
    hop, max_depth = shape.hop_ms, shape.max_depth
    cacheable = version is not None and newest is not None
    boundary = min(int(newest), start) if cacheable else start  # type: ignore[arg-type]
    open_count = (start - boundary) // hop + 1  # depths 1 .. open_count are open
    open_tiles: list[tuple[int, Stats]] = []
    closed_tiles: dict[int, bytes] = {}
    for field, packed in reply.items():
        back = start - int(field)
        if back < 0 or back % hop:
            continue
        depth = back // hop + 1
        if depth > max_depth:
            continue
        if depth <= open_count:
            open_tiles.append((depth, unpack_stats(packed)))
        else:
            closed_tiles[depth] = packed
    layout = shape.layout
    depths = shape.depths
    # closed merges cumulated by depth: at each window depth (closed) and one less (rolled: a tile later,
    # each window reaches one tile less far back)
    wanted = sorted({*depths, *(d - 1 for d in depths)})
    cum_at: dict[int, tuple[Any, ...] | None] = {}
    cum: Stats | None = None
    ordered = sorted(closed_tiles)
    i = 0
    for depth in wanted:
        while i < len(ordered) and ordered[i] <= depth:
            stats = unpack_stats(closed_tiles[ordered[i]])
            cum = stats if cum is None else merge(layout, cum, stats)
            i += 1
        cum_at[depth] = None if cum is None else tuple(cum)
    closed = tuple(cum_at[d] for d in depths)
    open_tiles.sort(key=lambda item: item[0])
    merged = _combine(shape, closed, open_tiles)
    if not cacheable:
        return merged, None
    entry = Entry(version, newest, start, boundary, closed, tuple(cum_at[d - 1] for d in depths),  # type: ignore[arg-type]
                  *_probe(shape, start, boundary))
    return merged, entry


def _probe(shape: Shape, start: int, boundary: int) -> tuple[tuple[str, ...], tuple[int, ...], bool]:
    """(HMGET fields, depth of each open tile fetched, whether `~t` must be unchanged) for a read at tile
    start `start` whose tiles from `boundary` on are open."""
    hop, max_depth = shape.hop_ms, shape.max_depth
    open_count = (start - boundary) // hop + 1  # depths 1 .. open_count are open
    if open_count > max_depth:  # idle past every window: nothing to fetch while ~t stays
        return (VERSION_FIELD, NEWEST_FIELD), (), True
    if open_count > PROBE_SPAN:
        return (VERSION_FIELD, NEWEST_FIELD, str(boundary)), (open_count,), True
    return ((VERSION_FIELD, NEWEST_FIELD, *(str(start - k * hop) for k in range(open_count))),
            tuple(range(1, open_count + 1)), False)


def _rolled(shape: Shape, entry: Entry) -> Entry:
    """`entry` one tile later: the closed merges it kept for then, tile `entry.start` now open too."""
    assert entry.rolled is not None
    start = entry.start + shape.hop_ms
    probe, open_depths, check_newest = _probe(shape, start, entry.boundary)
    return entry._replace(start=start, closed=entry.rolled, rolled=None, probe=probe, open_depths=open_depths,
                          check_newest=check_newest)


def from_probe(shape: Shape, entry: Entry, reply: list[bytes | None]) -> Merged | None:
    """Per-depth merges from the entry and a probe's `HMGET` reply; None when the entry is no longer valid."""
    if reply[0] != entry.version or (entry.check_newest and reply[1] != entry.newest):
        return None
    open_tiles = [(depth, unpack_stats(packed)) for depth, packed in zip(entry.open_depths, reply[2:], strict=True)
                  if packed is not None]
    return _combine(shape, entry.closed, open_tiles)
