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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import faust
import structlog
from mode import Service

from feature_store.consistency import with_prediction_log
from feature_store.errors import ConfigError
from feature_store.registry import DefinitionsWatch
from feature_store.repo import FeatureRepo
from feature_store.settings import Settings
from streams.labels import FlowConfig
from streams.labels import install as install_label_flows
from streams.materializer import Materializer, MaterializerConfig
from streams.metrics import WorkerMetrics

__all__ = ["WorkerOptions", "create_app", "materializer_config"]

log = structlog.get_logger("featurestream.worker")


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    group_id: str = "featurestream-worker"
    prefix: str = "fs"
    metrics_port: int = 0  # 0: no HTTP endpoint
    max_records: int = 20_000
    min_fetch_interval_ms: int = 40
    log_max_rows: int = 100_000
    log_max_age_s: float = 5.0
    definitions_poll_s: float = 5.0  # how often to look for a new apply (with a DefinitionsWatch; 0: never)


def materializer_config(settings: Settings, options: WorkerOptions) -> MaterializerConfig:
    if not settings.kafka or not settings.redis:
        missing = [v for v, ok in (("FEATURESTREAM_KAFKA", settings.kafka), ("FEATURESTREAM_REDIS", settings.redis))
                   if not ok]
        raise ConfigError(f"the worker needs {' and '.join(missing)}; set them (or run `featurestream up`)")
    return MaterializerConfig(
        bootstrap=settings.kafka, redis_url=settings.redis, redis_cluster=settings.redis_cluster,
        data_dir=Path(settings.data_dir),
        group_id=options.group_id, prefix=options.prefix,
        session_timeout_ms=int(settings.kafka_session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.kafka_heartbeat_s * 1000), max_records=options.max_records,
        min_fetch_interval_ms=options.min_fetch_interval_ms, log_max_rows=options.log_max_rows,
        log_max_age_s=options.log_max_age_s)


class MaterializerService(Service):
    """Hosts the Materializer in the Faust app: start, run the batch loop, flush and close on stop.

    With a `DefinitionsWatch`, a new apply that changes what the stream path
    computes (a stream source, an online view) replaces the materializer: the
    old one stops cleanly (event log flushed, partitions released) and a new
    one resumes every partition from the stored offsets, so no event is lost
    or counted twice. A new view's state starts from the events consumed
    after the switch (`featurestream materialize` backfills the past).
    """

    first: ClassVar[Materializer]
    build: ClassVar[Callable[[FeatureRepo], Materializer]]
    watch: ClassVar[DefinitionsWatch | None] = None
    poll_s: ClassVar[float] = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.materializer = self.first
        self._next: Materializer | None = None  # the replacement, once the current one stops
        self._stopping = False
        self._done = asyncio.Event()

    async def on_start(self) -> None:
        await self.materializer.start()

    async def on_started(self) -> None:
        self.add_future(self._run())
        if self.watch is not None and self.poll_s > 0:
            self.add_future(self._follow_definitions(self.watch))

    async def _run(self) -> None:
        try:
            while True:
                await self.materializer.run()
                replacement, self._next = self._next, None
                if replacement is None:
                    return
                await self.materializer.stop()
                if self._stopping:  # the worker is stopping: do not start the replacement
                    return
                self.materializer = replacement
                await replacement.start()
                log.info("definitions reloaded", topics=replacement.topics)
        finally:
            self._done.set()

    async def _follow_definitions(self, watch: DefinitionsWatch) -> None:
        """Swap in a materializer built from each apply that changes the stream path (see the class doc)."""
        def replacement_for_apply() -> Materializer | None:  # off the loop: building one takes ~15 ms
            repo = watch.changed()
            return None if repo is None else type(self).build(repo)

        while not self._done.is_set():
            await asyncio.sleep(self.poll_s)
            try:
                replacement = await asyncio.to_thread(replacement_for_apply)
            except Exception as exc:  # the poller must outlive a bad apply or a registry hiccup
                log.error("definitions not reloaded; the worker keeps the running ones", error=str(exc),
                          kind=type(exc).__name__)
                continue
            if replacement is None or replacement.definitions == self.materializer.definitions:
                continue
            self._next = replacement
            self.materializer.request_stop()

    async def on_stop(self) -> None:
        self._stopping = True
        self._next = None
        self.materializer.request_stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout=10)
        await self.materializer.stop()


def create_app(settings: Settings, repo: FeatureRepo, options: WorkerOptions | None = None, *,
               watch: DefinitionsWatch | None = None) -> faust.App:
    """The worker's Faust app; `faust.Worker(app).execute_from_commandline()` runs it.

    With `watch` (the one `repo` was loaded through), later applies reach the
    running worker (`MaterializerService`).
    """
    options = options or WorkerOptions()
    config = materializer_config(settings, options)
    metrics = WorkerMetrics()
    metrics.serve(options.metrics_port)

    def build(live: FeatureRepo) -> Materializer:
        # the prediction log topic is appended to the offline store too (consistency checks read it)
        return Materializer(config, with_prediction_log(live, settings.partitions), metrics=metrics)

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
    app.service(type("BoundMaterializerService", (MaterializerService,),
                     {"first": build(repo), "build": staticmethod(build), "watch": watch,
                      "poll_s": options.definitions_poll_s}))
    install_label_flows(app, settings, FlowConfig(prefix=options.prefix))  # labels, online learning (issue 7)
    return app
