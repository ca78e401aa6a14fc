"""The Faust app of a stream worker, built from settings and the live feature repo.

The feature materializer (`streams.materializer`) runs as a service of the
app: same lifecycle, same process, same signals. Per-event Faust agents cost
~200 us/event on this stack, so the high-volume path is the batch consumer;
lower-volume flows (labels, prediction log) are agents of this same app.
No feature state lives in Faust tables, and `exactly_once` stays off: the
online store's offset fence gives exactly-once effect instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import faust
from mode import Service

from feature_store.consistency import with_prediction_log
from feature_store.errors import ConfigError
from feature_store.repo import FeatureRepo
from feature_store.settings import Settings
from streams.labels import FlowConfig
from streams.labels import install as install_label_flows
from streams.materializer import Materializer, MaterializerConfig
from streams.metrics import WorkerMetrics

__all__ = ["WorkerOptions", "create_app", "materializer_config"]


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    group_id: str = "featurestream-worker"
    prefix: str = "fs"
    metrics_port: int = 0  # 0: no HTTP endpoint
    max_records: int = 20_000
    min_fetch_interval_ms: int = 40
    log_max_rows: int = 100_000
    log_max_age_s: float = 5.0


def materializer_config(settings: Settings, options: WorkerOptions) -> MaterializerConfig:
    if not settings.kafka or not settings.redis:
        missing = [v for v, ok in (("FEATURESTREAM_KAFKA", settings.kafka), ("FEATURESTREAM_REDIS", settings.redis))
                   if not ok]
        raise ConfigError(f"the worker needs {' and '.join(missing)}; set them (or run `featurestream up`)")
    return MaterializerConfig(
        bootstrap=settings.kafka, redis_url=settings.redis, data_dir=Path(settings.data_dir),
        group_id=options.group_id, prefix=options.prefix,
        session_timeout_ms=int(settings.kafka_session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.kafka_heartbeat_s * 1000), max_records=options.max_records,
        min_fetch_interval_ms=options.min_fetch_interval_ms, log_max_rows=options.log_max_rows,
        log_max_age_s=options.log_max_age_s)


class MaterializerService(Service):
    """Hosts one Materializer in the Faust app: start, run the batch loop, flush and close on stop."""

    materializer: ClassVar[Materializer]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._done = asyncio.Event()

    async def on_start(self) -> None:
        await self.materializer.start()

    async def on_started(self) -> None:
        self.add_future(self._run())

    async def _run(self) -> None:
        try:
            await self.materializer.run()
        finally:
            self._done.set()

    async def on_stop(self) -> None:
        self.materializer.request_stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout=10)
        await self.materializer.stop()


def create_app(settings: Settings, repo: FeatureRepo, options: WorkerOptions | None = None) -> faust.App:
    """The worker's Faust app; `faust.Worker(app).execute_from_commandline()` runs it."""
    options = options or WorkerOptions()
    config = materializer_config(settings, options)
    metrics = WorkerMetrics()
    metrics.serve(options.metrics_port)
    # the prediction log topic is appended to the offline store too (consistency checks read it)
    materializer = Materializer(config, with_prediction_log(repo, settings.partitions), metrics=metrics)
    app = faust.App(
        f"{options.group_id}-app",
        broker=f"kafka://{config.bootstrap}",
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=settings.kafka_heartbeat_s,
        store="memory://",
        datadir=str(config.data_dir / "faust"),  # Faust's own files stay in the data dir, not the working directory
        web_enabled=False,
        topic_partitions=1,
        autodiscover=False,
        processing_guarantee="at_least_once",
    )
    app.service(type("BoundMaterializerService", (MaterializerService,), {"materializer": materializer}))
    install_label_flows(app, settings, FlowConfig(prefix=options.prefix))  # labels, online learning (issue 7)
    return app
