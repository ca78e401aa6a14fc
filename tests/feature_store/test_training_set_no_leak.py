"""No value from after a row's time leaks into it: planted future events never show.

Each entity gets ordinary events up to its row's time t plus planted ones
carrying marker values: events with event_time > t, and (as served) events
with event_time <= t that were only ingested after t. The markers must not
reach any feature; with `ignore_ingest_time` the second kind must appear
(that proves the planted rows are read at all).
"""

from __future__ import annotations

import random
from pathlib import Path

from feature_store.offline.engine import connect
from feature_store.offline.training import TrainingSetQuery, training_set
from tests.feature_store.offline_cases import LogBuilder, entity_rows, latest_view, stream_source, windowed_view
from tests.oracle import write_log

MARK_X = 1_000_000.0
MARK_N = 999_999
MARK_S = "FUTURE"


def _plant(tmp_path: Path, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    log = LogBuilder()
    rows = []
    for i in range(40):
        entity, t = f"e{i}", rng.randrange(100, 2_000)
        rows.append((entity, t))
        for _ in range(rng.randrange(0, 8)):  # ordinary events, visible at t
            ts = rng.randrange(t - 300, t + 1)
            log.add(entity, ts, ingest=rng.randrange(ts - 5, t + 1), partition=rng.randrange(3),
                    x=rng.uniform(0, 100), n=rng.randrange(100), s="ok")
        for _ in range(rng.randrange(1, 6)):  # after t in event time (ingested any time)
            ts = rng.choice([t + 1, rng.randrange(t + 1, t + 500)])
            log.add(entity, ts, ingest=rng.randrange(ts - 20, ts + 50), partition=rng.randrange(3),
                    x=MARK_X, n=MARK_N, s=MARK_S)
        ts = rng.choice([t, rng.randrange(t - 200, t + 1)])  # before t, but only applied after t
        log.add(entity, ts, ingest=t + rng.choice([1, 17, 400]), partition=rng.randrange(3),
                x=MARK_X, n=MARK_N, s=MARK_S)
    write_log(tmp_path, stream_source(), log.events, batch=25)
    return rows


def test_planted_future_events_never_leak(tmp_path: Path) -> None:
    rows = _plant(tmp_path, seed=11)
    views = {windowed_view(stream_source(), [(10, 40), (50, 500), (100, 1000)]): None,
             latest_view(stream_source(), ttl=None): None}
    con = connect(tmp_path, threads=1)
    try:
        seen_when_ignoring = False
        for ignore in (False, True):
            query = TrainingSetQuery(features={v: list(v.feature_names) for v in views}, ignore_ingest_time=ignore)
            table = training_set(con, tmp_path, entity_rows(rows), query)
            for row in table.to_pylist():
                for name, value in row.items():
                    if "__" not in name:
                        continue
                    marked = value == MARK_S or (isinstance(value, int | float) and abs(value) >= MARK_N / 2)
                    if ignore:
                        seen_when_ignoring |= marked
                    else:
                        assert not marked, (name, row)
        assert seen_when_ignoring
    finally:
        con.close()
