"""Hand-made training-set cases: each contract rule on a case small enough to check by eye."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_store.definitions import Aggregation, FeatureView
from feature_store.errors import OfflineStoreError
from feature_store.offline.engine import connect
from feature_store.offline.training import TrainingSetQuery, training_set
from tests.feature_store.offline_cases import ENTITY, LogBuilder, entity_rows, latest_view, stream_source
from tests.oracle import write_log

SOURCE = stream_source()
WIN = FeatureView(name="w", entity=ENTITY, source=SOURCE, aggregations=[
    Aggregation(column="*", function="count", window=20, hop=10, name="cnt"),
    Aggregation(column="x", function="sum", window=20, hop=10, name="total"),
    Aggregation(column="x", function="last", window=20, hop=10, name="last_x"),
    Aggregation(column="x", function="stddev", window=20, hop=10, name="sd"),
    Aggregation(column="x", function="min", window=20, hop=10, name="lo"),
])
LATEST = latest_view(SOURCE, ttl=100)


def run(tmp_path: Path, log: LogBuilder, view: FeatureView, rows: list[tuple[str, int]], *,
        ignore: bool = False) -> list[dict[str, Any]]:
    if log.events:
        write_log(tmp_path, SOURCE, log.events, batch=2)
    con = connect(tmp_path, threads=1)
    try:
        query = TrainingSetQuery(features={view: list(view.feature_names)}, ignore_ingest_time=ignore)
        table = training_set(con, tmp_path, entity_rows(rows), query)
    finally:
        con.close()
    return [{k.split("__", 1)[1]: v for k, v in row.items() if "__" in k} for row in table.to_pylist()]


def test_equal_timestamps_break_ties_by_ingest_then_offset(tmp_path: Path) -> None:
    log = LogBuilder()
    log.add("a", 5, ingest=7, partition=1, x=1.0)   # same event time, ingested later: wins over the next
    log.add("a", 5, ingest=6, partition=0, x=2.0)
    log.add("b", 5, ingest=6, partition=0, x=3.0)
    log.add("b", 5, ingest=6, partition=0, x=4.0)   # same ingest: the higher offset wins
    log.add("c", 5, ingest=6, partition=0, x=5.0)
    log.add("c", 5, ingest=6, partition=1, x=6.0)   # higher partition: larger seq wins
    got = run(tmp_path, log, LATEST, [("a", 9), ("b", 9), ("c", 9)])
    assert [g["x"] for g in got] == [1.0, 4.0, 6.0]
    got = run(tmp_path, LogBuilder(), WIN, [("a", 9), ("b", 9), ("c", 9)])
    assert [g["last_x"] for g in got] == [1.0, 4.0, 6.0]
    assert [g["cnt"] for g in got] == [2, 2, 2]


def test_tile_boundary(tmp_path: Path) -> None:
    """Window 20, hop 10: a read at t covers [floor(t/10)*10 - 10, t]."""
    log = LogBuilder()
    log.add("a", 10, ingest=10, x=1.0)  # first ms of tile [10, 20)
    log.add("a", 19, ingest=19, x=2.0)  # last ms of it
    log.add("a", 20, ingest=20, x=4.0)  # first ms of tile [20, 30)
    got = run(tmp_path, log, WIN, [("a", 9), ("a", 10), ("a", 19), ("a", 20), ("a", 29), ("a", 30), ("a", 39),
                                   ("a", 40)])
    assert [g["cnt"] for g in got] == [0, 1, 2, 3, 3, 1, 1, 0]
    assert [g["total"] for g in got] == [None, 1.0, 3.0, 7.0, 7.0, 4.0, 4.0, None]
    assert got[1]["sd"] is None
    assert got[2]["sd"] == pytest.approx(0.7071067811865476, rel=1e-12)
    assert [g["lo"] for g in got] == [None, 1.0, 1.0, 1.0, 1.0, 4.0, 4.0, None]


def test_ttl_expiry(tmp_path: Path) -> None:
    """ttl 100: a value with event_time 50 lives while 50 > t - 100, i.e. for t < 150."""
    log = LogBuilder()
    log.add("a", 50, ingest=50, x=1.5, s="hello")
    got = run(tmp_path, log, LATEST, [("a", 49), ("a", 50), ("a", 149), ("a", 150)])
    assert [g["x"] for g in got] == [None, 1.5, 1.5, None]
    assert [g["s"] for g in got] == [None, "hello", "hello", None]


def test_late_and_invalid_rows_never_count(tmp_path: Path) -> None:
    log = LogBuilder()
    log.add("a", 12, ingest=12, x=1.0)
    log.add("a", 13, ingest=13, x=100.0, status="late")
    log.add("a", None, ingest=14, x=1000.0, status="invalid")
    got = run(tmp_path, log, WIN, [("a", 15)])
    assert got[0]["cnt"] == 1
    assert got[0]["total"] == 1.0
    assert run(tmp_path, LogBuilder(), LATEST, [("a", 15)])[0]["x"] == 1.0


def test_entity_without_events_gets_defaults(tmp_path: Path) -> None:
    log = LogBuilder()
    log.add("a", 12, ingest=12, x=1.0)
    got = run(tmp_path, log, WIN, [("nobody", 15)])
    assert got == [{"cnt": 0, "total": None, "last_x": None, "sd": None, "lo": None}]
    assert run(tmp_path, LogBuilder(), LATEST, [("nobody", 15)]) == [{"x": None, "n": None, "s": None}]


def test_no_files_yet_gives_defaults(tmp_path: Path) -> None:
    assert run(tmp_path, LogBuilder(), WIN, [("a", 15)])[0]["cnt"] == 0
    assert run(tmp_path, LogBuilder(), LATEST, [("a", 15)])[0]["x"] is None


def test_as_served_waits_for_ingest(tmp_path: Path) -> None:
    """Event time 10, applied at 50: served from t=50 on; event-time backfills see it from t=10."""
    log = LogBuilder()
    log.add("a", 10, ingest=50, x=1.0)
    log.add("a", 30, ingest=31, x=2.0)
    rows = [("a", 20), ("a", 35), ("a", 55)]
    assert [g["x"] for g in run(tmp_path, log, LATEST, rows)] == [None, 2.0, 2.0]
    assert [g["x"] for g in run(tmp_path, LogBuilder(), LATEST, rows, ignore=True)] == [1.0, 2.0, 2.0]
    # The late arrival with an older event time never replaces the newer value...
    late = LogBuilder()
    late.add("b", 30, ingest=31, x=2.0)
    late.add("b", 10, ingest=50, x=1.0)
    write_log(tmp_path, SOURCE, [e for e in late.events], batch=2)
    # ...and both count in windows once applied (w=20 at t=35 covers [20, 35]: only the event at 30).
    got = run(tmp_path, LogBuilder(), WIN, [("b", 35), ("b", 55)])
    assert [g["cnt"] for g in got] == [1, 0]


def test_rows_keep_order_duplicates_and_types(tmp_path: Path) -> None:
    log = LogBuilder()
    log.add("a", 10, ingest=10, x=1.0)
    write_log(tmp_path, SOURCE, log.events)
    ts = pd.to_datetime([20, 5, 20, 20], unit="ms", utc=True)
    frame = pd.DataFrame({"k": ["a", "a", "zz", "a"], "when": ts, "label": [1, 2, 3, 4]})
    query = TrainingSetQuery(features={LATEST: ["x"], WIN: ["cnt"]}, timestamp_column="when")
    con = connect(tmp_path, threads=1)
    try:
        out = training_set(con, tmp_path, frame, query).to_pandas()
        path = tmp_path / "rows.parquet"
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
        written = training_set(con, tmp_path, path, query, out=tmp_path / "out" / "ts.parquet")
    finally:
        con.close()
    assert list(out.columns) == ["k", "when", "label", "lat__x", "w__cnt"]
    assert out["label"].tolist() == [1, 2, 3, 4]
    assert out["lat__x"].tolist()[0] == 1.0
    assert pd.isna(out["lat__x"].tolist()[1])
    assert out["w__cnt"].tolist() == [1, 0, 0, 1]
    copy = written.to_pandas()
    assert copy.drop(columns="when").equals(out.drop(columns="when"))
    assert (copy["when"] == out["when"]).all()  # Parquet stores microseconds: same instants
    assert (tmp_path / "out" / "ts.parquet").exists()


def test_transform_runs_before_aggregation(tmp_path: Path) -> None:
    view = FeatureView(name="tw", entity=ENTITY, source=SOURCE, transform={"x2": "x * 2 + coalesce(n, 0)"},
                       aggregations=[Aggregation(column="x2", function="sum", window=100, hop=10, name="s2")])
    log = LogBuilder()
    log.add("a", 10, ingest=10, x=1.0, n=3)
    log.add("a", 11, ingest=11, x=2.0)
    assert run(tmp_path, log, view, [("a", 50)])[0]["s2"] == 9.0


def test_bad_entity_rows_name_the_fix(tmp_path: Path) -> None:
    con = connect(tmp_path, threads=1)
    try:
        query = TrainingSetQuery(features={LATEST: ["x"]})
        with pytest.raises(OfflineStoreError, match="lack column 'k'"):
            training_set(con, tmp_path, pa.table({"user": ["a"], "event_timestamp": [1]}), query)
        with pytest.raises(OfflineStoreError, match="timestamp column 'event_timestamp'"):
            training_set(con, tmp_path, pa.table({"k": ["a"], "ts": [1]}), query)
        with pytest.raises(OfflineStoreError, match="type VARCHAR"):
            training_set(con, tmp_path, pa.table({"k": ["a"], "event_timestamp": ["yesterday"]}), query)
        with pytest.raises(OfflineStoreError, match="cannot read entity rows"):
            training_set(con, tmp_path, tmp_path / "missing.parquet", query)
    finally:
        con.close()


def test_extreme_time_ranges_use_the_exact_struct_order(tmp_path: Path) -> None:
    """Times spanning most of int64 cannot be packed into one integer key; the struct order still holds."""
    far = 2**47  # year ~6429: still a valid log file date
    log = LogBuilder()
    log.add("a", 5, ingest=-far, partition=0, x=1.0)
    log.add("a", 5, ingest=far, partition=0, x=2.0)      # same event time, larger tie: newest
    log.add("a", far, ingest=far, partition=1, x=3.0)    # far future
    rows = [("a", 4), ("a", 5), ("a", far - 1), ("a", far)]
    assert [g["x"] for g in run(tmp_path, log, latest_view(SOURCE, ttl=None), rows, ignore=True)] == \
        [None, 2.0, 2.0, 3.0]
    # As served, the newer tie only counts once ingested (at `far`); by then the far-future event wins.
    assert [g["x"] for g in run(tmp_path, LogBuilder(), latest_view(SOURCE, ttl=None), rows)] == \
        [None, 1.0, 1.0, 3.0]
