"""`POST /v1/features`: feature vectors for one or many entities, one Redis round trip."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from feature_store.errors import OnlineStoreUnavailable
from serving.api_models import FeaturesRequest, FeaturesResponse
from serving.errors import BatchTooLarge
from serving.hot_path import authorized, documented, json_body
from serving.vectors import fetch_vectors

__all__ = ["router"]

router = APIRouter(tags=["features"])
_ERRORS: dict[int | str, dict[str, Any]] = {404: {"description": "Unknown service, view or feature"},
           409: {"description": "A feature is staler than its `reject` policy allows"},
           413: {"description": "More entities than the server accepts per request"},
           422: {"description": "Invalid request (the message names the field and the fix)"},
           503: {"description": "The online store (Redis) is unreachable; retry"}}


@router.post("/v1/features", response_model=FeaturesResponse, responses=_ERRORS,
             openapi_extra=documented(FeaturesRequest))
async def get_features(request: Request) -> Response:
    """Values with per-value `status` (present, default, stale, missing) and event-time `age_ms`.

    Staleness policies of the service apply: `serve` keeps the value (status
    stale), `default` returns the declared default (status stale), `reject`
    refuses the request with 409. Body and API key: see `serving.hot_path`.
    """
    state = await authorized(request, "read")
    body = await json_body(request, FeaturesRequest)
    if len(body.entities) > state.config.max_entities:
        raise BatchTooLarge(f"{len(body.entities)} entities in one request; send at most "
                            f"{state.config.max_entities} per request (split the batch)")
    query = state.query(service=body.service, refs=tuple(body.features) if body.features is not None else None)
    if state.reader is None:
        raise OnlineStoreUnavailable("the online store is not configured; set FEATURESTREAM_REDIS")
    t, vectors = await fetch_vectors(state.reader, query, body.entities, body.request, state.metrics)
    results = [{"entity": v.entity, "features": v.features} for v in vectors]
    return Response(orjson.dumps({"read_at": t, "results": results}), media_type="application/json")
