"""Aggregation state: the one definition of every aggregation function.

An aggregation is computed from mergeable *stats* (partial aggregates):

    n   count of non-null values (column '*': of events)
    s   sum                       m2  sum of squared deviations from the mean
    mn  minimum                   mx  maximum
    lt, lk, lq, lv   the newest value and its order (event_time, tie, seq)
    et  newest event time of any event in the group (for freshness and age)

`stat_sql` gives the SQL that computes the stats over any set of rows: a
micro-batch tile in the stream path, a tile of the offline log in
materialization, the window of one training row in the batch path. `merge`
combines two stat vectors (serving merges tiles with it, the stream path
merges a micro-batch's finer tiles into coarser ones with it, and its Redis
script implements the same rules from `TileLayout.ops`), and
`finalize` / `finalize_sql` turn stats into the feature value. Nothing else
computes an aggregate.

"Newest" orders by (event_time, tie, seq): `tie` is the ingest time for
stream events (created time for batch rows) and `seq` the position in the
source (partition * 2**40 + offset), so ties resolve by ingest order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from feature_store.definitions import Aggregation, FeatureView

__all__ = [
    "NEWEST_EVENT",
    "NO_ORDER",
    "SEQ_PARTITION_SHIFT",
    "Stat",
    "TileLayout",
    "covering_layout",
    "empty_stats",
    "event_stats",
    "finalize",
    "finalize_sql",
    "finalizer",
    "merge",
    "stat_sql",
    "tile_layouts",
]

NO_ORDER = -(2**53)
"""Order value of an empty 'last' stat; below any real time or offset and exact in a double."""

SEQ_PARTITION_SHIFT = 2**40
"""seq = partition * SEQ_PARTITION_SHIFT + offset (exact in a double for < 8192 partitions)."""

_STATS_FOR: dict[str, tuple[str, ...]] = {
    "count": ("n",),
    "sum": ("n", "s"),
    "mean": ("n", "s"),
    "stddev": ("n", "s", "m2"),
    "min": ("n", "mn"),
    "max": ("n", "mx"),
    "last": ("lt", "lk", "lq", "lv"),
}
_STAT_ORDER = ("et", "n", "s", "m2", "mn", "mx", "lt", "lk", "lq", "lv")


@dataclass(frozen=True, order=True)
class Stat:
    """One partial aggregate of one column, e.g. Stat('amount', 's')."""

    column: str
    stat: str

    @property
    def label(self) -> str:
        """Column name used in SQL results and readable dumps: 's.amount', 'n.*'."""
        return f"{self.stat}.{self.column}"


NEWEST_EVENT = Stat("*", "et")
"""Kept in every tile: the newest event time, so readers know a value's age."""


def stats_for(agg: Aggregation) -> list[Stat]:
    return [Stat(agg.column, s) for s in _STATS_FOR[agg.function]]


@dataclass(frozen=True)
class TileLayout:
    """The stat vector kept per tile for one view and hop, in a fixed order.

    The order is derived from the definition alone, so the writer and every
    reader agree without coordination.
    """

    view: str
    hop_ms: int
    stats: tuple[Stat, ...]
    aggregations: tuple[Aggregation, ...]

    def index(self, column: str, stat: str) -> int:
        return self.stats.index(Stat(column, stat))

    @property
    def max_window_ms(self) -> int:
        return max(a.window_ms for a in self.aggregations)

    @property
    def ops(self) -> list[str]:
        """Merge rule per position, for the Redis script (1-based positions, as Lua indexes).

        add | newest | min:<n> | max:<n> | m2:<n>:<s> | last (on lt, then lk, lq, lv say lastpart)

        newest keeps the larger value; last replaces lt, lk, lq, lv together
        when the other side's (lt, lk, lq) is larger.
        """
        ops: list[str] = []
        for stat in self.stats:
            n_pos = self.index(stat.column, "n") + 1 if Stat(stat.column, "n") in self.stats else 0
            if stat.stat in ("n", "s"):
                ops.append("add")
            elif stat.stat == "et":
                ops.append("newest")
            elif stat.stat == "m2":
                ops.append(f"m2:{n_pos}:{self.index(stat.column, 's') + 1}")
            elif stat.stat in ("mn", "mx"):
                ops.append(f"{'min' if stat.stat == 'mn' else 'max'}:{n_pos}")
            elif stat.stat == "lt":
                ops.append("last")
            else:
                ops.append("lastpart")
        return ops


def tile_layouts(view: FeatureView) -> list[TileLayout]:
    """One layout per distinct hop of a windowed view (ascending hop)."""
    layouts = []
    for hop in view.hops_ms:
        aggs = tuple(a for a in view.aggregations if a.hop_ms == hop)
        stats = sorted({NEWEST_EVENT, *(s for a in aggs for s in stats_for(a))}, key=_stat_order)
        layouts.append(TileLayout(view=view.name, hop_ms=hop, stats=tuple(stats), aggregations=aggs))
    return layouts


def _stat_order(stat: Stat) -> tuple[bool, str, int]:
    return stat.column != "*", stat.column, _STAT_ORDER.index(stat.stat)


