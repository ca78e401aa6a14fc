"""Fixtures of the training tests: a model registry and a run store under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from feature_store.models import ModelRegistry
from feature_store.training import RunStore


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models.sqlite", tmp_path / "artifacts")


@pytest.fixture
def runs(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "runs.sqlite")
