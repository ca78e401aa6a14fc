"""`FeatureStore`: the user-facing facade. It only delegates.

    store = FeatureStore(settings, repo)
    store.apply(applied_by="me")                                  -> feature_store.registry
    await store.get_online_features("fraud_detection", [{"user_id": "u1", ...}])  -> OnlineReader
    store.get_training_set("entities.parquet", service="fraud_detection")         -> offline.training
    await store.materialize(start_ms, end_ms)                     -> feature_store.materialize
    await store.aclose()

Online calls are async (redis.asyncio); training sets are sync (DuckDB
works in this thread). Times are epoch ms (UTC).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from feature_store.definitions import FeatureService, FeatureView
from feature_store.errors import ConfigError
from feature_store.materialize import MaterializeReport, ProgressCallback, materialize
from feature_store.offline.engine import Progress, connect
from feature_store.offline.training import TrainingSetQuery, requested_features, training_set
from feature_store.online import FeatureValue, KeyLayout, OnlineReader
from feature_store.online.client import OnlineClient, open_online
from feature_store.repo import FeatureRepo
from feature_store.settings import Settings

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]  # no pandas-stubs in the env

    from feature_store.registry import Plan

__all__ = ["FeatureStore"]


class FeatureStore:
    """One repo's features, online (Redis) and offline (Parquet + DuckDB), for one settings object."""

    def __init__(self, settings: Settings, repo: FeatureRepo) -> None:
        self.settings = settings
        self.repo = repo
        self.keys = KeyLayout(settings.online_prefix)
        self._redis: OnlineClient | None = None

    @property
    def redis(self) -> OnlineClient:
        """The online store client, opened on first use from `settings.redis`."""
        if self._redis is None:
            if not self.settings.redis:
                raise ConfigError("no Redis configured; set FEATURESTREAM_REDIS (or run `featurestream up`)")
            self._redis = open_online(self.settings.redis, cluster=self.settings.redis_cluster)
        return self._redis

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def apply(self, *, applied_by: str, dry_run: bool = False) -> Plan:
        """Register this repo's definitions (see `feature_store.registry.Registry.apply`)."""
        from feature_store.registry import Registry

        return Registry(self.settings.registry).apply(self.repo, applied_by=applied_by, dry_run=dry_run)

    async def get_online_features(self, features_or_service: Sequence[str] | str | FeatureService,
                                  entity_rows: Sequence[Mapping[str, Any]],
                                  t_ms: int | None = None) -> list[dict[str, FeatureValue]]:
        """Values keyed 'view:feature' per entity row, as served at `t_ms` (default: now)."""
        grouped, _ = requested_features(self.repo, features_or_service)
        reader = OnlineReader(self.redis, self.keys)
        return await reader.read(grouped, entity_rows, int(time.time() * 1000) if t_ms is None else t_ms)

    def get_training_set(self, entities: str | Path | pa.Table | pd.DataFrame,
                         features: Sequence[str] | None = None, *, service: str | FeatureService | None = None,
                         timestamp_column: str = "event_timestamp", ignore_ingest_time: bool = False,
                         out: str | Path | None = None, progress: Progress | None = None) -> pa.Table:
        """Entity rows plus one `view__feature` column per feature (and a service's derived features)."""
        from feature_store.expressions import derived_expressions

        grouped, chosen = requested_features(self.repo, features, service)
        derived = derived_expressions(chosen, self.repo) if chosen is not None and chosen.derived else None
        query = TrainingSetQuery(grouped, timestamp_column, ignore_ingest_time, derived)
        con = connect(self.settings.data_dir)
        try:
            return training_set(con, self.settings.data_dir, entities, query, out=out, progress=progress)
        finally:
            con.close()

    async def materialize(self, start_ms: int, end_ms: int, *, views: Sequence[str | FeatureView] | None = None,
                          ignore_ingest_time: bool = False,
                          progress: ProgressCallback | None = None) -> MaterializeReport:
        """Write the online state at `end_ms` of the (online) views into Redis; see `feature_store.materialize`."""
        chosen = [self.repo.view(v) if isinstance(v, str) else v for v in views] if views is not None \
            else [v for _, v in sorted(self.repo.views.items())]
        return await materialize(self.redis, self.keys, self.settings.data_dir, chosen, start_ms, end_ms,
                                 ignore_ingest_time=ignore_ingest_time, progress=progress)
