"""Feature vectors for requests: resolve what to read, read once, apply staleness, derive.

A `FeatureQuery` is what one service (or list of 'view:feature' refs) needs,
worked out once and cached: views to read, join keys, staleness policies,
request fields and derived expressions. `fetch_vectors` does the per-request
part: one `OnlineReader.read` (one pipelined Redis round trip), then per
value its status and event-time age at the read time `t` (epoch ms):

- present: a value with events behind it; `age_ms = t - event_time`.
- default: a window without events (count 0, others null); no age.
- missing: no live latest value (or no join key); no age.
- stale: older than the service's `max_age`; the policy says whether the
  value (serve) or the declared default (default) is returned, or the
  request is refused (reject -> StaleFeatureRejected, 409).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from feature_store.definitions import FeatureService, FeatureView, StalenessPolicy
from feature_store.expressions import Expression, derived_expressions, feature_name
from feature_store.online import OnlineReader
from feature_store.repo import FeatureRepo
from serving.api_models import SERVED_STATUSES
from serving.errors import InvalidRequest, StaleFeatureRejected
from serving.telemetry import Metrics

__all__ = ["FeatureQuery", "Vector", "build_query", "fetch_vectors"]

_NO_COUNTS = dict.fromkeys(SERVED_STATUSES, 0)
"""Per feature, the served values of each status (a copy per request: cheaper than building the dict)."""

_REQUEST_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "int": (int,), "float": (int, float),
                                                "bool": (bool,)}


@dataclass(frozen=True)
class FeatureQuery:
    """Everything a request for one service or ref list needs, resolved once."""

    refs: tuple[str, ...]
    grouped: Mapping[FeatureView, Sequence[str]]
    join_keys: tuple[str, ...]
    policies: Mapping[str, StalenessPolicy]
    defaults: Mapping[str, Any]
    service: FeatureService | None = None
    request_fields: Mapping[str, str] = field(default_factory=dict)
    derived: Mapping[str, Expression] = field(default_factory=dict)
    names: Mapping[str, str] = field(default_factory=dict)  # ref -> view__feature


@dataclass
class Vector:
    """One entity's answer: `features` maps refs (and derived names) to {value, status, age_ms}."""

    entity: Mapping[str, Any]
    features: dict[str, dict[str, Any]]
    inputs: dict[str, Any]  # model inputs: view__feature, request fields, derived
    missing: list[str]


def build_query(repo: FeatureRepo, *, service: str | None = None, refs: Sequence[str] | None = None) -> FeatureQuery:
    """Resolve a service name or refs; UnknownFeatureError (404) / DefinitionError (422) say what is wrong."""
    svc = repo.service(service) if service is not None else None
    wanted = tuple(svc.feature_refs) if svc is not None else tuple(refs or ())
    if not wanted:
        raise InvalidRequest("name a feature service in 'service' or list 'view:feature' refs in 'features'")
    duplicates = sorted({r for r in wanted if wanted.count(r) > 1})
    if duplicates:
        raise InvalidRequest(f"features listed twice: {duplicates}; list each once")
    for ref in wanted:
        if ref.count(":") != 1:
            raise InvalidRequest(f"feature {ref!r} is not a 'view:feature' reference")
    grouped = repo.group_features(wanted)
    for view in grouped:
        if not view.online:
            raise InvalidRequest(f"feature view {view.name!r} is offline only (online=False); it cannot be served")
    join_keys = tuple(dict.fromkeys(view.entity.join_key for view in grouped))
    policies: dict[str, StalenessPolicy] = {}
    defaults: dict[str, Any] = {}
    for ref in wanted:
        view, name = repo.resolve(ref)
        agg = next((a for a in view.aggregations if a.name == name), None)
        defaults[ref] = 0 if agg is not None and agg.function == "count" else None
        policy = svc.policy_for(ref) if svc is not None else None
        if policy is not None:
            policies[ref] = policy
    derived = derived_expressions(svc, repo) if svc is not None else {}
    return FeatureQuery(refs=wanted, grouped=grouped, join_keys=join_keys, policies=policies, defaults=defaults,
                        service=svc, request_fields=dict(svc.request_fields) if svc is not None else {},
                        derived=derived, names={r: feature_name(r) for r in wanted})


