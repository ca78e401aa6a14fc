"""`featurestream models ...` and `featurestream score` through the CLI."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from feature_store.examples.card_fraud import features as card
from feature_store.examples.card_fraud.data import TransactionGenerator
from feature_store.models import ModelRegistry
from feature_store.repo import load_repo
from feature_store.settings import load_settings
from feature_store.store import FeatureStore
from featurestream.cli import app
from tests.feature_store.offline_cases import logged_transactions

REPO_FILE = Path(card.__file__)


class Doubler:
    """scikit-learn style: predict on a 2-D list."""

    def predict(self, x: list[list[Any]]) -> list[float]:
        return [2.0 * (row[0] or 0.0) for row in x]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"FEATURESTREAM_DATA_DIR": str(tmp_path / "data"), "FEATURESTREAM_REGISTRY": str(tmp_path / "reg.db")}


def _run(env: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(app, list(args), env=env)
    return result


def test_models_lifecycle(env: dict[str, str], tmp_path: Path) -> None:
    artifact = tmp_path / "model.pkl"
    artifact.write_bytes(pickle.dumps(Doubler()))
    first = _run(env, "models", "register", "fraud", "--flavor", "sklearn", "--artifact", str(artifact),
                 "--feature", "amount", "--metrics", '{"auc": 0.81}', "--fallback", "0.5")
    assert first.exit_code == 0, first.output
    assert "registered fraud version 1" in first.output
    second = _run(env, "models", "register", "fraud", "--flavor", "rule", "--expression", "amount / 100")
    assert "version 2" in second.output
    assert _run(env, "models", "promote", "fraud", "1").exit_code == 0
    assert "version 2 is now production" in _run(env, "models", "promote", "fraud", "2", "--reason", "better").output
    assert "production is version 1 again" in _run(env, "models", "rollback", "fraud", "--reason", "oops").output
    listing = _run(env, "models", "list").output
    assert "fraud" in listing
    assert "auc=0.81" in listing
    shown = orjson.loads(_run(env, "models", "show", "fraud").output)
    assert [v["stage"] for v in shown["versions"]] == ["production", "archived"]
    assert shown["audit"][-1]["action"] == "restore"
    assert orjson.loads(_run(env, "models", "show", "fraud", "--version", "2").output)["flavor"] == "rule"


def test_models_errors_are_one_line(env: dict[str, str], tmp_path: Path) -> None:
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "from featurestream.cli import main; main()", *args],
                              env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)

    missing = cli("models", "promote", "ghost", "1")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: unknown model 'ghost' (models: none registered)"
    bad = cli("models", "register", "m", "--flavor", "rule", "--expression", "amount >")
    assert bad.returncode == 1
    assert "not valid syntax" in bad.stderr
    neither = cli("models", "register", "m", "--flavor", "rule")
    assert neither.returncode == 1
    assert "--artifact FILE" in neither.stderr


def test_score_writes_point_in_time_predictions(env: dict[str, str], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    gen = TransactionGenerator(users=10, merchants=4, spacing_ms=60_000)
    events = logged_transactions(data_dir, gen, 120)
    picks = events[::6]
    rows = pa.table({"user_id": [e.values["user_id"] for e in picks],
                     "merchant_id": [e.values["merchant_id"] for e in picks],
                     "event_timestamp": [e.event_time for e in picks],
                     "amount": [e.values["amount"] for e in picks]})
    pq.write_table(rows, tmp_path / "rows.parquet")
    settings = load_settings(data_dir=data_dir, registry=tmp_path / "reg.db")
    models = ModelRegistry.from_settings(settings)
    models.register("ratio", "if_(amount_ratio > 2, 1, amount_ratio / 2)", flavor="rule",
                    feature_service="fraud_detection")
    models.promote("ratio", 1, "production")
    result = _run(env, "score", "--model", "ratio", "--entities", str(tmp_path / "rows.parquet"),
                  "--out", str(tmp_path / "scores.parquet"), "--repo", str(REPO_FILE))
    assert result.exit_code == 0, result.output
    scored = pq.read_table(tmp_path / "scores.parquet").to_pylist()
    expected = FeatureStore(settings, load_repo(REPO_FILE)).get_training_set(
        tmp_path / "rows.parquet", service="fraud_detection").to_pylist()
    assert len(scored) == len(expected) == len(picks)
    for got, want in zip(scored, expected, strict=True):
        ratio = want["amount_ratio"]
        assert got["model_version"] == 1
        assert got["fallback"] is False
        assert math.isclose(got["prediction"], 1.0 if ratio > 2 else ratio / 2, rel_tol=1e-9)
