"""`POST /v1/labels`: ground-truth outcomes onto the labels topic, keyed, for the worker's label join.

Each label is validated against `schemas.LABELS` first; one bad label refuses
the whole call (422 naming the index and the fix), so a retry never doubles
the good ones. Labels are keyed by request id (else entity key) and sent with
acks from the broker before the call answers. The producer is created on
first use and owned by this router's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from feature_store.errors import BrokerUnavailable, SchemaError
from feature_store.training.live import LABELS_TOPIC
from schemas import LABELS
from serving.deps import WriteActor
from serving.errors import InvalidRequest
from serving.state import ServingState, get_state

__all__ = ["LabelsRequest", "router"]

log = structlog.get_logger("serving.labels")
MAX_LABELS = 10_000


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(default=None, description="The prediction request this label answers.")
    entity_key: str | None = Field(default=None, description="The entity, when no request id is known.")
    event_time: int | str = Field(description="When the outcome happened: epoch ms or ISO-8601 with a zone.")
    label: float = Field(description="The observed outcome (1/0 for classification).")
    model: str | None = Field(default=None, description="Restrict the label to one model.")


class LabelsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: list[LabelIn] = Field(min_length=1, max_length=MAX_LABELS)


class _Producer:
    """One aiokafka producer for labels, connected (and the topic created) on first use."""

    def __init__(self, bootstrap: str | None, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.producer: Any = None
        self.lock = asyncio.Lock()

    async def get(self) -> Any:
        if not self.bootstrap:
            raise BrokerUnavailable("labels need Kafka; set FEATURESTREAM_KAFKA (or run `featurestream up`)")
        async with self.lock:
            if self.producer is None:
                from aiokafka import AIOKafkaProducer
                from aiokafka.admin import AIOKafkaAdminClient, NewTopic
                from aiokafka.errors import KafkaError, TopicAlreadyExistsError

                admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
                producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5,
                                            enable_idempotence=False, request_timeout_ms=5000)
                try:
                    await admin.start()
                    with contextlib.suppress(TopicAlreadyExistsError):
                        await admin.create_topics([NewTopic(LABELS_TOPIC, self.partitions, 1)])
                    await producer.start()
                except KafkaError as exc:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    raise BrokerUnavailable(f"Kafka at {self.bootstrap} is unreachable ({type(exc).__name__}); "
                                            "retry, or check FEATURESTREAM_KAFKA") from None
                finally:
                    with contextlib.suppress(Exception):
                        await admin.close()
                self.producer = producer
            return self.producer

    async def close(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), timeout=5.0)


def _producer(app: FastAPI) -> _Producer:
    found = getattr(app.state, "labels_producer", None)
    if found is None:
        settings = app.state.serving.settings
        found = app.state.labels_producer = _Producer(settings.kafka, settings.partitions)
    return found


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    try:
        yield
    finally:
        producer = getattr(app.state, "labels_producer", None)
        if producer is not None:
            await producer.close()


router = APIRouter(tags=["labels"], lifespan=_lifespan)


@router.post("/v1/labels", status_code=202,
             responses={401: {"description": "No or unknown key"}, 422: {"description": "A label is invalid"},
                        503: {"description": "Kafka is unreachable; retry"}})
async def post_labels(body: LabelsRequest, request: Request, _state: Annotated[ServingState, Depends(get_state)],
                      actor: WriteActor) -> dict[str, Any]:
    """Send labels to the labels topic; the worker joins each to its logged prediction."""
    checked: list[dict[str, Any]] = []
    for i, label in enumerate(body.labels):
        try:
            checked.append(LABELS.validate(label.model_dump(exclude_none=True)))
        except SchemaError as exc:
            raise InvalidRequest(f"labels[{i}]: {' '.join(str(exc).split())}") from None
    producer = await _producer(request.app).get()
    try:
        futures = [await producer.send(LABELS_TOPIC, value=orjson.dumps(label),
                                       key=str(label.get("request_id") or label.get("entity_key")).encode())
                   for label in checked]
        await asyncio.gather(*futures)
    except BrokerUnavailable:
        raise
    except Exception as exc:
        raise BrokerUnavailable(f"labels were not acknowledged by Kafka ({type(exc).__name__}); retry the call") \
            from None
    log.info("labels_sent", count=len(checked), actor=actor)
    return {"accepted": len(checked), "topic": LABELS_TOPIC}
