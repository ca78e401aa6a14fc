"""Label join: each label meets the prediction it answers, with the features as they were served.

Predictions come from the prediction log (`_predictions`); each record is
kept in Redis for `retention_s` (JSON under `pred:<request_id>`, plus an
index by entity key scored by served_at), which bounds memory and survives
worker restarts. A label joins by `request_id`, or by `entity_key` + its
`event_time` (the newest prediction served at or before it, of the label's
model when it names one). The features in the joined pair are those logged
at serving time: never recomputed with later data.

Outcomes per label:
- `joined`: first label for (model, request id).
- `duplicate`: that pair was already joined by another label: counted, dropped.
- `replay`: the *same* label (same topic/partition/offset) seen again after a
  restart: joined again, so a learner restored from a snapshot can catch up.
- `pending`: no prediction yet (labels can overtake their prediction): the
  label waits, `sweep()` retries it until `wait_s` has passed, then
- `orphan`: logged (structlog + a capped Redis list) and counted. A label
  whose prediction is older than the retention (very late) ends here too.

Faust agents (`install`) are thin: they call `LabelJoiner` and hand joined
pairs to the online trainer (`streams.learning`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import structlog
from mode import Service

from feature_store.errors import ConfigError
from feature_store.models import ModelRegistry
from feature_store.monitoring import Alert
from feature_store.monitoring.hub import MonitorHub
from feature_store.online.client import open_online
from feature_store.settings import Settings
from feature_store.training import Approvals, RunStore
from feature_store.training.live import LABELS_TOPIC, LiveKeys, perf_fields
from schemas import LABELS, PREDICTION_LOG
from schemas import now_ms as wall_clock_ms
from streams.learning import OnlineTrainer, ShadowScorer

__all__ = ["FlowConfig", "JoinConfig", "JoinOutcome", "JoinedLabel", "LabelFlows", "LabelJoiner", "install"]

log = structlog.get_logger("featurestream.labels")

Outcome = Literal["joined", "duplicate", "replay", "pending", "orphan", "invalid"]


@dataclass(frozen=True, kw_only=True)
class JoinConfig:
    retention_s: float = 7 * 86400.0  # how long predictions (and join markers) are kept for labels
    wait_s: float = 60.0  # how long an unmatched label waits for its prediction before it is an orphan
    orphan_cap: int = 10_000  # orphan records kept in Redis (newest)
    sweep_batch: int = 1_000  # pending labels retried per sweep
    entity_candidates: int = 20  # predictions looked at per entity label (newest at or before its time)


@dataclass(frozen=True, kw_only=True)
class JoinedLabel:
    """A label with the prediction it answers and the features the model saw."""

    request_id: str
    model: str
    model_version: int
    service: str
    features: dict[str, Any]
    prediction: float
    label: float
    event_time: int  # of the label (epoch ms)
    served_at: int  # of the prediction (epoch ms)
    shadow: dict[str, float] = field(default_factory=dict)  # challenger version -> its shadow score
    source: str = ""  # "topic:partition" of the label
    offset: int | None = None  # None for labels that joined after waiting (see `sweep`)
    replay: bool = False


@dataclass(frozen=True, kw_only=True)
class JoinOutcome:
    outcome: Outcome
    joined: JoinedLabel | None = None
    reason: str = ""



def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class LabelJoiner:
    """Stores predictions and joins labels to them, in Redis (see module doc)."""

    def __init__(self, redis: Any, keys: LiveKeys, config: JoinConfig | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config or JoinConfig()

    # -- predictions
    async def add_prediction(self, record: Mapping[str, Any], shadow: Mapping[str, float] | None = None) -> None:
        """Keep one prediction-log record (validated dict) for `retention_s`, indexed by its entity keys."""
        ttl_ms = int(self.config.retention_s * 1000)
        rid = str(record["request_id"])
        entity_keys = record["entity_keys"]
        entities = orjson.loads(entity_keys) if isinstance(entity_keys, str | bytes) else dict(entity_keys)
        stored = {**record, "shadow": dict(shadow or {})}
        served_at = int(record["served_at"])
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.prediction(rid), orjson.dumps(stored), px=ttl_ms)
            for value in entities.values():
                index = self.keys.entity_index(str(value))
                pipe.zadd(index, {rid: served_at})
                pipe.zremrangebyscore(index, "-inf", served_at - ttl_ms)  # keep the index bounded
                pipe.pexpire(index, ttl_ms)
            await pipe.execute()

    async def _find(self, label: Mapping[str, Any]) -> dict[str, Any] | None:
        if label.get("request_id"):
            raw = await self.redis.get(self.keys.prediction(str(label["request_id"])))
            found = orjson.loads(raw) if raw else None
            if found is not None and label.get("model") and found.get("model") != label["model"]:
                return None
            return found
        index = self.keys.entity_index(str(label["entity_key"]))
        rids = await self.redis.zrevrangebyscore(index, int(label["event_time"]), "-inf", start=0,
                                                 num=self.config.entity_candidates)
        if not rids:
            return None
        async with self.redis.pipeline(transaction=False) as pipe:  # not MGET: the keys span cluster slots
            for rid in rids:
                pipe.get(self.keys.prediction(_text(rid)))
            raws = await pipe.execute()
        for raw in raws:
            if raw:
                record = orjson.loads(raw)
                if not label.get("model") or record.get("model") == label["model"]:
                    return record  # type: ignore[no-any-return]
        return None

    # -- labels
    async def join(self, label: Mapping[str, Any], *, source: str = "", offset: int | None = None,
                   now_ms: int | None = None) -> JoinOutcome:
        """Join one label (a dict; validated against `LABELS` here) or park it as pending."""
        try:
            checked = LABELS.validate(label)
        except Exception as exc:  # a bad label never stops the worker
            await self._count("*", "invalid")
            log.warning("label_invalid", reason=" ".join(str(exc).split())[:300], source=source, offset=offset)
            return JoinOutcome(outcome="invalid", reason=str(exc))
        outcome = await self._try_join(checked, source=source, offset=offset)
        if outcome is not None:
            return outcome
        label_id = f"{source}:{offset}" if offset is not None else orjson.dumps(checked).decode()
        deadline = (now_ms if now_ms is not None else wall_clock_ms()) + int(self.config.wait_s * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.pending, {label_id: deadline}, nx=True)
            pipe.hset(self.keys.pending_data, label_id, orjson.dumps({"label": checked, "source": source}))
            await pipe.execute()
        await self._count(checked.get("model") or "*", "pending")
        return JoinOutcome(outcome="pending", reason="no prediction for this label yet")

    async def _try_join(self, label: Mapping[str, Any], *, source: str, offset: int | None,
                        marker: str | None = None) -> JoinOutcome | None:
        record = await self._find(label)
        if record is None:
            return None
        model, rid = str(record["model"]), str(record["request_id"])
        marker = marker or f"{source}:{offset}"  # what identifies this label: a replay carries the same
        async with self.redis.pipeline(transaction=False) as pipe:  # claim the join, and see who holds it
            pipe.set(self.keys.seen(model, rid), marker, nx=True, px=int(self.config.retention_s * 1000))
            pipe.get(self.keys.seen(model, rid))
            fresh, holder = await pipe.execute()
        replay = False
        if not fresh:
            previous = _text(holder or b"")
            if previous != marker:
                await self._count(model, "duplicate")
                return JoinOutcome(outcome="duplicate", reason=f"request {rid} of {model} was joined by {previous}")
            replay = True
        features = record["features"]
        joined = JoinedLabel(
            request_id=rid, model=model, model_version=int(record["model_version"]),
            service=str(record.get("service") or ""),
            features=orjson.loads(features) if isinstance(features, str | bytes) else dict(features),
            prediction=float(record["prediction"]), label=float(label["label"]),
            event_time=int(label["event_time"]), served_at=int(record["served_at"]),
            shadow={str(k): float(v) for k, v in (record.get("shadow") or {}).items()},
            source=source, offset=offset, replay=replay,
        )
        await self._score(joined)
        return JoinOutcome(outcome="replay" if replay else "joined", joined=joined)

    async def _score(self, joined: JoinedLabel) -> None:
        """Count the join; score champion (what was served) and challenger (shadow) once, not on replays."""
        increments: dict[str, float] = {}
        if not joined.replay:
            increments = perf_fields(joined.model_version, "live", joined.prediction, joined.label)
            for version, score in joined.shadow.items():
                increments |= perf_fields(int(version), "shadow", score, joined.label)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, amount in increments.items():
                pipe.hincrbyfloat(self.keys.perf(joined.model), name, amount)
            pipe.hincrby(self.keys.stats, f"{joined.model}:{'replay' if joined.replay else 'joined'}", 1)
            await pipe.execute()

    async def sweep(self, now_ms: int | None = None) -> list[JoinOutcome]:
        """Retry pending labels: join those whose prediction arrived, orphan those past their wait."""
        now = now_ms if now_ms is not None else wall_clock_ms()
        entries = await self.redis.zrange(self.keys.pending, 0, self.config.sweep_batch - 1, withscores=True)
        results: list[JoinOutcome] = []
        for member, deadline in entries:
            label_id = _text(member)
            raw = await self.redis.hget(self.keys.pending_data, label_id)
            if raw is None:
                await self.redis.zrem(self.keys.pending, label_id)
                continue
            parked = orjson.loads(raw)
            label, source = parked["label"], parked["source"]
            outcome = await self._try_join(label, source=source, offset=None, marker=f"pending:{label_id}")
            if outcome is None and now < deadline:
                continue
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(self.keys.pending, label_id)
                pipe.hdel(self.keys.pending_data, label_id)
                await pipe.execute()
            await self._count(label.get("model") or "*", "pending", -1)
            if outcome is None:
                outcome = await self._orphan(label, label_id, now)
            results.append(outcome)
        return results

    async def _orphan(self, label: Mapping[str, Any], label_id: str, now: int) -> JoinOutcome:
        reason = ("no prediction with this request id (unknown, or older than the retention)"
                  if label.get("request_id") else "no prediction for this entity at or before the label's time")
        record = {"label": dict(label), "label_id": label_id, "reason": reason, "orphaned_at": now}
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(self.keys.orphans, orjson.dumps(record))
            pipe.ltrim(self.keys.orphans, 0, self.config.orphan_cap - 1)
            await pipe.execute()
        await self._count(label.get("model") or "*", "orphan")
        log.info("label_orphan", request_id=label.get("request_id"), entity=label.get("entity_key"),
                 model=label.get("model"), reason=reason)
        return JoinOutcome(outcome="orphan", reason=reason)

    async def _count(self, model: str, outcome: str, amount: int = 1) -> None:
        await self.redis.hincrby(self.keys.stats, f"{model}:{outcome}", amount)

    async def orphans(self, limit: int = 100) -> list[dict[str, Any]]:
        return [orjson.loads(r) for r in await self.redis.lrange(self.keys.orphans, 0, limit - 1)]

    async def stats(self) -> dict[str, int]:
        return {_text(k): int(v) for k, v in (await self.redis.hgetall(self.keys.stats)).items()}


JoinedHandler = Callable[[JoinedLabel], Awaitable[None]]


# ---------------------------------------------------------------- the worker's label flows

@dataclass(frozen=True, kw_only=True)
class FlowConfig:
    """Topics, key prefix and timings of the label/learning flows of a worker."""

    prefix: str = "fs"
    labels_topic: str = LABELS_TOPIC
    predictions_topic: str = "_predictions"
    join: JoinConfig = field(default_factory=JoinConfig)
    snapshot_every: int = 1000
    retrain_after: int = 200  # labels between a drift alert and the retraining snapshot it triggers
    monitor_bootstrap: int = 500  # served vectors that become the drift reference when no profile was saved
    tick_s: float = 1.0  # pending-label sweep and report publishing interval


class LabelFlows:
    """Prediction log -> store + shadow scores + monitors; labels -> join -> learner. What the agents call."""

    def __init__(self, settings: Settings, config: FlowConfig | None = None) -> None:
        self.settings = settings
        self.config = config or FlowConfig()
        self.keys = LiveKeys(self.config.prefix)
        self.redis: Any = None
        self._start_lock = asyncio.Lock()
        self._models_of: dict[str, set[str]] = {}  # monitored service -> models seen serving it

    async def start(self) -> None:
        async with self._start_lock:
            if self.redis is not None:
                return

            if not self.settings.redis:
                raise ConfigError("label flows need FEATURESTREAM_REDIS (or run `featurestream up`)")
            registry = ModelRegistry.from_settings(self.settings)
            self.redis = open_online(self.settings.redis, cluster=self.settings.redis_cluster)
            self.joiner = LabelJoiner(self.redis, self.keys, self.config.join)
            self.trainer = OnlineTrainer(registry, RunStore.from_settings(self.settings), self.redis, self.keys,
                                         snapshot_every=self.config.snapshot_every,
                                         retrain_after=self.config.retrain_after)
            self.shadow = ShadowScorer(Approvals.from_settings(self.settings, registry))
            self.hub = MonitorHub(Path(self.settings.data_dir), bootstrap=self.config.monitor_bootstrap,
                                  on_alert=self._on_alert)

    async def stop(self) -> None:
        if self.redis is None:
            return
        with contextlib.suppress(Exception):
            await self.trainer.publish_all()
            await self.hub.publish(self.redis, self.keys.monitor)
        await self.redis.aclose()
        self.redis = None

    async def on_prediction(self, raw: bytes) -> None:
        await self.start()
        try:
            record = PREDICTION_LOG.validate(orjson.loads(raw))
        except Exception as exc:  # not ours to stop on
            log.warning("prediction_record_invalid", reason=" ".join(str(exc).split())[:300])
            return
        self._models_of.setdefault(str(record.get("service") or record["model"]), set()).add(str(record["model"]))
        await self.joiner.add_prediction(record, self.shadow.scores(record))
        self.hub.observe(record)

    async def on_label(self, raw: bytes, *, source: str, offset: int) -> JoinOutcome:
        await self.start()
        try:
            label = orjson.loads(raw)
        except orjson.JSONDecodeError:
            label = {}
        outcome = await self.joiner.join(label, source=source, offset=offset)
        if outcome.joined is not None:
            await self._joined(outcome.joined)
        return outcome

    async def _joined(self, joined: JoinedLabel) -> None:
        if not joined.replay:
            self.hub.observe_outcome(joined.service or joined.model, joined.prediction, joined.label)
        await self.trainer.on_joined(joined)

    async def tick(self) -> None:
        """Retry pending labels, publish monitoring reports and learner status."""
        await self.start()
        for outcome in await self.joiner.sweep():
            if outcome.joined is not None:
                await self._joined(outcome.joined)
        await self.hub.publish(self.redis, self.keys.monitor)
        await self.trainer.publish_all()

    def _on_alert(self, alert: Alert) -> None:
        """A drift signal triggers a retraining run: the online learner snapshots once it has adapted."""
        if alert.kind not in ("feature_drift", "stream_drift"):
            return
        for model in self._models_of.get(alert.service, {alert.service}):
            self.trainer.request_snapshot(model, reason=f"{alert.kind} alert on {alert.subject}")


def install(app: Any, settings: Settings, config: FlowConfig | None = None) -> LabelFlows:
    """Add the prediction-log and label agents and the sweep timer to a worker's Faust app."""
    config = config or FlowConfig()
    flows = LabelFlows(settings, config)
    topic_options: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw",
                                     "partitions": settings.partitions}
    predictions = app.topic(config.predictions_topic, **topic_options)
    labels = app.topic(config.labels_topic, **topic_options)

    async def prediction_agent(stream: Any) -> None:
        async for event in stream.events():
            await flows.on_prediction(event.value)

    async def label_agent(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            await flows.on_label(event.value, source=f"{message.topic}:{message.partition}", offset=message.offset)

    async def tick() -> None:
        await flows.tick()

    app.agent(predictions, name="featurestream.predictions")(prediction_agent)
    app.agent(labels, name="featurestream.labels")(label_agent)
    app.timer(config.tick_s, name="featurestream.labels.tick")(tick)

    class LabelFlowsService(Service):
        async def on_stop(self) -> None:
            await flows.stop()

    app.service(LabelFlowsService)
    return flows
