"""The card-fraud example end to end through `FeatureStore` and the CLI: a service's training set.

Transactions go into the event log (as the stream path writes it), profiles
into their BatchSource folder; the service's training set has every
feature plus the derived `amount_ratio`, and its values match the oracle.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from feature_store.examples.card_fraud import features as card
from feature_store.examples.card_fraud.data import TransactionGenerator, profiles_table
from feature_store.repo import load_repo
from feature_store.settings import load_settings
from feature_store.store import FeatureStore
from featurestream.cli import app
from tests.feature_store.offline_cases import logged_transactions
from tests.oracle import Event, close, feature_values

REPO_FILE = Path(card.__file__)


def _card_data(data_dir: Path) -> tuple[list[Event], list[Event], pa.Table]:
    """300 transactions in the log (ingested 0.5 s after they happen) and profile snapshots; entity rows."""
    gen = TransactionGenerator(users=30, merchants=8, spacing_ms=60_000)
    events = logged_transactions(data_dir, gen, 300)
    profiles = profiles_table(30, start_ms=gen.start_ms - 40 * 86_400_000)
    (data_dir / "sources" / "profiles").mkdir(parents=True)
    pq.write_table(profiles, data_dir / "sources" / "profiles" / "part-0.parquet")
    profile_events = [Event(entity=r["user_id"], event_time=r["updated_at"], values=r, ingest_time=r["updated_at"],
                            tie=r["updated_at"], seq=i) for i, r in enumerate(profiles.to_pylist())]
    picks = events[::7]
    rows = pa.table({
        "user_id": [e.values["user_id"] for e in picks] + ["u_nobody"],
        "merchant_id": [e.values["merchant_id"] for e in picks] + ["m0"],
        "event_timestamp": [e.event_time for e in picks] + [picks[-1].event_time],
        "amount": [e.values["amount"] for e in picks] + [10.0],
    })
    return events, profile_events, rows


def _expected(events: list[Event], profiles: list[Event], row: dict[str, Any]) -> dict[str, Any]:
    t, user, merchant = row["event_timestamp"], row["user_id"], row["merchant_id"]
    usd = {"EUR": 1.08, "GBP": 1.27}
    spend = [Event(**{**e.__dict__, "values": {**e.values,
                                               "amount_usd": e.values["amount"] * usd.get(e.values["currency"], 1.0),
                                               "is_foreign": int(e.values["country"] != "US")}}) for e in events]
    by_merchant = [Event(**{**e.__dict__, "entity": e.values["merchant_id"]}) for e in events]
    out = {f"user_spend__{k}": v for k, v in feature_values(card.user_spend, spend, user, t).items()}
    out |= {f"merchant_activity__{k}": v for k, v in feature_values(card.merchant_activity, by_merchant, merchant,
                                                                    t).items()}
    out["user_last_txn__country"] = feature_values(card.user_last_txn, events, user, t)["country"]
    profile = feature_values(card.user_profile, profiles, user, t)
    out["user_profile__age"], out["user_profile__credit_limit"] = profile["age"], profile["credit_limit"]
    return out


def test_service_training_set_matches_oracle(tmp_path: Path) -> None:
    events, profiles, rows = _card_data(tmp_path)
    store = FeatureStore(load_settings(data_dir=tmp_path, registry=tmp_path / "registry.db"), load_repo(REPO_FILE))
    table = store.get_training_set(rows, service="fraud_detection")
    assert table.column_names[:4] == ["user_id", "merchant_id", "event_timestamp", "amount"]
    assert "fraud_detection" not in table.column_names
    assert table.num_rows == rows.num_rows
    checked = 0
    for row in table.to_pylist():
        for name, value in _expected(events, profiles, row).items():
            if name in row:  # the service picks some features of merchant_activity only
                assert close(row[name], value), (name, row)
                checked += 1
        mean = row["user_spend__amount_mean_24h"]
        assert row["amount_ratio"] == pytest.approx(row["amount"] / (mean if mean is not None else row["amount"]))
    assert checked > 500
    assert table.to_pylist()[-1]["user_spend__txn_count_1h"] == 0  # the user without events


def test_cli_writes_the_same_parquet(tmp_path: Path) -> None:
    _, _, rows = _card_data(tmp_path)
    pq.write_table(rows, tmp_path / "rows.parquet")
    env = {"FEATURESTREAM_DATA_DIR": str(tmp_path), "FEATURESTREAM_REGISTRY": str(tmp_path / "registry.db")}
    result = CliRunner().invoke(app, ["training-set", "--entities", str(tmp_path / "rows.parquet"), "--service",
                                      "fraud_detection", "--out", str(tmp_path / "out.parquet"), "--repo",
                                      str(REPO_FILE)], env=env)
    assert result.exit_code == 0, result.output
    written = pq.read_table(tmp_path / "out.parquet")
    store = FeatureStore(load_settings(data_dir=tmp_path, registry=tmp_path / "registry.db"), load_repo(REPO_FILE))
    expected = store.get_training_set(tmp_path / "rows.parquet", service="fraud_detection")
    assert written.column_names == expected.column_names
    for got, want in zip(written.to_pylist(), expected.to_pylist(), strict=True):
        assert all(close(got[k], want[k]) or (isinstance(want[k], float) and math.isnan(want[k])) for k in want)


def test_cli_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    env = {"FEATURESTREAM_DATA_DIR": str(tmp_path), "FEATURESTREAM_REGISTRY": str(tmp_path / "registry.db"),
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([str(Path(sys.executable).parent / "featurestream"), "training-set", "--entities",
                           str(tmp_path / "missing.parquet"), "--service", "fraud_detection", "--out",
                           str(tmp_path / "o.parquet"), "--repo", str(REPO_FILE)],
                          capture_output=True, text=True, env=env, check=False, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: cannot read entity rows")
    assert len(lines) == 1
