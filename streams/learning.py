"""Online learning and shadow scoring in the stream worker.

A model is *online* when a registered version of it is a river model with
`params["online"] = True` (register one with `train_model(..., params={"online": True})`
or over the API). `OnlineTrainer` restores the newest such version (a plain
river model, or an `OnlineLearner` snapshot with its metrics and offsets),
learns from every joined (features, label) pair with predict-before-learn
validation, and every `snapshot_every` labels registers the learner as a new
version (stage staging) with lineage (label offsets per partition, event-time
range, parent version) and records an `online_snapshot` run. After a restart
it resumes from the last snapshot: nothing beyond it is lost, and replayed
labels at or below the learned offsets are skipped.

`ShadowScorer` scores each logged prediction's features with the model's
challenger version (see `feature_store.training.approval`); the score is
stored with the prediction and judged when its label arrives, never returned
to the caller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from feature_store.errors import FeatureStoreError, UnknownFeatureError
from feature_store.models import LoadedModel, ModelRegistry, ModelVersion, load_model
from feature_store.training import AcceptanceGate, Approvals, OnlineLearner, RunStore, TrainingRun, code_version
from feature_store.training.live import LiveKeys

if TYPE_CHECKING:
    from streams.labels import JoinedLabel

__all__ = ["OnlineTrainer", "ShadowScorer"]

log = structlog.get_logger("featurestream.learning")


class OnlineTrainer:
    """Learners of the online models, restored from and snapshotted to the model registry."""

    def __init__(self, registry: ModelRegistry, runs: RunStore, redis: Any, keys: LiveKeys, *,
                 snapshot_every: int = 1000, publish_every: int = 50, refresh_s: float = 5.0,
                 retrain_after: int = 200) -> None:
        self.registry = registry
        self.runs = runs
        self.redis = redis
        self.keys = keys
        self.snapshot_every = snapshot_every
        self.publish_every = publish_every
        self.refresh_s = refresh_s
        self.retrain_after = retrain_after
        self.learners: dict[str, OnlineLearner] = {}
        self._bases: dict[str, ModelVersion] = {}
        self._baselines: dict[str, LoadedModel | None] = {}  # model -> its declared baseline (gate for snapshots)
        self._missing: dict[str, float] = {}  # model -> when we last found it not online
        self._reasons: dict[str, str] = {}  # model -> why the next snapshot is taken (e.g. a drift alert)

    def _restore(self, model: str) -> tuple[OnlineLearner, ModelVersion] | None:
        try:
            versions = [v for v in self.registry.list(model) if v.flavor == "river" and v.params.get("online")]
        except UnknownFeatureError:
            return None
        if not versions:
            return None
        latest = max(versions, key=lambda v: v.version)
        inner = getattr(self.registry.load(latest), "model", None)
        if isinstance(inner, OnlineLearner):
            learner = inner
        elif inner is not None and hasattr(inner, "learn_one"):
            learner = OnlineLearner(model, inner, snapshot_every=int(latest.params.get("snapshot_every",
                                                                                        self.snapshot_every)))
        else:
            return None
        learner.mark_snapshot(latest.version)
        log.info("learner_restored", model=model, version=latest.version, labels_seen=learner.labels_seen)
        return learner, latest

    async def learner(self, model: str) -> OnlineLearner | None:
        """The learner of `model`, restored on first use; None when the model is not online."""
        found = self.learners.get(model)
        if found is not None:
            return found
        if time.monotonic() - self._missing.get(model, -1e9) < self.refresh_s:
            return None
        restored = await asyncio.to_thread(self._restore, model)
        if restored is None:
            self._missing[model] = time.monotonic()
            return None
        self.learners[model], self._bases[model] = restored
        self._baselines[model] = await asyncio.to_thread(self._baseline, restored[1])
        return restored[0]

    def _baseline(self, base: ModelVersion) -> LoadedModel | None:
        """The baseline declared with the model (`params["baseline"]`, else its fallback): a rule or NAME@VERSION."""
        ref = base.params.get("baseline") or base.fallback
        if not isinstance(ref, str) or not ref:
            return None
        try:
            if "@" in ref:
                name, _, version = ref.partition("@")
                return self.registry.load(self.registry.get(name, int(version)))
            return load_model("rule", ref.encode())
        except (FeatureStoreError, ValueError) as exc:
            log.warning("baseline_unusable", model=base.name, baseline=ref, error=type(exc).__name__)
            return None

    async def on_joined(self, joined: JoinedLabel) -> float | None:
        """Learn one joined pair; returns the prediction made before learning (None: skipped or not online)."""
        learner = await self.learner(joined.model)
        if learner is None:
            return None
        baseline = self._baselines.get(joined.model)
        base_score = None
        if baseline is not None:
            try:
                base_score = baseline.predict([joined.features])[0]
            except Exception:  # a baseline failing on these inputs scores as "no answer"
                base_score = None
            base_score = (0.5 if learner.task == "binary" else 0.0) if base_score is None else base_score
        prediction = learner.learn(joined.features, joined.label, source=joined.source if joined.offset is not None
                                   else "", offset=joined.offset, event_time=joined.event_time, baseline=base_score)
        if prediction is None:
            return None
        if learner.labels_seen % self.publish_every == 0:
            await self.publish(joined.model)
        if learner.snapshot_due:
            await self.snapshot(joined.model)
        return prediction

    def request_snapshot(self, model: str, *, reason: str, after: int | None = None) -> None:
        """Take the next snapshot of `model` after `after` more labels (default `retrain_after`), to let it adapt."""
        learner = self.learners.get(model)
        if learner is None or model in self._reasons:
            return
        wait = self.retrain_after if after is None else after
        learner.since_snapshot = max(learner.since_snapshot, learner.snapshot_every - wait)
        self._reasons[model] = reason

    async def snapshot(self, model: str) -> ModelVersion | None:
        """Gate the learner against its baseline; register it as a new version with lineage; record the run.

        The gate compares the learner's progressive metrics with the baseline's on the same window of
        labels (predict-before-learn makes them holdout figures). A rejected snapshot is recorded with
        the reason and not registered, so it can never be served.
        """
        learner = self.learners[model]
        base = self._bases[model]
        started = time.time()
        lineage = learner.lineage()
        metrics = learner.metrics()
        reason = self._reasons.pop(model, f"every {learner.snapshot_every} labels")
        offsets = ",".join(f"{k}@{a}-{b}" for k, (a, b) in lineage["label_offsets"].items())
        event_range = lineage["event_range"]
        baseline_metrics = learner.baseline_metrics()
        if self._baselines.get(model) is not None and baseline_metrics:
            gate = AcceptanceGate(primary="roc_auc" if learner.task == "binary" else "mae")
            decision = gate.decide(learner.rolling_metrics(), baseline_metrics)
            if not decision.accepted:
                learner.since_snapshot = 0  # try again after another `snapshot_every` labels
                await asyncio.to_thread(self.runs.record, TrainingRun(
                    model=model, kind="online_snapshot", status="rejected", reason=f"{reason}; {decision.reason}",
                    params={"snapshot_every": learner.snapshot_every, "window": learner.window}, metrics=metrics,
                    baseline_metrics=baseline_metrics, feature_service=base.feature_service,
                    service_fingerprint=base.service_fingerprint, features=tuple(base.features),
                    data_refs={"label_offsets": lineage["label_offsets"], "parent_version": lineage["parent_version"]},
                    time_range=tuple(event_range) if event_range else None, code_version=code_version(),
                    started_at=int(started * 1000), duration_s=time.time() - started))
                log.info("learner_snapshot_rejected", model=model, reason=decision.reason)
                return None
            reason = f"{reason}; {decision.reason}"
        version = await asyncio.to_thread(
            self.registry.register, model, learner, flavor="river", feature_service=base.feature_service,
            service_fingerprint=base.service_fingerprint, features=base.features, metrics=metrics,
            training_set_ref=f"labels:{offsets}" if offsets else None,
            params={**dict(base.params), "online": True, "snapshot": True, "snapshot_every": learner.snapshot_every,
                    **lineage},
            data_range=tuple(event_range) if event_range else None, fallback=base.fallback,
            description=f"online snapshot of {model} after {learner.labels_seen} labels ({reason})",
            actor="online-learner")
        learner.mark_snapshot(version.version)
        self._bases[model] = version
        await asyncio.to_thread(self.runs.record, TrainingRun(
            model=model, kind="online_snapshot", status="accepted" if baseline_metrics else "recorded", reason=reason,
            params={"snapshot_every": learner.snapshot_every, "window": learner.window}, metrics=metrics,
            baseline_metrics=baseline_metrics,
            feature_service=base.feature_service, service_fingerprint=base.service_fingerprint,
            features=tuple(base.features), data_refs={"label_offsets": lineage["label_offsets"],
                                                      "parent_version": lineage["parent_version"]},
            time_range=tuple(event_range) if event_range else None, model_version=version.version,
            code_version=code_version(), started_at=int(started * 1000), duration_s=time.time() - started))
        await self.publish(model)
        log.info("learner_snapshot", model=model, version=version.version, labels_seen=learner.labels_seen)
        return version

    def status(self, model: str) -> dict[str, Any]:
        learner = self.learners[model]
        return {"model": model, "version": learner.base_version, "labels_seen": learner.labels_seen,
                "since_snapshot": learner.since_snapshot, "snapshot_every": learner.snapshot_every,
                "metrics": learner.metrics(), "history": [list(h) for h in learner.history],
                "lineage": learner.lineage(), "updated_at": time.time_ns() // 1_000_000}

    async def publish(self, model: str) -> None:
        """Write the learner's status (progressive metrics, history, lineage) for the API to read."""
        await self.redis.set(self.keys.learner(model), orjson.dumps(self.status(model)))

    async def publish_all(self) -> None:
        for model in list(self.learners):
            await self.publish(model)


