"""`POST /v1/push/{source}`: validated events into a stream source's topic (write key).

Validation and sending are `feature_store.publish.EventPublisher.publish_many`,
the same code as the Python SDK. 200 when every event was published; 207
when some were refused (each listed by index with the reason); 422 when none
was; 503 when Kafka is not configured or does not answer.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends
from starlette.responses import Response

from serving.api_models import PushRequest
from serving.deps import WriteActor
from serving.errors import BatchTooLarge
from serving.state import ServingState, get_state

__all__ = ["router"]

router = APIRouter(tags=["push"])
_ERRORS: dict[int | str, dict[str, Any]] = {
           207: {"description": "Some events were refused; `errors` lists them by index"},
           401: {"description": "No or unknown API key"}, 404: {"description": "Unknown or batch source"},
           413: {"description": "Too many events in one request"},
           422: {"description": "No event was valid"}, 503: {"description": "Kafka is unreachable"}}


@router.post("/v1/push/{source}", responses=_ERRORS)
async def push(source: str, body: PushRequest, state: Annotated[ServingState, Depends(get_state)],
               _actor: WriteActor) -> Response:
    """Validate events against the source's schema and publish the valid ones."""
    if len(body.events) > state.config.max_push_events:
        raise BatchTooLarge(f"{len(body.events)} events in one request; send at most "
                            f"{state.config.max_push_events} per request")
    publisher = await state.publisher()
    result = await publisher.publish_many(source, body.events)
    errors = [{"index": e.index, "reason": e.reason} for e in result.errors]
    status = 200 if not errors else (207 if result.published else 422)
    return Response(orjson.dumps({"published": result.published, "errors": errors}), status_code=status,
                    media_type="application/json")