def covering_layout(layouts: Sequence[TileLayout]) -> TileLayout:
    """A layout whose tiles merge into the tiles of each of `layouts`: the gcd of their hops, all their stats.

    Why: the stream path computes a micro-batch's stats with one DuckDB query
    per view instead of one per layout (a query costs ~1.5 ms however few
    rows it reads), then merges the finer tiles into each layout's tiles.
    """
    stats = sorted({stat for layout in layouts for stat in layout.stats}, key=_stat_order)
    return TileLayout(view=layouts[0].view, hop_ms=math.gcd(*(layout.hop_ms for layout in layouts)),
                      stats=tuple(stats), aggregations=tuple(a for layout in layouts for a in layout.aggregations))


def empty_stats(layout: TileLayout) -> list[Any]:
    """The identity of `merge`: no events."""
    return [NO_ORDER if s.stat in ("et", "lt", "lk", "lq") else (False if s.stat == "lv" else 0) for s in layout.stats]


def event_stats(layout: TileLayout, row: Mapping[str, Any], *, event_time: int, tie: int, seq: int) -> list[Any]:
    """The stat vector of a single event (what `stat_sql` gives for a group of one row).

    For writing online state by hand: test fixtures and benchmarks.
    """
    out = empty_stats(layout)
    for i, stat in enumerate(layout.stats):
        value = None if stat.column == "*" else row.get(stat.column)
        if stat.stat == "et":
            out[i] = event_time
        elif stat.stat == "n":
            out[i] = 1 if stat.column == "*" or value is not None else 0
        elif value is None:
            continue
        elif stat.stat == "s":
            out[i] = float(value)
        elif stat.stat in ("mn", "mx", "lv"):
            out[i] = value
        elif stat.stat in ("lt", "lk", "lq"):
            out[i] = {"lt": event_time, "lk": tie, "lq": seq}[stat.stat]
    return out


def _quoted(column: str) -> str:
    return f'"{column}"'


def stat_sql(layout: TileLayout, *, event_time: str = "__event_time", tie: str = "__tie",
             seq: str = "__seq") -> list[str]:
    """Aggregate SQL expressions (with aliases) computing the layout's stats over a group of rows.

    Rows carry the view's input columns plus `event_time`, `tie` and `seq`
    (all BIGINT). Empty stats come out as in `empty_stats` (never NULL), so
    the vectors can be merged and stored as they are.
    """
    order = f"struct_pack(t := {event_time}, k := {tie}, q := {seq})"
    exprs = []
    for stat in layout.stats:
        col = stat.column
        notnull = "" if col == "*" else f" FILTER (WHERE {_quoted(col)} IS NOT NULL)"
        alias = _quoted(stat.label)
        if stat.stat == "et":
            expr = f"coalesce(max({event_time}), {NO_ORDER})"
        elif stat.stat == "n":
            expr = "count(*)" if col == "*" else f"count({_quoted(col)})"
        elif stat.stat == "s":
            expr = f"coalesce(sum({_quoted(col)})::DOUBLE, 0.0)"
        elif stat.stat == "m2":
            expr = f"coalesce(var_pop({_quoted(col)}::DOUBLE) * count({_quoted(col)}), 0.0)"
        elif stat.stat in ("mn", "mx"):
            fn = "min" if stat.stat == "mn" else "max"
            expr = f"coalesce({fn}({_quoted(col)}), 0)"
        elif stat.stat in ("lt", "lk", "lq"):
            field = {"lt": "t", "lk": "k", "lq": "q"}[stat.stat]
            expr = f"coalesce((max({order}){notnull}).{field}, {NO_ORDER})"
        else:  # lv
            expr = f"arg_max({_quoted(col)}, {order}){notnull}"
        exprs.append(f"{expr} AS {alias}")
    return exprs


def finalize_sql(agg: Aggregation, stats: Mapping[Stat, str] | None = None) -> str:
    """SQL computing the feature value from stat columns (named by `Stat.label` unless mapped)."""

    def col(stat: str) -> str:
        key = Stat(agg.column, stat)
        return stats[key] if stats is not None else _quoted(key.label)

    n = col("n") if agg.function != "last" else ""
    match agg.function:
        case "count":
            return f"coalesce({n}, 0)::BIGINT"
        case "sum":
            return f"CASE WHEN {n} > 0 THEN {col('s')} END"
        case "mean":
            return f"CASE WHEN {n} > 0 THEN {col('s')} / {n} END"
        case "stddev":
            return f"CASE WHEN {n} > 1 THEN sqrt(greatest({col('m2')}, 0.0) / ({n} - 1)) END"
        case "min":
            return f"CASE WHEN {n} > 0 THEN {col('mn')} END"
        case "max":
            return f"CASE WHEN {n} > 0 THEN {col('mx')} END"
        case _:  # last
            return f"CASE WHEN {col('lt')} > {NO_ORDER} THEN {col('lv')} END"


