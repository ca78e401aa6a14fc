"""`OnlineLearner`: a river model that learns from joined labels, with progressive validation.

Each `learn` first predicts, scores that prediction against the label, then
learns (predict-before-learn: every label is a holdout for the state before
it). Metrics are kept cumulative and over the last `window` labels (the
rolling figure is the one that shows recovery after concept drift).

The learner remembers the last label offset it learned per source partition
and skips anything at or below it, so replaying labels after a restore does
not learn them twice. It pickles whole (model, metrics, offsets) and also
answers `predict_proba_one`/`predict_one`, so a snapshot is a valid `river`
artifact for the model registry and serving can load it like any river model.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from feature_store.training.metrics import Task, evaluate

__all__ = ["OnlineLearner"]


def _numeric(x: Mapping[str, Any]) -> dict[str, float]:
    """The numeric inputs, booleans as 0/1 (river linear models take numbers; strings and nulls are left out)."""
    return {k: float(v) for k, v in x.items() if isinstance(v, int | float)}


class OnlineLearner:
    """A river estimator plus progressive metrics, lineage offsets and snapshot bookkeeping."""

    def __init__(self, model_name: str, model: Any, *, task: Task = "binary", window: int = 500,
                 snapshot_every: int = 1000, history_every: int = 100) -> None:
        self.model_name = model_name
        self.model = model
        self.task: Task = task
        self.window = window
        self.snapshot_every = snapshot_every
        self.history_every = history_every
        self.labels_seen = 0
        self.since_snapshot = 0
        self.base_version: int | None = None  # registry version this state was last snapshotted as
        self.recent: deque[tuple[float, float]] = deque(maxlen=window)  # (label, prediction before learning)
        self._loss_sum = 0.0
        self._hits = 0
        self.offsets: dict[str, int] = {}  # "topic:partition" -> last offset learned
        self.snapshot_offsets: dict[str, list[int]] = {}  # "topic:partition" -> [first, last] since last snapshot
        self.event_range: list[int] | None = None  # [min, max] label event_time since last snapshot
        self.history: deque[tuple[int, float]] = deque(maxlen=1000)  # (labels_seen, rolling primary metric)
        self.baseline_recent: deque[tuple[float, float]] = deque(maxlen=window)  # (label, baseline's score)

    # -- the river interface, so a snapshot artifact predicts like its model
    def predict_proba_one(self, x: Mapping[str, Any]) -> dict[Any, float]:
        return dict(self.model.predict_proba_one(_numeric(x)))

    def predict_one(self, x: Mapping[str, Any]) -> Any:
        return self.model.predict_one(_numeric(x))

    def score(self, x: Mapping[str, Any]) -> float:
        """Probability of the positive class (binary) or the predicted value (regression)."""
        clean = _numeric(x)
        if self.task == "binary":
            probs = self.model.predict_proba_one(clean)
            return float(probs.get(True, probs.get(1, 0.5))) if probs else 0.5
        value = self.model.predict_one(clean)
        return float(value) if value is not None else 0.0

    # -- learning
    def learn_one(self, x: Mapping[str, Any], y: Any) -> None:
        """river's API, so `train_model` can pre-train a learner in batch before it goes online."""
        self.learn(x, float(y))

    def learn(self, x: Mapping[str, Any], label: float, *, source: str = "", offset: int | None = None,
              event_time: int | None = None, baseline: float | None = None) -> float | None:
        """Predict, score, learn one pair; None (nothing learned) when `offset` of `source` was learned before.

        `baseline` is the declared baseline's score for the same input: kept over the same window, so a
        snapshot can be gated against the baseline on exactly the labels the learner was judged on.
        """
        if offset is not None and source:
            if offset <= self.offsets.get(source, -1):
                return None
            self.offsets[source] = offset
            span = self.snapshot_offsets.setdefault(source, [offset, offset])
            span[0], span[1] = min(span[0], offset), max(span[1], offset)
        if event_time is not None:
            self.event_range = ([min(self.event_range[0], event_time), max(self.event_range[1], event_time)]
                                if self.event_range else [event_time, event_time])
        clean = _numeric(x)
        prediction = self.score(clean)
        y = float(label)
        self.recent.append((y, prediction))
        if baseline is not None:
            self.baseline_recent.append((y, float(baseline)))
        if self.task == "binary":
            p = min(max(prediction, 1e-15), 1 - 1e-15)
            self._loss_sum -= math.log(p) if y >= 0.5 else math.log(1 - p)
            self._hits += int((prediction >= 0.5) == (y >= 0.5))
            self.model.learn_one(clean, y >= 0.5)
        else:
            self._loss_sum += abs(y - prediction)
            self.model.learn_one(clean, y)
        self.labels_seen += 1
        self.since_snapshot += 1
        if self.labels_seen % self.history_every == 0:
            self.history.append((self.labels_seen, self.rolling_metrics()[self.primary]))
        return prediction

    @property
    def primary(self) -> str:
        return "accuracy" if self.task == "binary" else "mae"

    def rolling_metrics(self) -> dict[str, float]:
        if not self.recent:
            return {}
        labels, scores = zip(*self.recent, strict=True)
        return evaluate(list(labels), list(scores), self.task)

    def baseline_metrics(self) -> dict[str, float]:
        """The baseline's metrics over the labels of the current window that it scored."""
        if not self.baseline_recent:
            return {}
        labels, scores = zip(*self.baseline_recent, strict=True)
        return evaluate(list(labels), list(scores), self.task)

    def metrics(self) -> dict[str, float]:
        """Progressive metrics: cumulative since the model was created, and `rolling_*` over the last window."""
        n = max(self.labels_seen, 1)
        out = {"labels": float(self.labels_seen)}
        if self.task == "binary":
            out |= {"progressive_log_loss": self._loss_sum / n, "progressive_accuracy": self._hits / n}
        else:
            out |= {"progressive_mae": self._loss_sum / n}
        out |= {f"rolling_{k}": v for k, v in self.rolling_metrics().items() if k != "rows"}
        return out

    # -- snapshots
    @property
    def snapshot_due(self) -> bool:
        return self.since_snapshot >= self.snapshot_every

    def lineage(self) -> dict[str, Any]:
        """What the labels since the last snapshot were: offsets per partition and event-time range."""
        return {"label_offsets": {k: list(v) for k, v in sorted(self.snapshot_offsets.items())},
                "last_offsets": dict(sorted(self.offsets.items())), "labels_seen": self.labels_seen,
                "event_range": list(self.event_range) if self.event_range else None,
                "parent_version": self.base_version}

    def mark_snapshot(self, version: int) -> None:
        """Called once the snapshot is registered as `version`: start the next lineage span."""
        self.base_version = version
        self.since_snapshot = 0
        self.snapshot_offsets = {}
        self.event_range = None
