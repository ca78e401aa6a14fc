"""The Python producer SDK: publish validated events to stream sources.

    from streams.producer import Producer
    with Producer(settings, repo) as producer:          # sync (runs its own event loop thread)
        producer.publish("transactions", event)          # raises SchemaError saying what to fix
        result = producer.publish_many("transactions", events)
        result.errors                                    # [PublishError(index, reason), ...]

    async with AsyncProducer(settings, repo) as producer:  # inside an asyncio program
        await producer.publish("transactions", event)

Both are thin wrappers over `feature_store.publish.EventPublisher` (the code
HTTP push uses too): validation before sending, keys by the source's key
field, bounded retries and buffer when Kafka is down.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from feature_store.definitions import StreamSource
from feature_store.publish import EventPublisher, PublishResult
from feature_store.repo import FeatureRepo
from feature_store.settings import Settings

__all__ = ["AsyncProducer", "Producer"]

T = TypeVar("T")


class AsyncProducer:
    """`await publish(source, event)` / `await publish_many(source, events)`; use `async with`."""

    def __init__(self, settings_or_bootstrap: Settings | str, repo: FeatureRepo, **options: Any) -> None:
        self._publisher = EventPublisher(settings_or_bootstrap, repo, **options)

    async def __aenter__(self) -> AsyncProducer:
        await self._publisher.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._publisher.stop()

    async def publish(self, source: str | StreamSource, event: Mapping[str, Any]) -> None:
        await self._publisher.publish(source, event)

    async def publish_many(self, source: str | StreamSource, events: Sequence[Mapping[str, Any] | bytes]
                           ) -> PublishResult:
        return await self._publisher.publish_many(source, events)

    async def close(self) -> None:
        await self._publisher.stop()


class Producer:
    """The same API for synchronous code: calls block until Kafka acknowledged (or refused) the events.

    The producer runs on an event loop in a background thread of its own, so
    it works from scripts, notebooks and threads alike.
    """

    def __init__(self, settings_or_bootstrap: Settings | str, repo: FeatureRepo, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="featurestream-producer", daemon=True)
        self._thread.start()
        self._async = self._call(self._make(settings_or_bootstrap, repo, options))

    @staticmethod
    async def _make(settings_or_bootstrap: Settings | str, repo: FeatureRepo, options: dict[str, Any]
                    ) -> AsyncProducer:
        return AsyncProducer(settings_or_bootstrap, repo, **options)  # built on the producer's loop

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(self, source: str | StreamSource, event: Mapping[str, Any]) -> None:
        """Validate and send one event; raises SchemaError (what to fix) or BrokerUnavailable."""
        self._call(self._async.publish(source, event))

    def publish_many(self, source: str | StreamSource, events: Sequence[Mapping[str, Any] | bytes]) -> PublishResult:
        """Validate all, send the valid ones; per-event errors come back in the result."""
        return self._call(self._async.publish_many(source, events))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
