"""Training sets equal the brute-force oracle on random events (hypothesis).

Random timestamps with ties and exact tile boundaries, ingest delays (also
ingest before event time), late and invalid log rows, nulls, several
entities plus one without events, every aggregation function, several
(hop, window) combos, both sources kinds, as served and event-time only.
`HYPOTHESIS_PROFILE=thorough` runs ten times more examples. The default
run checks ~2,000 random (entity, t) rows, each against every feature.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_store.offline.engine import connect
from feature_store.offline.training import TrainingSetQuery, training_set
from tests.feature_store.offline_cases import (
    LogBuilder,
    batch_source,
    entity_rows,
    latest_view,
    stream_source,
    values,
    windowed_view,
    write_batch,
)
from tests.oracle import Event, close, feature_values, write_log

_SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 1
ENTITIES = ["a", "b", "c"]
HOPS = [10, 25, 40]

combo = st.tuples(st.sampled_from(HOPS), st.sampled_from([1, 2, 4])).map(lambda c: (c[0], c[0] * c[1]))
floats = st.one_of(st.none(), st.floats(-1e4, 1e4, allow_nan=False).map(lambda v: round(v, 2)))
ints = st.one_of(st.none(), st.integers(-1000, 1000))
strings = st.one_of(st.none(), st.sampled_from(["p", "q", "r"]))
event_time = st.one_of(st.integers(0, 200), st.sampled_from([0, 10, 25, 40, 50, 75, 80, 100, 120, 200]))
log_row = st.tuples(st.sampled_from(ENTITIES), event_time, st.integers(-10, 40), floats, ints, strings,
                    st.sampled_from(["applied"] * 6 + ["late", "invalid"]), st.integers(0, 2))
batch_row = st.tuples(st.sampled_from(ENTITIES), event_time, st.integers(-5, 40), floats, ints, strings)
row_time = st.one_of(st.integers(-5, 260), st.sampled_from([0, 9, 10, 24, 25, 39, 40, 49, 50, 99, 100, 200, 201]))
rows = st.lists(st.tuples(st.sampled_from([*ENTITIES, "zz"]), row_time), min_size=1, max_size=12)


def _log_events(data_dir: Path, raw: list[Any]) -> list[Event]:
    log = LogBuilder()
    for entity, ts, delay, x, n, s, status, partition in raw:
        log.add(entity, None if status == "invalid" else ts, ingest=ts + delay, partition=partition, status=status,
                x=x, n=n, s=s)
    write_log(data_dir, stream_source(), log.events, batch=7)
    return log.events


def _check(view: Any, events: list[Event], data_dir: Path, row_list: list[tuple[str, int]], ignore: bool) -> None:
    con = connect(data_dir, threads=1)
    try:
        query = TrainingSetQuery(features={view: list(view.feature_names)}, ignore_ingest_time=ignore)
        out = training_set(con, data_dir, entity_rows(row_list), query).to_pylist()
    finally:
        con.close()
    assert [r["label"] for r in out] == list(range(len(row_list)))  # same rows, same order
    for (entity, t), got in zip(row_list, out, strict=True):
        expected = feature_values(view, events, entity, t, ignore_ingest_time=ignore)
        for feature, value in expected.items():
            assert close(got[f"{view.name}__{feature}"], value), (feature, entity, t, got, expected)


@settings(max_examples=120 * _SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(combos=st.lists(combo, min_size=1, max_size=3, unique=True), raw=st.lists(log_row, max_size=40), rows=rows,
       ignore=st.booleans())
def test_windowed_log_equals_oracle(combos: list[tuple[int, int]], raw: list[Any], rows: list[tuple[str, int]],
                                    ignore: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        events = _log_events(data_dir, raw)
        _check(windowed_view(stream_source(), combos), events, data_dir, rows, ignore)


@settings(max_examples=120 * _SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ttl=st.one_of(st.none(), st.integers(1, 120)), raw=st.lists(log_row, max_size=40), rows=rows,
       ignore=st.booleans())
def test_latest_log_equals_oracle(ttl: int | None, raw: list[Any], rows: list[tuple[str, int]], ignore: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        events = _log_events(data_dir, raw)
        _check(latest_view(stream_source(), ttl), events, data_dir, rows, ignore)


@settings(max_examples=80 * _SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(combos=st.lists(combo, min_size=1, max_size=2, unique=True), ttl=st.one_of(st.none(), st.integers(1, 120)),
       raw=st.lists(batch_row, max_size=40), rows=rows, ignore=st.booleans())
def test_batch_source_equals_oracle(combos: list[tuple[int, int]], ttl: int | None, raw: list[Any],
                                    rows: list[tuple[str, int]], ignore: bool) -> None:
    """BatchSource rows: created time breaks ties (later file rows win) and is the 'ingest' time."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        source = batch_source()
        table = [values(e, ts, x, n, s, ct=ts + delay) for e, ts, delay, x, n, s in raw]
        events = write_batch(data_dir, source, table) if table else []
        _check(windowed_view(source, combos), events, data_dir, rows, ignore)
        _check(latest_view(source, ttl), events, data_dir, rows, ignore)
