"""`POST /v1/predict/{model}`: features of the model's service + request fields -> prediction.

The production version answers unless `?version=N` pins one. When the model
cannot answer (it raises, returns no number, or a feature it needs is
missing or refused as stale) the version's declared fallback answers
instead (a rule expression or `model@version`), flagged `fallback: true`
with the reason. Every answered prediction goes to the prediction log.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import replace
from typing import Any

import orjson
import structlog
from fastapi import APIRouter, Request
from starlette.responses import Response

from feature_store.definitions import StalenessPolicy
from feature_store.errors import FeatureStoreError, OnlineStoreUnavailable
from feature_store.expressions import parse
from feature_store.models import ModelVersion
from serving.api_models import PredictRequest, PredictResponse
from serving.errors import BatchTooLarge, InvalidRequest, StaleFeatureRejected
from serving.hot_path import authorized, documented, json_body, query_version
from serving.state import ServingState
from serving.vectors import FeatureQuery, Vector, fetch_vectors

__all__ = ["router"]

log = structlog.get_logger("serving.predict")
router = APIRouter(tags=["predict"])
_ERRORS: dict[int | str, dict[str, Any]] = {404: {"description": "Unknown model or version, or no production version"},
           413: {"description": "More entities than the server accepts per request"},
           422: {"description": "Invalid request (the message names the field and the fix)"},
           503: {"description": "The online store (Redis) is unreachable; retry"}}


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool | int | float) is False:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _fallback(state: ServingState, version: ModelVersion, inputs: list[dict[str, Any]]) -> list[float | None]:
    if version.fallback is None:
        return [None] * len(inputs)
    if "@" in version.fallback:
        name, _, pinned = version.fallback.partition("@")
        baseline = state.model_cache.version(name, int(pinned))
        try:
            return [_number(p) for p in state.model_cache.model(baseline).predict(inputs)]
        except Exception:  # a broken baseline: no answer rather than a 500
            return [None] * len(inputs)
    expression = parse(version.fallback)
    return [_number(expression.evaluate(row)) for row in inputs]


_VERSION_DOC = {"name": "version", "in": "query", "required": False,
                "description": "Pin a version instead of production.",
                "schema": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "title": "Version"}}


@router.post("/v1/predict/{model}", response_model=PredictResponse, responses=_ERRORS,
             openapi_extra=documented(PredictRequest, _VERSION_DOC))
async def predict(request: Request, model: str) -> Response:
    """Prediction per entity with model version, the features the model saw and a request id.

    `?version=N` pins a version. Body, API key and query: see `serving.hot_path`.
    """
    state = await authorized(request, "read")
    version = query_version(request)
    body = await json_body(request, PredictRequest)
    if len(body.entities) > state.config.max_entities:
        raise BatchTooLarge(f"{len(body.entities)} entities in one request; send at most "
                            f"{state.config.max_entities} per request (split the batch)")
    chosen = state.model_cache.version(model, version)
    service = chosen.feature_service or ""
    vectors: list[Vector]
    refused: str | None = None
    if chosen.feature_service is not None:
        query = state.query(service=chosen.feature_service)
        if state.reader is None:
            raise OnlineStoreUnavailable("the online store is not configured; set FEATURESTREAM_REDIS")
        try:
            t, vectors = await fetch_vectors(state.reader, query, body.entities, body.request, state.metrics)
        except StaleFeatureRejected as exc:
            refused = " ".join(str(exc).split())
            t, vectors = await fetch_vectors(state.reader, _lenient(query), body.entities, body.request,
                                             state.metrics)
    else:  # a model of request fields only
        t = time.time_ns() // 1_000_000
        shared = body.request if isinstance(body.request, list) else [body.request or {}] * len(body.entities)
        if len(shared) != len(body.entities):
            raise InvalidRequest(f"'request' has {len(shared)} items for {len(body.entities)} entities")
        vectors = [Vector(entity=e, features={}, inputs=dict(r), missing=[])
                   for e, r in zip(body.entities, shared, strict=True)]
    inputs = [v.inputs for v in vectors]
    reasons: list[str | None] = [refused or (f"missing features: {v.missing}" if v.missing else None)
                                 for v in vectors]
    predictions: list[float | None] = [None] * len(vectors)
    todo = [i for i, r in enumerate(reasons) if r is None]
    if todo:
        try:
            answered = state.model_cache.model(chosen).predict([inputs[i] for i in todo])
            for i, p in zip(todo, answered, strict=True):
                predictions[i] = _number(p)
                if predictions[i] is None:
                    reasons[i] = "the model returned no number"
        except FeatureStoreError:
            raise
        except Exception as exc:  # a model failing on these inputs: the fallback answers
            log.warning("model_failed", model=model, version=chosen.version, error=type(exc).__name__)
            for i in todo:
                reasons[i] = f"the model failed: {type(exc).__name__}"
    need = [i for i, r in enumerate(reasons) if r is not None]
    fallback_of = dict(zip(need, _fallback(state, chosen, [inputs[i] for i in need]), strict=True)) if need else {}
    out = []
    answered_by = [0, 0]  # predictions by the model, by the fallback
    for i, vector in enumerate(vectors):
        used_fallback = False
        if reasons[i] is not None:
            value = fallback_of[i]
            used_fallback = value is not None and chosen.fallback is not None
            predictions[i] = value
        request_id = str(uuid.uuid4())
        if predictions[i] is not None:
            answered_by[used_fallback] += 1
            state.prediction_log.record(
                request_id=request_id, model=model, model_version=chosen.version, served_at=t,
                entity_keys=vector.entity, features=vector.inputs, prediction=predictions[i],  # type: ignore[arg-type]
                fallback=used_fallback, service=service)
        reason = reasons[i] if reasons[i] is None or used_fallback else f"{reasons[i]}; no fallback declared"
        out.append({"request_id": request_id, "entity": vector.entity, "prediction": predictions[i],
                    "model_version": chosen.version, "fallback": used_fallback, "reason": reason,
                    "features": vector.inputs})
    for by_fallback, n in enumerate(answered_by):
        state.metrics.count_predictions(model, chosen.version, bool(by_fallback), n)
    body_out = {"model": model, "model_version": chosen.version, "predictions": out}
    return Response(orjson.dumps(body_out, option=orjson.OPT_NON_STR_KEYS), media_type="application/json")


def _lenient(query: FeatureQuery) -> FeatureQuery:
    """The same query with `reject` policies read as `serve`, so the fallback sees the values."""
    policies = {ref: (StalenessPolicy(max_age=p.max_age_ms, action="serve") if p.action == "reject" else p)
                for ref, p in query.policies.items()}
    return replace(query, policies=policies)
