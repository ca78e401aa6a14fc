"""Training: batch fits with an acceptance gate, online learners, run records, four-eyes promotion."""

from __future__ import annotations

from feature_store.training.approval import Approvals, PromotionRequest
from feature_store.training.batch import TrainingResult, flavor_of, train_model
from feature_store.training.gate import AcceptanceGate, Check, GateDecision
from feature_store.training.metrics import evaluate, roc_auc
from feature_store.training.online import OnlineLearner
from feature_store.training.runs import RunStore, TrainingRun, code_version

__all__ = [
    "AcceptanceGate",
    "Approvals",
    "Check",
    "GateDecision",
    "OnlineLearner",
    "PromotionRequest",
    "RunStore",
    "TrainingResult",
    "TrainingRun",
    "code_version",
    "evaluate",
    "flavor_of",
    "roc_auc",
    "train_model",
]
