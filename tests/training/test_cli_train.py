"""`featurestream train` and `featurestream runs list|compare` from the command line."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from feature_store.models import ModelRegistry
from feature_store.training import RunStore
from featurestream.cli import app
from tests.training.data import fraud_table


def test_train_registers_then_rejects_then_lists_and_compares(tmp_path: Path) -> None:
    data = tmp_path / "ts.parquet"
    pq.write_table(fraud_table(1500, seed=2), data)
    where = ["--registry", str(tmp_path / "registry.db"), "--data-dir", str(tmp_path / "data")]
    runner = CliRunner()
    ok = runner.invoke(app, ["train", "--model", "fraud", "--label", "label", "--baseline", "foreign",
                             "--training-set", str(data), "--check", "roc_auc>=0.7", "--param", "note=first",
                             "--online", *where])
    assert ok.exit_code == 0, ok.output
    assert "registered fraud version 1" in ok.output
    registry = ModelRegistry(tmp_path / "models.sqlite", tmp_path / "data" / "models" / "artifacts")
    version = registry.get("fraud", 1)
    assert version.params["online"] is True
    assert version.params["note"] == "first"
    assert version.training_set_ref == str(data)

    rejected = runner.invoke(app, ["train", "--model", "fraud", "--label", "label", "--baseline", "ratio",
                                   "--training-set", str(data), "--feature", "foreign", *where])
    assert rejected.exit_code == 2, rejected.output
    assert "rejected:" in rejected.output
    assert [v.version for v in registry.list("fraud")] == [1]  # never registered, never served

    runs = RunStore(tmp_path / "runs.sqlite").list("fraud")
    assert [r.status for r in runs] == ["rejected", "accepted"]
    listed = runner.invoke(app, ["runs", "list", "--model", "fraud", *where])
    assert listed.exit_code == 0, listed.output
    assert runs[0].run_id in listed.output
    assert runs[1].run_id in listed.output
    compared = runner.invoke(app, ["runs", "compare", runs[0].run_id, runs[1].run_id, *where])
    assert compared.exit_code == 0, compared.output
    assert "metric.roc_auc" in compared.output
    assert "rejected" in compared.output


def test_train_usage_errors_exit_nonzero(tmp_path: Path) -> None:
    runner = CliRunner()
    both = runner.invoke(app, ["train", "--model", "m", "--label", "y", "--baseline", "1",
                               "--registry", str(tmp_path / "r.db")])
    assert both.exit_code != 0
    assert "--training-set" in str(both.exception) or "--training-set" in both.output
    bad_check = runner.invoke(app, ["train", "--model", "m", "--label", "y", "--baseline", "1", "--training-set",
                                    str(tmp_path / "x.parquet"), "--check", "auc=1", "--registry",
                                    str(tmp_path / "r.db")])
    assert bad_check.exit_code != 0


def test_train_from_entities_and_a_feature_service(tmp_path: Path) -> None:
    """The point-in-time join path: entity rows + service -> training set -> gate -> registered with lineage."""
    import pyarrow as pa

    from feature_store.monitoring import load_profiles, profiles_path
    from tests.feature_store.test_training_set_cli import REPO_FILE, _card_data

    _, _, rows = _card_data(tmp_path / "data")
    amounts = rows.column("amount").to_pylist()
    middle = sorted(amounts)[len(amounts) // 2]
    rows = rows.append_column("label", pa.array([1.0 if a > middle else 0.0 for a in amounts]))
    pq.write_table(rows, tmp_path / "rows.parquet")
    where = ["--registry", str(tmp_path / "registry.db"), "--data-dir", str(tmp_path / "data")]
    result = CliRunner().invoke(app, ["train", "--model", "spend", "--label", "label", "--baseline", "0.5",
                                      "--entities", str(tmp_path / "rows.parquet"), "--service", "fraud_detection",
                                      "--repo", str(REPO_FILE), "--holdout", "0.3", *where])
    assert result.exit_code == 0, result.output
    run = RunStore(tmp_path / "runs.sqlite").list("spend")[0]
    assert run.feature_service == "fraud_detection"
    assert run.service_fingerprint
    assert run.data_refs["training_set"] == f"{tmp_path / 'rows.parquet'}#service=fraud_detection"
    assert "user_profile__age" in run.features  # joined from the service, as of each row's time
    version = ModelRegistry(tmp_path / "models.sqlite", tmp_path / "data" / "models" / "artifacts").get("spend", 1)
    assert version.feature_service == "fraud_detection"
    assert version.service_fingerprint == run.service_fingerprint
    assert "user_profile__age" in load_profiles(profiles_path(tmp_path / "data", "fraud_detection"))
