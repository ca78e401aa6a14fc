"""`GET /metrics`: the app's Prometheus registry in the text exposition format."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from serving.state import ServingState, get_state

__all__ = ["router"]

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(state: Annotated[ServingState, Depends(get_state)]) -> Response:
    """Request latency per route, Redis latency, feature freshness and missing rates, predictions."""
    state.metrics.prediction_log_buffered.set(state.prediction_log.queue.qsize())  # read when scraped
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
