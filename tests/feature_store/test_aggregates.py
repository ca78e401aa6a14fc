"""Stats merged in any grouping finalize to the brute-force aggregate of all events."""

from __future__ import annotations

import math
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_store.aggregates import (
    NO_ORDER,
    TileLayout,
    empty_stats,
    event_stats,
    finalize,
    finalize_sql,
    merge,
    stat_sql,
    tile_layouts,
)
from feature_store.definitions import Aggregation, Entity, FeatureView, StreamSource
from schemas import EventSchema, Field
from tests.oracle import aggregate

SCHEMA = EventSchema(name="ev", version=1, fields={"k": Field("string"), "x": Field("float", nullable=True),
                                                    "ts": Field("timestamp")})
SOURCE = StreamSource(name="ev", schema=SCHEMA, event_time="ts", key="k")
ENTITY = Entity(name="e", join_key="k")
FUNCTIONS = ["count", "sum", "mean", "min", "max", "last", "stddev"]
VIEW = FeatureView(
    name="v", entity=ENTITY, source=SOURCE,
    aggregations=[Aggregation(column="x", function=f, window="1h") for f in FUNCTIONS]
    + [Aggregation(column="*", function="count", window="1h", name="events")],
)
LAYOUT = tile_layouts(VIEW)[0]

Event = tuple[float | None, int, int, int]  # value, event_time, tie, seq


def brute(function: str, column: str, events: list[Event]) -> Any:
    """The aggregate straight from its definition, over all events."""
    if column == "*":
        return len(events)
    present = [e for e in events if e[0] is not None]
    if function == "last":
        return max(present, key=lambda e: (e[1], e[2], e[3]))[0] if present else None
    return aggregate(function, [e[0] for e in present])


def stats_of(events: list[Event], layout: TileLayout = LAYOUT) -> list[Any]:
    con = duckdb.connect()
    con.execute("CREATE TABLE rows (x DOUBLE, __event_time BIGINT, __tie BIGINT, __seq BIGINT)")
    if events:
        con.executemany("INSERT INTO rows VALUES (?, ?, ?, ?)", events)
    row = con.execute(f"SELECT {', '.join(stat_sql(layout))} FROM rows").fetchone()
    assert row is not None
    return [False if v is None else v for v in row]


def close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


values = st.one_of(st.none(), st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda v: round(v, 3)))
event = st.tuples(values, st.integers(0, 50), st.integers(0, 3), st.integers(0, 10_000))


@settings(max_examples=300, deadline=None)
@given(st.lists(event, max_size=30), st.lists(st.integers(0, 4), max_size=30))
def test_merged_groups_equal_brute_force(events: list[Event], groups: list[int]) -> None:
    events = list({e[3]: e for e in events}.values())  # seq is unique in a source
    buckets: dict[int, list[Event]] = {}
    for i, e in enumerate(events):
        buckets.setdefault(groups[i] if i < len(groups) else 0, []).append(e)
    merged = empty_stats(LAYOUT)
    for bucket in reversed(list(buckets.values())):  # merge order must not matter
        merged = merge(LAYOUT, merged, stats_of(bucket))
    for agg in LAYOUT.aggregations:
        expected = brute(agg.function, agg.column, events)
        assert close(finalize(LAYOUT, agg, merged), expected), (agg.name, events)


@settings(max_examples=100, deadline=None)
@given(st.lists(event, max_size=30))
def test_finalize_sql_equals_python_finalize(events: list[Event]) -> None:
    events = list({e[3]: e for e in events}.values())
    stats = stats_of(events)
    con = duckdb.connect()
    con.execute("CREATE TABLE rows (x DOUBLE, __event_time BIGINT, __tie BIGINT, __seq BIGINT)")
    if events:
        con.executemany("INSERT INTO rows VALUES (?, ?, ?, ?)", events)
    finals = ", ".join(finalize_sql(a) for a in LAYOUT.aggregations)
    row = con.execute(f"SELECT {finals} FROM (SELECT {', '.join(stat_sql(LAYOUT))} FROM rows)").fetchone()
    assert row is not None
    for agg, value in zip(LAYOUT.aggregations, row, strict=True):
        assert close(value, finalize(LAYOUT, agg, stats)), agg.name


def test_empty_stats_finalize_to_defaults() -> None:
    stats = stats_of([])
    assert stats == empty_stats(LAYOUT)
    defaults = {a.name: finalize(LAYOUT, a, stats) for a in LAYOUT.aggregations}
    assert defaults["x_count_1h"] == 0
    assert defaults["events"] == 0
    assert all(v is None for k, v in defaults.items() if k not in ("x_count_1h", "events"))
    assert stats[LAYOUT.index("*", "et")] == NO_ORDER


def test_layout_ops_name_their_operands() -> None:
    ops = dict(zip((s.label for s in LAYOUT.stats), LAYOUT.ops, strict=True))
    n, s = LAYOUT.index("x", "n") + 1, LAYOUT.index("x", "s") + 1
    assert ops["m2.x"] == f"m2:{n}:{s}"
    assert ops["mn.x"] == f"min:{n}"
    assert ops["et.*"] == "newest"
    assert ops["lt.x"] == "last"


@pytest.mark.parametrize(("window", "hop"), [("5m", None), ("24h", None), ("7d", None), ("30d", None), ("1h", "10m")])
def test_one_layout_per_hop(window: str, hop: str | None) -> None:
    view = FeatureView(name="w", entity=ENTITY, source=SOURCE,
                       aggregations=[Aggregation(column="x", function="sum", window=window, hop=hop)])
    (layout,) = tile_layouts(view)
    assert layout.max_window_ms % layout.hop_ms == 0


@settings(max_examples=100, deadline=None)
@given(event)
def test_event_stats_equal_stat_sql_of_one_row(e: Event) -> None:
    value, event_time, tie, seq = e
    assert event_stats(LAYOUT, {"x": value}, event_time=event_time, tie=tie, seq=seq) == stats_of([e])
