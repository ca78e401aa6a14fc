"""`/healthz` (liveness: the process answers, no I/O) and `/readyz` (Redis answers a PING, fast)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from redis.exceptions import RedisError
from starlette.responses import Response

from feature_store.online.client import UNREACHABLE
from serving.errors import json_error
from serving.state import ServingState, get_state

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: answers while the event loop runs."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis does not answer"}}, response_model=None)
async def readyz(state: Annotated[ServingState, Depends(get_state)]) -> dict[str, Any] | Response:
    """Readiness: Redis answers a PING within the timeout; reports the prediction log's state too."""
    if state.redis is None:
        return json_error(503, "NotReady", "no Redis configured; set FEATURESTREAM_REDIS")
    start = time.perf_counter()
    try:
        await asyncio.wait_for(state.redis.ping(), timeout=state.config.redis_timeout_s * 2)
    except (*UNREACHABLE, RedisError, TimeoutError) as exc:
        return json_error(503, "NotReady", f"Redis does not answer ({type(exc).__name__}); check that it runs")
    log = state.prediction_log
    return {"status": "ready", "redis_ms": round((time.perf_counter() - start) * 1000, 3),
            "prediction_log": {"kafka": log.connected, "buffered": log.queue.qsize(), "dropped": log.dropped}}
