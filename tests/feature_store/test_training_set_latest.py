"""The latest-value state path of training sets: its fallbacks and its streaming order, against the oracle.

`training._state_step` sorts rows and events by a 64-bit hash of the entity
and streams a running max over that order; these tests check the parts the
random oracle cases rarely reach: entities sharing a hash (forced with a
degenerate hash, so the exact fallback must take over), and an order that
spans many DuckDB vectors on two threads.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_store.offline import training
from feature_store.offline.engine import connect
from feature_store.offline.training import TrainingSetQuery, training_set
from tests.feature_store.offline_cases import LogBuilder, entity_rows, latest_view, stream_source
from tests.oracle import Event, close, feature_values, write_log

ENTITIES = ["a", "b", "c", "d"]
log_row = st.tuples(st.sampled_from(ENTITIES), st.integers(0, 120), st.integers(-10, 60),
                    st.one_of(st.none(), st.floats(-100, 100, allow_nan=False)), st.integers(0, 2))
rows = st.lists(st.tuples(st.sampled_from([*ENTITIES, "zz"]), st.integers(-5, 200)), min_size=1, max_size=12)


def _compare(data_dir: Path, events: list[Event], row_list: list[tuple[str, int]], ttl: int | None, ignore: bool,
             threads: int = 1) -> None:
    view = latest_view(stream_source(), ttl)
    con = connect(data_dir, threads=threads)
    try:
        query = TrainingSetQuery(features={view: list(view.feature_names)}, ignore_ingest_time=ignore)
        out = training_set(con, data_dir, entity_rows(row_list), query).to_pylist()
    finally:
        con.close()
    assert [r["label"] for r in out] == list(range(len(row_list)))
    by_entity: dict[str, list[Event]] = {}
    for event in events:
        by_entity.setdefault(event.entity, []).append(event)
    for (entity, t), got in zip(row_list, out, strict=True):
        expected = feature_values(view, by_entity.get(entity, []), entity, t, ignore_ingest_time=ignore)
        for feature, value in expected.items():
            assert close(got[f"{view.name}__{feature}"], value), (feature, entity, t, got, expected)


@pytest.mark.parametrize("degenerate", ["0", "(hash({}) % 2)"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.lists(log_row, max_size=30), row_list=rows, ttl=st.one_of(st.none(), st.integers(1, 80)),
       ignore=st.booleans())
def test_entities_sharing_a_hash_still_get_their_own_state(degenerate: str, raw: list[Any],
                                                           row_list: list[tuple[str, int]], ttl: int | None,
                                                           ignore: bool) -> None:
    """With every entity (or half of them) on one hash, the clash check must rebuild the states exactly."""
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "_GROUP_HASH", degenerate)
        data_dir = Path(tmp)
        log = LogBuilder()
        for entity, ts, delay, x, partition in raw:
            log.add(entity, ts, ingest=ts + delay, partition=partition, x=x, n=ts, s=entity)
        write_log(data_dir, stream_source(), log.events, batch=5)
        _compare(data_dir, log.events, row_list, ttl, ignore)


@pytest.mark.parametrize("ignore", [False, True])
def test_many_vectors_on_two_threads(tmp_path: Path, ignore: bool) -> None:
    """30k events and 3k rows: the sort and the streaming max span many vectors and both threads."""
    rng = random.Random(7)
    log = LogBuilder()
    for _ in range(30_000):
        ts = rng.randrange(0, 100_000)
        log.add(f"u{rng.randrange(300)}", ts, ingest=ts + rng.choice([0, 0, 1, rng.randrange(-50, 5_000)]),
                partition=rng.randrange(4), x=rng.uniform(0, 1), n=rng.randrange(1000), s="v")
    write_log(tmp_path, stream_source(), log.events, batch=4_000)
    row_list = [(f"u{rng.randrange(330)}", rng.randrange(-100, 110_000)) for _ in range(3_000)]
    _compare(tmp_path, log.events, row_list, 20_000, ignore, threads=2)