class ShadowScorer:
    """Scores logged predictions with the model's challenger (cached; the challenger list refreshes every few s)."""

    def __init__(self, approvals: Approvals, *, refresh_s: float = 2.0) -> None:
        self.approvals = approvals
        self.refresh_s = refresh_s
        self._challengers: dict[str, int] = {}
        self._loaded_at = -1e9
        self._models: dict[tuple[str, int], LoadedModel] = {}

    def challengers(self) -> dict[str, int]:
        if time.monotonic() - self._loaded_at >= self.refresh_s:
            self._challengers = self.approvals.challengers()
            self._loaded_at = time.monotonic()
        return self._challengers

    def scores(self, record: Mapping[str, Any]) -> dict[str, float]:
        """`{challenger version: score}` for one prediction-log record (empty when there is none)."""
        model = str(record["model"])
        version = self.challengers().get(model)
        if version is None or version == int(record["model_version"]):
            return {}
        loaded = self._models.get((model, version))
        try:
            if loaded is None:
                loaded = self._models[(model, version)] = self.approvals.registry.load(
                    self.approvals.registry.get(model, version))
            features = record["features"]
            x = orjson.loads(features) if isinstance(features, str | bytes) else dict(features)
            score = loaded.predict([x])[0]
        except (FeatureStoreError, Exception) as exc:  # a broken challenger never stops the worker
            log.warning("shadow_failed", model=model, version=version, error=type(exc).__name__)
            return {}
        return {} if score is None else {str(version): float(score)}