def merge(layout: TileLayout, a: Sequence[Any], b: Sequence[Any]) -> list[Any]:
    """Combine two stat vectors of `layout` (associative; `empty_stats` is the identity)."""
    merger = layout.__dict__.get("_merger")
    if merger is None:
        merger = _compile_merger(layout)
        object.__setattr__(layout, "_merger", merger)  # derived from the frozen fields; cached on the instance
    return merger(a, b)


def _m2(ai: float, bi: float, na: float, nb: float, sa: float, sb: float) -> float:
    """Sum of squared deviations of two groups together (Chan et al.), from each group's m2, n and s."""
    delta = sb / nb - sa / na
    return ai + bi + delta * delta * na * nb / (na + nb)


def _compile_merger(layout: TileLayout) -> Callable[[Sequence[Any], Sequence[Any]], list[Any]]:
    """`merge` for one layout as straight-line code, one expression per stat (built from `_merge_plan`).

    Why: the online read merges a key's tiles one pair at a time, tens of
    pairs per entity; unrolled, a merge costs about half of a loop over the
    plan. A stat reads only the inputs, so the order of the expressions does
    not matter; a count of 0 means an empty side (its other stats are unset).
    """
    exprs = [f"a[{i}]" for i in range(len(layout.stats))]
    lines = ["def merge(a, b):"]
    for op, i, j, k in _merge_plan(layout):
        if op == 0:
            exprs[i] = f"a[{i}] + b[{i}]"
        elif op == 1:
            exprs[i] = f"max(a[{i}], b[{i}])"
        elif op == 2:
            both = f"m2(a[{i}], b[{i}], a[{j}], b[{j}], a[{k}], b[{k}])"
            exprs[i] = f"b[{i}] if a[{j}] == 0 else a[{i}] if b[{j}] == 0 else {both}"
        elif op == 3 or op == 4:
            both = f"{'min' if op == 3 else 'max'}(a[{i}], b[{i}])"
            exprs[i] = f"b[{i}] if a[{j}] == 0 else a[{i}] if b[{j}] == 0 else {both}"
        else:  # last: the newer (lt, lk, lq) brings all four of lt, lk, lq, lv
            lines.append(f"    newer_{i} = (b[{i}], b[{j}], b[{k}]) > (a[{i}], a[{j}], a[{k}])")
            for at in (i, j, k, op - 5):
                exprs[at] = f"b[{at}] if newer_{i} else a[{at}]"
    lines.append(f"    return [{', '.join(f'({e})' for e in exprs)}]")
    namespace: dict[str, Any] = {"m2": _m2}
    exec("\n".join(lines), namespace)  # source built above from the layout's own plan
    return namespace["merge"]  # type: ignore[no-any-return]


def _merge_plan(layout: TileLayout) -> tuple[tuple[int, int, int, int], ...]:
    """Per stat of `layout`: (op, position, helper position, helper position), resolved once per layout.

    op: 0 add, 1 newest, 2 m2, 3 min, 4 max, 5 + lv position for 'last' (lk, lq, lv follow lt's rule).
    """
    plan: list[tuple[int, int, int, int]] = []
    for i, stat in enumerate(layout.stats):
        if stat.stat in ("n", "s"):
            plan.append((0, i, 0, 0))
        elif stat.stat == "et":
            plan.append((1, i, 0, 0))
        elif stat.stat == "m2":
            plan.append((2, i, layout.index(stat.column, "n"), layout.index(stat.column, "s")))
        elif stat.stat in ("mn", "mx"):
            plan.append((3 if stat.stat == "mn" else 4, i, layout.index(stat.column, "n"), 0))
        elif stat.stat == "lt":
            lk, lq, lv = (layout.index(stat.column, s) for s in ("lk", "lq", "lv"))
            plan.append((5 + lv, i, lk, lq))
    return tuple(plan)


def finalize(layout: TileLayout, agg: Aggregation, stats: Sequence[Any]) -> Any:
    """The feature value of `agg` from a merged stat vector (count 0 / None when empty)."""
    return finalizer(layout, agg)(stats)


def finalizer(layout: TileLayout, agg: Aggregation) -> Callable[[Sequence[Any]], Any]:
    """`finalize` of one aggregation with its stat positions resolved once (the online read path keeps it)."""
    if agg.function == "last":
        lt, lv = layout.index(agg.column, "lt"), layout.index(agg.column, "lv")
        return lambda stats: stats[lv] if stats[lt] > NO_ORDER else None
    n = layout.index(agg.column, "n")
    match agg.function:
        case "count":
            return lambda stats: int(stats[n])
        case "sum":
            s = layout.index(agg.column, "s")
            return lambda stats: float(stats[s]) if stats[n] > 0 else None
        case "mean":
            s = layout.index(agg.column, "s")
            return lambda stats: stats[s] / stats[n] if stats[n] > 0 else None
        case "stddev":
            m2 = layout.index(agg.column, "m2")
            return lambda stats: math.sqrt(max(stats[m2], 0.0) / (stats[n] - 1)) if stats[n] > 1 else None
        case "min":
            mn = layout.index(agg.column, "mn")
            return lambda stats: stats[mn] if stats[n] > 0 else None
        case _:  # max
            mx = layout.index(agg.column, "mx")
            return lambda stats: stats[mx] if stats[n] > 0 else None
