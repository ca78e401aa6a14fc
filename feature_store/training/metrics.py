"""Holdout metrics, computed the same way for every model and baseline.

Binary tasks score probabilities of the positive class against 0/1 labels:
`roc_auc` (ties count one half), `log_loss` (probabilities clipped to
[1e-15, 1 - 1e-15]), `accuracy` (threshold 0.5 inclusive: p >= 0.5 is positive)
and `brier`. Regression: `mae`, `rmse`. Rows whose score is None are scored
as the `missing` value (0.5 / 0.0) so a model cannot win by abstaining.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

__all__ = ["HIGHER_IS_BETTER", "Task", "evaluate", "roc_auc"]

Task = Literal["binary", "regression"]
HIGHER_IS_BETTER = {"roc_auc": True, "accuracy": True, "log_loss": False, "brier": False, "mae": False,
                    "rmse": False}
_CLIP = 1e-15


def roc_auc(labels: Sequence[float], scores: Sequence[float]) -> float:
    """P(score of a random positive > score of a random negative), ties 1/2; 0.5 when a class is absent."""
    pairs = sorted(zip(scores, labels, strict=True))
    positives = sum(1 for _, y in pairs if y >= 0.5)
    negatives = len(pairs) - positives
    if positives == 0 or negatives == 0:
        return 0.5
    rank_sum = 0.0
    i = 0
    while i < len(pairs):  # average ranks over ties
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        mean_rank = (i + 1 + j) / 2
        rank_sum += mean_rank * sum(1 for _, y in pairs[i:j] if y >= 0.5)
        i = j
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def evaluate(labels: Sequence[float], scores: Sequence[float | None], task: Task = "binary") -> dict[str, float]:
    """The metrics of `task` for `scores` against `labels` (same length, at least one row)."""
    if len(labels) != len(scores) or not labels:
        raise ValueError(f"evaluate needs as many scores as labels, at least one ({len(scores)} vs {len(labels)})")
    missing = 0.5 if task == "binary" else 0.0
    s = [missing if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in scores]
    y = [float(v) for v in labels]
    n = len(y)
    if task == "regression":
        return {"mae": sum(abs(a - b) for a, b in zip(y, s, strict=True)) / n,
                "rmse": math.sqrt(sum((a - b) ** 2 for a, b in zip(y, s, strict=True)) / n), "rows": float(n)}
    yb = [1.0 if v >= 0.5 else 0.0 for v in y]
    clipped = [min(max(p, _CLIP), 1 - _CLIP) for p in s]
    return {
        "roc_auc": roc_auc(yb, s),
        "log_loss": -sum(a * math.log(p) + (1 - a) * math.log(1 - p) for a, p in zip(yb, clipped, strict=True)) / n,
        "accuracy": sum(1 for a, p in zip(yb, s, strict=True) if (p >= 0.5) == (a == 1.0)) / n,
        "brier": sum((a - p) ** 2 for a, p in zip(yb, s, strict=True)) / n,
        "rows": float(n),
    }
