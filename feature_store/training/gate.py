"""The acceptance gate: a new version becomes a candidate only if it beats the baseline on a holdout.

The baseline is declared with the model (a rule expression or a simple
model) and scored on the same holdout rows. The gate compares one primary
metric (`min_improvement` beyond the baseline, in the metric's good
direction) and then every declared `Check` (absolute bounds, e.g.
`roc_auc >= 0.7`). The first failure is the reason; a rejected version is
recorded with it and never served.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from feature_store.errors import DefinitionError
from feature_store.training.metrics import HIGHER_IS_BETTER

__all__ = ["AcceptanceGate", "Check", "GateDecision"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
}


@dataclass(frozen=True, kw_only=True)
class Check:
    """`metric op value` must hold on the holdout, e.g. `Check(metric="roc_auc", op=">=", value=0.7)`."""

    metric: str
    op: Literal[">=", ">", "<=", "<"]
    value: float

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise DefinitionError(f"check on {self.metric!r}: op {self.op!r} is unknown; use >=, >, <= or <")

    def holds(self, metrics: Mapping[str, float]) -> bool:
        return self.metric in metrics and _OPS[self.op](metrics[self.metric], self.value)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value}"


@dataclass(frozen=True, kw_only=True)
class GateDecision:
    """Accepted or not, why, and the metrics both sides had on the holdout."""

    accepted: bool
    reason: str
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "reason": self.reason, "metrics": self.metrics,
                "baseline_metrics": self.baseline_metrics}


@dataclass(frozen=True, kw_only=True)
class AcceptanceGate:
    """Primary metric vs the baseline, then absolute checks."""

    primary: str = "roc_auc"
    min_improvement: float = 0.0  # strictly more than this beyond the baseline, in the good direction
    checks: tuple[Check, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.primary not in HIGHER_IS_BETTER:
            raise DefinitionError(f"gate metric {self.primary!r} is unknown; use one of {sorted(HIGHER_IS_BETTER)}")

    def decide(self, metrics: Mapping[str, float], baseline_metrics: Mapping[str, float]) -> GateDecision:
        m, b = dict(metrics), dict(baseline_metrics)
        ours, theirs = m.get(self.primary), b.get(self.primary)
        if ours is None or theirs is None:
            return GateDecision(accepted=False, reason=f"{self.primary} missing from the holdout metrics",
                                metrics=m, baseline_metrics=b)
        gain = ours - theirs if HIGHER_IS_BETTER[self.primary] else theirs - ours
        if not gain > self.min_improvement:
            return GateDecision(
                accepted=False, metrics=m, baseline_metrics=b,
                reason=f"{self.primary} {ours:.4f} does not beat the baseline's {theirs:.4f} "
                       f"by more than {self.min_improvement}",
            )
        for check in self.checks:
            if not check.holds(m):
                return GateDecision(accepted=False, metrics=m, baseline_metrics=b,
                                    reason=f"check failed: {check} (got {m.get(check.metric)})")
        return GateDecision(accepted=True, metrics=m, baseline_metrics=b,
                            reason=f"{self.primary} {ours:.4f} beats the baseline's {theirs:.4f}"
                                   + (f" and passes {', '.join(map(str, self.checks))}" if self.checks else ""))
