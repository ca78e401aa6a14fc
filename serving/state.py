"""What the app's lifespan builds and owns, handed to routes through `get_state`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from feature_store.definitions import FeatureService
from feature_store.errors import BrokerUnavailable
from feature_store.models import ModelRegistry
from feature_store.online import OnlineReader
from feature_store.online.client import OnlineClient
from feature_store.publish import EventPublisher
from feature_store.repo import FeatureRepo
from feature_store.settings import Settings
from serving.history import ServingHistory
from serving.model_cache import ModelCache
from serving.prediction_log import PredictionLog
from serving.telemetry import Metrics
from serving.vectors import FeatureQuery, build_query

__all__ = ["ServingConfig", "ServingState", "get_state"]


@dataclass(frozen=True)
class ServingConfig:
    """Serving knobs that are not deployment settings; defaults suit production."""

    max_entities: int = 1000
    online_cache_keys: int = 20_000  # tile hashes whose closed tiles the reader caches (0: off)
    redis_timeout_s: float = 0.3
    key_prefix: str | None = None  # None: Settings.online_prefix
    prediction_topic: str = "_predictions"
    prediction_buffer: int = 10_000
    model_ttl_s: float = 1.0
    definitions_poll_s: float = 2.0  # how often an app built from the registry looks for a new apply (0: never)
    max_push_events: int = 10_000
    push_retry_s: float = 5.0
    history_bucket_s: float = 10.0  # the dashboard's serving charts: one point per this many seconds


@dataclass
class ServingState:
    settings: Settings
    config: ServingConfig
    repo: FeatureRepo
    metrics: Metrics
    models: ModelRegistry
    model_cache: ModelCache
    prediction_log: PredictionLog
    history: ServingHistory
    redis: OnlineClient | None = None
    reader: OnlineReader | None = None
    _queries: dict[Any, FeatureQuery] = field(default_factory=dict)
    _publisher: EventPublisher | None = None

    def query(self, *, service: str | None = None, refs: tuple[str, ...] | None = None) -> FeatureQuery:
        """The resolved query of a service or a ref list, cached (bounded) after the first request."""
        key = ("s", service) if service is not None else ("r", refs)
        found = self._queries.get(key)
        if found is None:
            found = build_query(self.repo, service=service, refs=refs)
            if len(self._queries) > 1024:
                self._queries.clear()
            self._queries[key] = found
        return found

    def service(self, name: str) -> FeatureService:
        return self.repo.service(name)

    async def publisher(self) -> EventPublisher:
        """The push route's publisher, connected on first use (BrokerUnavailable -> 503)."""
        if not self.settings.kafka:
            raise BrokerUnavailable("push needs Kafka; set FEATURESTREAM_KAFKA (or run `featurestream up`)")
        if self._publisher is None:
            self._publisher = EventPublisher(self.settings, self.repo, retry_s=self.config.push_retry_s)
        try:
            await self._publisher.start()
        except BrokerUnavailable:
            self._publisher = None
            raise
        return self._publisher

    async def use_definitions(self, repo: FeatureRepo) -> None:
        """Serve `repo` from now on (a new apply); requests already running finish with the old definitions."""
        self.repo = repo
        self._queries = {}
        await self.close_publisher()  # it validates pushed events against the old schemas

    async def close_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.stop()


async def get_state(request: Request) -> ServingState:
    state: ServingState = request.app.state.serving
    return state
