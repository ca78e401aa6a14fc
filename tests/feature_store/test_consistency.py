"""The consistency check: value matching, per-feature rates, and the whole check over a real offline store.

The end-to-end tests write a real event log (the layout the worker writes),
compute "served" values with a brute-force oracle of the contract's as-served
semantics, write them as a prediction log, and let the check recompute them
with the batch path's point-in-time join: 100% must match; a perturbed value
must be reported with its example; the CLI must exit 1 below the threshold.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from feature_store.consistency import (
    ServedRow,
    check,
    compare,
    export_gauge,
    find_prediction_log,
    load_served,
    values_match,
)
from feature_store.consistency import batch_recompute as make_recompute
from feature_store.errors import FeatureStoreError
from feature_store.examples import CARD_FRAUD
from feature_store.offline.layout import log_file_path
from feature_store.repo import load_repo
from feature_store.windows import tile_start

MIN = 60_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
RATES = {"EUR": 1.08, "GBP": 1.27}

numbers = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


# ---------------------------------------------------------------- matching
@given(numbers)
def test_a_value_matches_itself_and_tiny_float_noise(x: float) -> None:
    assert values_match(x, x)
    assert values_match(x, x * (1 + 1e-12))
    assert values_match(x, x + 1e-12)


@given(numbers, st.floats(min_value=1e-6, max_value=1.0))
def test_a_real_difference_never_matches(x: float, frac: float) -> None:
    delta = max(abs(x) * frac, 1e-6)
    assert not values_match(x, x + delta)


@given(st.one_of(st.none(), numbers, st.text(max_size=5), st.booleans()))
def test_none_matches_only_none(value: Any) -> None:
    assert values_match(None, value) == (value is None)
    assert values_match(value, None) == (value is None)


def test_ints_floats_bools_nan_strings() -> None:
    assert values_match(3, 3.0)
    assert values_match(float("nan"), float("nan"))
    assert not values_match(float("nan"), 1.0)
    assert not values_match(True, 1)
    assert not values_match(1.0, True)
    assert values_match(False, False)
    assert values_match("US", "US")
    assert not values_match("US", "us")


@given(st.lists(st.tuples(numbers, st.booleans()), max_size=30))
def test_compare_counts_like_a_brute_force_count(pairs: list[tuple[float, bool]]) -> None:
    """Each (value, perturbed?) pair: the rate is the share left unperturbed; examples are capped."""
    rows = [ServedRow(f"r{i}", i, {"user": "u1"}, {"v:f": v, "v:g": 1}) for i, (v, _) in enumerate(pairs)]
    again = [{"v:f": v + max(abs(v), 1.0) if bad else v, "v:g": 1} for v, bad in pairs]
    report = compare(rows, again, ["v:f", "v:g"], max_examples=2)
    good = sum(1 for _, bad in pairs if not bad)
    assert report.features["v:f"].compared == len(pairs)
    assert report.features["v:f"].matched == good
    assert report.features["v:g"].rate == 1.0
    assert len(report.features["v:f"].examples) == min(2, len(pairs) - good)
    assert report.passed(1.0) == (good == len(pairs) and len(pairs) > 0)


def test_nothing_compared_never_passes() -> None:
    report = compare([], [], ["v:f"])
    assert report.compared == 0
    assert not report.passed(0.0)


def test_gauge_exports_rates_per_feature_and_overall() -> None:
    rows = [ServedRow("a", 1, {}, {"v:f": 1.0}), ServedRow("b", 2, {}, {"v:f": 2.0})]
    report = compare(rows, [{"v:f": 1.0}, {"v:f": 5.0}], ["v:f"])
    registry = CollectorRegistry()
    export_gauge(report, registry)
    export_gauge(report, registry)  # calling again updates, never re-registers
    assert registry.get_sample_value("featurestream_consistency_match_ratio", {"feature": "v:f"}) == 0.5
    assert registry.get_sample_value("featurestream_consistency_match_ratio", {"feature": "*"}) == 0.5


# ---------------------------------------------------------------- end to end on a real offline store
def _events(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        et = T0 + rng.randrange(0, 90 * MIN)
        currency = rng.choice(["USD", "EUR", "GBP"])
        out.append({
            "transaction_id": f"t{i}", "user_id": f"u{rng.randrange(6)}", "merchant_id": f"m{rng.randrange(3)}",
            "amount": round(rng.uniform(1, 300), 2), "currency": currency, "country": rng.choice(["US", "DE"]),
            "channel": "web", "ts": et,
            "__event_time": et, "__ingest_time": et + rng.randrange(0, 20_000), "__partition": i % 2,
            "__offset": i // 2, "__status": "late" if rng.random() < 0.05 else "applied", "__reason": None,
        })
    return out


def _write_log(data_dir: Path, events: list[dict[str, Any]]) -> None:
    for partition in (0, 1):
        part = [e for e in events if e["__partition"] == partition]
        table = pa.table({k: [e[k] for e in part] for k in part[0]}).cast(pa.schema([
            ("transaction_id", pa.string()), ("user_id", pa.string()), ("merchant_id", pa.string()),
            ("amount", pa.float64()), ("currency", pa.string()), ("country", pa.string()),
            ("channel", pa.string()), ("ts", pa.int64()), ("__event_time", pa.int64()),
            ("__ingest_time", pa.int64()), ("__partition", pa.int32()), ("__offset", pa.int64()),
            ("__status", pa.string()), ("__reason", pa.string()),
        ]))
        path = log_file_path(data_dir, "transactions", partition, 0, len(part) - 1, T0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)


def _oracle(events: list[dict[str, Any]], user: str, t: int) -> dict[str, Any]:
    """What the online store answers at t, by brute force: applied events with event and ingest time <= t."""
    seen = [e for e in events if e["user_id"] == user and e["__status"] == "applied"
            and e["__event_time"] <= t and e["__ingest_time"] <= t]
    low5 = tile_start(t, 5 * MIN)
    low1h = tile_start(t, 5 * MIN) - 60 * MIN + 5 * MIN
    in_hour = [e["amount"] * RATES.get(e["currency"], 1.0) for e in seen if e["__event_time"] >= low1h]
    live = [e for e in seen if e["__event_time"] > t - 7 * 24 * 60 * MIN]
    newest = max(live, key=lambda e: (e["__event_time"], e["__ingest_time"],
                                      e["__partition"] * 2**40 + e["__offset"]), default=None)
    return {
        "user_spend:txn_count_5m": sum(1 for e in seen if e["__event_time"] >= low5),
        "user_spend:amount_sum_1h": math.fsum(in_hour) if in_hour else None,
        "user_last_txn:amount": newest["amount"] if newest else None,
    }


def _write_predictions(data_dir: Path, rows: list[ServedRow]) -> Path:
    path = data_dir / "log" / "_predictions" / "date=2026-01-01" / "p0-0-99.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "request_id": [r.request_id for r in rows],
        "model": ["fraud"] * len(rows),
        "model_version": [1] * len(rows),
        "served_at": [r.served_at for r in rows],
        "entity_keys": [orjson.dumps(dict(r.entity_keys)).decode() for r in rows],
        "features": [orjson.dumps(dict(r.features)).decode() for r in rows],
        "prediction": [0.5] * len(rows),
        "fallback": [False] * len(rows),
        "service": ["fraud_detection"] * len(rows),
    }), path)
    return path


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, list[ServedRow]]:
    """An offline store with a transactions log and 40 served predictions whose values the oracle computed."""
    events = _events(400, seed=3)
    _write_log(tmp_path, events)
    rng = random.Random(5)
    rows = []
    for i in range(40):
        user, t = f"u{rng.randrange(7)}", T0 + rng.randrange(0, 100 * MIN)  # u6 never transacts
        # named as serving logs model inputs ('view__feature'); one row uses refs, both must work
        served = {k if i == 0 else k.replace(":", "__"): v for k, v in _oracle(events, user, t).items()}
        features = {**served, "amount": 12.5}  # a request field: not checkable
        rows.append(ServedRow(f"req{i}", t, {"user": user, "merchant": "m0"}, features))
    _write_predictions(tmp_path, rows)
    return tmp_path, rows


def test_served_values_from_the_oracle_match_the_batch_path_100_percent(store: tuple[Path, list[ServedRow]]) -> None:
    data_dir, _ = store
    repo = load_repo(CARD_FRAUD)
    rows = load_served(find_prediction_log(data_dir), sample=1000)
    assert len(rows) == 40
    report = check(repo, rows, make_recompute(repo, data_dir))
    assert report.skipped == ["amount"]
    assert set(report.features) == {"user_spend:txn_count_5m", "user_spend:amount_sum_1h", "user_last_txn:amount"}
    assert report.compared == 120
    assert report.rate == 1.0, report.to_dict()
    assert report.passed(1.0)


def test_a_wrong_served_value_is_reported_with_its_example(store: tuple[Path, list[ServedRow]]) -> None:
    data_dir, rows = store
    bad = rows[7]
    wrong = dict(bad.features, user_spend__txn_count_5m=bad.features["user_spend__txn_count_5m"] + 1)
    rows[7] = ServedRow(bad.request_id, bad.served_at, bad.entity_keys, wrong)
    _write_predictions(data_dir, rows)
    repo = load_repo(CARD_FRAUD)
    report = check(repo, load_served(find_prediction_log(data_dir), sample=1000), make_recompute(repo, data_dir))
    result = report.features["user_spend:txn_count_5m"]
    assert (result.compared, result.matched) == (40, 39)
    assert [m.request_id for m in result.examples] == [bad.request_id]
    assert result.examples[0].served == result.examples[0].recomputed + 1
    assert report.features["user_spend:amount_sum_1h"].rate == 1.0
    assert not report.passed(1.0)
    assert report.passed(0.9)


def test_sampling_is_reproducible_and_bounded(store: tuple[Path, list[ServedRow]]) -> None:
    data_dir, _ = store
    glob = find_prediction_log(data_dir)
    first = load_served(glob, sample=10, seed=1)
    assert len(first) == 10
    assert first == load_served(glob, sample=10, seed=1)


def test_no_prediction_log_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FeatureStoreError, match="no prediction log"):
        find_prediction_log(tmp_path)


def test_cli_exits_1_below_the_threshold_and_0_at_it(store: tuple[Path, list[ServedRow]], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from feature_store.registry import Registry
    from featurestream.cli import app

    data_dir, rows = store
    registry = tmp_path / "registry.db"
    Registry(registry).apply(load_repo(CARD_FRAUD), applied_by="test")
    monkeypatch.setenv("FEATURESTREAM_DATA_DIR", str(data_dir))
    monkeypatch.setenv("FEATURESTREAM_REGISTRY", str(registry))
    runner = CliRunner()
    ok = runner.invoke(app, ["consistency", "--json"])
    assert ok.exit_code == 0, ok.output
    assert orjson.loads(ok.stdout)["rate"] == 1.0

    bad = rows[0]
    rows[0] = ServedRow(bad.request_id, bad.served_at, bad.entity_keys,
                        dict(bad.features, **{"user_last_txn:amount": -1.0}))  # row 0 uses refs
    _write_predictions(data_dir, rows)
    failed = runner.invoke(app, ["consistency"])
    assert failed.exit_code != 0
    assert "user_last_txn:amount" in failed.output
    lenient = runner.invoke(app, ["consistency", "--threshold", "0.9"])
    assert lenient.exit_code == 0, lenient.output


def test_records_the_worker_refused_are_not_sampled(tmp_path: Path) -> None:
    """A prediction log written by the worker carries `__status`; invalid records are skipped."""
    path = tmp_path / "log" / "prediction_log" / "date=2026-01-01" / "p0-0-2.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({
        "request_id": ["a", "b", None], "served_at": [T0, T0 + 1, None],
        "entity_keys": ['{"user": "u1"}', '{"user": "u2"}', None], "features": ['{"x": 1}', '{"x": 2}', None],
        "fallback": [False, False, None], "__status": ["applied", "late", "invalid"],
    }), path)
    rows = load_served(find_prediction_log(tmp_path), sample=10)
    assert [r.request_id for r in rows] == ["a", "b"]


def test_the_worker_logs_the_prediction_log_as_a_source_without_views() -> None:
    from feature_store.consistency import PREDICTION_LOG_SOURCE, with_prediction_log

    repo = load_repo(CARD_FRAUD)
    logged = with_prediction_log(repo, partitions=3)
    source = logged.sources[PREDICTION_LOG_SOURCE]
    assert (source.topic, source.partitions, source.event_time) == ("_predictions", 3, "served_at")  # type: ignore[union-attr]
    assert logged.views == repo.views
    assert logged.services == repo.services
    assert with_prediction_log(logged, partitions=3) is logged
