"""`featurestream init` and `featurestream apply`: scaffold, plan, apply, refuse - through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feature_store.errors import DefinitionError, SchemaError
from feature_store.registry import Registry
from feature_store.repo import load_repo
from featurestream.cli import app

runner = CliRunner()


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    """A fresh repo made by `featurestream init`."""
    result = runner.invoke(app, ["init", str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    return tmp_path / "repo"


def _edit(repo_dir: Path, old: str, new: str) -> None:
    features = repo_dir / "features.py"
    text = features.read_text()
    assert old in text
    features.write_text(text.replace(old, new))


def test_help_shows_the_env_var_behind_each_option() -> None:
    result = runner.invoke(app, ["apply", "--help"])
    assert result.exit_code == 0
    assert "FEATURESTREAM_REGISTRY" in result.output
    assert "--dry-run" in result.output
    assert runner.invoke(app, ["init", "--help"]).exit_code == 0


def test_init_scaffolds_a_repo_that_loads_and_never_overwrites(repo_dir: Path) -> None:
    assert (repo_dir / "README.md").read_text().startswith("# Feature repo")
    example = Path(__file__).resolve().parents[2] / "feature_store" / "examples" / "card_fraud"
    assert load_repo(repo_dir) == load_repo(example)
    (repo_dir / "features.py").write_text("# mine\n")
    again = runner.invoke(app, ["init", str(repo_dir)])
    assert again.exit_code == 1
    assert isinstance(again.exception, DefinitionError)
    assert "features.py' already exists; pick another folder" in str(again.exception)
    assert (repo_dir / "features.py").read_text() == "# mine\n"


def test_dry_run_prints_the_plan_and_changes_nothing(repo_dir: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry.db"
    result = runner.invoke(app, ["apply", str(repo_dir), "--dry-run"], env={"FEATURESTREAM_REGISTRY": str(registry)})
    assert result.exit_code == 0, result.output
    assert "Plan: 9 to add, 0 to change, 0 to remove" in result.output
    assert "+ │ view" in result.output
    assert "user_spend" in result.output
    assert "Dry run" in result.output
    assert Registry(registry).generation() == 0


def test_apply_stores_the_repo_once(repo_dir: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry.db"
    result = runner.invoke(app, ["apply", str(repo_dir), "--registry", str(registry)], env={"USER": "dana"})
    assert result.exit_code == 0, result.output
    assert "Applied to" in result.output
    assert "9 added" in result.output
    assert Registry(registry).current() == load_repo(repo_dir)
    assert Registry(registry).history("view", "user_spend")[0].applied_by == "dana"
    again = runner.invoke(app, ["apply", str(repo_dir), "--registry", str(registry)])
    assert again.exit_code == 0
    assert "No changes" in again.output
    assert Registry(registry).generation() == 1


def test_a_breaking_change_is_marked_and_asks_first(repo_dir: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry.db"
    args = ["apply", str(repo_dir), "--registry", str(registry)]
    assert runner.invoke(app, args).exit_code == 0
    _edit(repo_dir, 'window="5m", name="txn_count_5m"', 'window="10m", name="txn_count_5m"')
    _edit(repo_dir, 'description="A card holder"', 'description="A person holding cards"')

    declined = runner.invoke(app, args, input="n\n")
    assert declined.exit_code == 1
    assert "BREAKING" in declined.output
    assert "~ │ view" in declined.output
    assert "featurestream materialize" in declined.output
    assert Registry(registry).version_of("user_spend") == 1

    accepted = runner.invoke(app, args, input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert "1 breaking" in accepted.output
    assert Registry(registry).version_of("user_spend") == 2
    assert [r.version for r in Registry(registry).history("entity", "user")] == [1, 2]


def test_a_bad_repo_exits_non_zero_with_one_line_and_changes_nothing(repo_dir: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry.db"
    assert runner.invoke(app, ["apply", str(repo_dir), "--registry", str(registry)]).exit_code == 0
    _edit(repo_dir, 'window="1h", name="amount_sum_1h"', 'window="1h", hop="7m", name="amount_sum_1h"')
    script = Path(sys.executable).with_name("featurestream")
    command = [str(script)] if script.exists() else [sys.executable, "-c", "from featurestream.cli import main; main()"]
    done = subprocess.run([*command, "apply", str(repo_dir), "--registry", str(registry), "--yes"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    assert "window 1h is not a multiple of hop 7m; pick a hop that divides the window" in lines[0]
    assert Registry(registry).generation() == 1


def test_an_incompatible_schema_change_is_refused(repo_dir: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry.db"
    args = ["apply", str(repo_dir), "--registry", str(registry), "--yes"]
    assert runner.invoke(app, args).exit_code == 0
    # v2 makes `country` an int: user_last_txn reads it, and user_spend through its transform
    _edit(repo_dir, '"country": Field("string")', '"country": Field("int")')
    header = 'name="transactions",\n    version={},'
    _edit(repo_dir, header.format(1), header.format(2))
    _edit(repo_dir, "\"is_foreign\": \"CASE WHEN country <> 'US' THEN 1 ELSE 0 END\"",
          "\"is_foreign\": \"CASE WHEN country <> 1 THEN 1 ELSE 0 END\"")
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1
    assert isinstance(refused.exception, SchemaError)
    message = str(refused.exception)
    assert "country: type changes from string to int, but features use it:" in message
    assert "user_last_txn:country" in message
    assert "user_spend:foreign_count_24h" in message
    assert Registry(registry).generation() == 1