def _check_entities(query: FeatureQuery, entities: Sequence[Mapping[str, Any]]) -> None:
    for i, entity in enumerate(entities):
        for key in query.join_keys:
            value = entity.get(key)
            if value is None:
                raise InvalidRequest(f"entities[{i}] has no {key!r}; every entity needs {list(query.join_keys)}")
            if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
                raise InvalidRequest(f"entities[{i}].{key} must be a non-empty string or an integer")


def request_rows(query: FeatureQuery, request: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
                 count: int) -> list[Mapping[str, Any]]:
    """Per-entity request fields (a shared dict or one per entity), type-checked against the service."""
    if request is None:
        rows: list[Mapping[str, Any]] = [{}] * count
    elif isinstance(request, Mapping):
        rows = [request] * count
    else:
        if len(request) != count:
            raise InvalidRequest(f"'request' has {len(request)} items for {count} entities; send one per entity "
                                 f"or one shared object")
        rows = list(request)
    declared = query.request_fields
    checked: dict[int, None] = {}
    for i, row in enumerate(rows):
        if id(row) in checked:
            continue
        checked[id(row)] = None
        for name, value in row.items():
            if name not in declared:
                raise InvalidRequest(
                    f"request field {name!r} is not declared by the service (declared: {sorted(declared) or 'none'})"
                )
            wanted = _REQUEST_TYPES[declared[name]]
            ok = value is None or (isinstance(value, wanted) and not (isinstance(value, bool) and bool not in wanted))
            if ok and isinstance(value, float) and not math.isfinite(value):
                ok = False
            if not ok:
                where = f"request[{i}].{name}" if not isinstance(request, Mapping) else f"request.{name}"
                raise InvalidRequest(f"{where} must be {declared[name]}, got {type(value).__name__}")
    return rows


async def fetch_vectors(
    reader: OnlineReader,
    query: FeatureQuery,
    entities: Sequence[Mapping[str, Any]],
    request: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    metrics: Metrics,
    *,
    t_ms: int | None = None,
) -> tuple[int, list[Vector]]:
    """Read, apply staleness and derive for each entity; returns (read time, vectors)."""
    _check_entities(query, entities)
    requests = request_rows(query, request, len(entities))
    t = time.time_ns() // 1_000_000 if t_ms is None else t_ms
    start = time.perf_counter()
    try:
        raw = await reader.read(query.grouped, entities, t)
    except Exception:
        metrics.online_read_errors.inc()
        raise
    metrics.observe_read(time.perf_counter() - start)
    counts = {ref: _NO_COUNTS.copy() for ref in query.refs}
    oldest: dict[str, int] = {}
    vectors: list[Vector] = []
    refs = [(ref, query.names[ref], query.policies.get(ref), counts[ref]) for ref in query.refs]
    for entity, values, req in zip(entities, raw, requests, strict=True):
        out: dict[str, dict[str, Any]] = {}
        inputs: dict[str, Any] = dict(req)
        missing: list[str] = []
        for ref, name, policy, tally in refs:
            value, read_status, event_time = values[ref]
            status: str = read_status
            age: int | None = None
            if event_time is not None:
                age = known_age = t - event_time
                seen = oldest.get(ref)
                if seen is None or known_age > seen:
                    oldest[ref] = known_age
                if policy is not None and known_age > policy.max_age_ms:
                    if policy.action == "reject":
                        raise StaleFeatureRejected(
                            f"feature {ref!r} of entity {dict(entity)} is {age} ms old, more than the "
                            f"{policy.max_age_ms} ms the service allows (policy reject); refresh the feature "
                            f"pipeline or relax the staleness policy"
                        )
                    status = "stale"
                    if policy.action == "default":
                        value = query.defaults[ref]
            elif status == "missing":
                missing.append(ref)
            tally[status] += 1
            out[ref] = {"value": value, "status": status, "age_ms": age}
            inputs[name] = value
        for name, expression in query.derived.items():
            try:
                derived = expression.evaluate(inputs)
            except (TypeError, ValueError, OverflowError):
                derived = None
            if isinstance(derived, float) and not math.isfinite(derived):
                derived = None
            inputs[name] = derived
            out[name] = {"value": derived, "status": "missing" if derived is None else "present", "age_ms": None}
        vectors.append(Vector(entity=entity, features=out, inputs=inputs, missing=missing))
    for ref in query.refs:
        metrics.observe_features(ref, counts[ref], oldest.get(ref))
    return t, vectors
