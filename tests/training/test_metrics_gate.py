"""Holdout metrics against brute-force oracles, and the acceptance gate's decisions."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feature_store.errors import DefinitionError
from feature_store.training import AcceptanceGate, Check, evaluate, roc_auc

scores = st.floats(0, 1).map(lambda v: round(v, 2))  # rounding makes ties common


def auc_oracle(labels: list[float], s: list[float]) -> float:
    pos = [p for p, y in zip(s, labels, strict=True) if y >= 0.5]
    neg = [p for p, y in zip(s, labels, strict=True) if y < 0.5]
    if not pos or not neg:
        return 0.5
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@given(st.lists(st.tuples(st.sampled_from([0.0, 1.0]), scores), min_size=1, max_size=80))
def test_roc_auc_matches_pairwise_oracle(rows: list[tuple[float, float]]) -> None:
    labels, s = [r[0] for r in rows], [r[1] for r in rows]
    assert roc_auc(labels, s) == pytest.approx(auc_oracle(labels, s))


@given(st.lists(st.tuples(st.sampled_from([0.0, 1.0]), st.one_of(st.none(), scores)), min_size=1, max_size=50))
def test_binary_metrics_match_definitions(rows: list[tuple[float, float | None]]) -> None:
    labels = [r[0] for r in rows]
    s = [0.5 if r[1] is None else r[1] for r in rows]
    got = evaluate(labels, [r[1] for r in rows])
    n = len(rows)
    clip = [min(max(p, 1e-15), 1 - 1e-15) for p in s]
    assert got["accuracy"] == pytest.approx(sum((p >= 0.5) == (y == 1) for y, p in zip(labels, s, strict=True)) / n)
    assert got["brier"] == pytest.approx(sum((y - p) ** 2 for y, p in zip(labels, s, strict=True)) / n)
    want_ll = -sum(math.log(p) if y else math.log(1 - p) for y, p in zip(labels, clip, strict=True)) / n
    assert got["log_loss"] == pytest.approx(want_ll)
    assert got["rows"] == n


def test_regression_metrics_and_length_mismatch() -> None:
    got = evaluate([1.0, 3.0], [2.0, None], "regression")
    assert got["mae"] == pytest.approx(2.0)
    assert got["rmse"] == pytest.approx(math.sqrt(5.0))
    with pytest.raises(ValueError, match="as many"):
        evaluate([1.0], [1.0, 2.0])


def test_gate_needs_to_beat_the_baseline_then_pass_checks() -> None:
    gate = AcceptanceGate(primary="roc_auc", min_improvement=0.01,
                          checks=(Check(metric="log_loss", op="<=", value=0.6),))
    base = {"roc_auc": 0.70, "log_loss": 0.65}
    tie = gate.decide({"roc_auc": 0.705, "log_loss": 0.5}, base)
    assert not tie.accepted
    assert "does not beat" in tie.reason
    failing = gate.decide({"roc_auc": 0.8, "log_loss": 0.61}, base)
    assert not failing.accepted
    assert "log_loss <= 0.6" in failing.reason
    ok = gate.decide({"roc_auc": 0.8, "log_loss": 0.5}, base)
    assert ok.accepted
    assert ok.to_dict()["baseline_metrics"] == base


def test_gate_lower_is_better_and_missing_metric() -> None:
    gate = AcceptanceGate(primary="mae")
    assert gate.decide({"mae": 1.0}, {"mae": 2.0}).accepted
    assert not gate.decide({"mae": 2.0}, {"mae": 1.0}).accepted
    assert "missing" in gate.decide({}, {"mae": 1.0}).reason


def test_gate_refuses_unknown_metric_and_op() -> None:
    with pytest.raises(DefinitionError, match="gate metric"):
        AcceptanceGate(primary="f1")
    with pytest.raises(DefinitionError, match="op"):
        Check(metric="roc_auc", op="==", value=1.0)  # type: ignore[arg-type]
