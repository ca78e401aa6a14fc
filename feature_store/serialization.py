"""Definitions back from their `to_dict()` form: how the registry stores and reloads a repo.

`to_dict()` is the stored truth. Views name their entity and source instead
of embedding them, services name features as "view:feature"; sources embed
their schema. Rebuilding runs each spec's own validation again, so a stored
definition that no longer validates fails loudly instead of loading half.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from feature_store.definitions import (
    Aggregation,
    BatchSource,
    Entity,
    FeatureService,
    FeatureView,
    StalenessPolicy,
    StreamSource,
)
from feature_store.errors import DefinitionError
from feature_store.repo import Definition, FeatureRepo
from schemas import EventSchema

__all__ = ["KIND_GROUP", "Resolver", "definition_from_dict", "repo_from_dicts"]

Resolver = Callable[[str, str], Any]
"""`resolve(group, name)` returns the live Entity ("entity") or Source ("source") named `name`."""

KIND_GROUP: Mapping[str, str] = {
    "entity": "entity",
    "stream_source": "source",
    "batch_source": "source",
    "feature_view": "view",
    "feature_service": "service",
}
"""`to_dict()["kind"]` -> the FeatureRepo group it lives in (and the registry's `kind`)."""

_BUILD_ORDER = ("entity", "source", "view", "service")  # references point backwards only


def definition_from_dict(data: Mapping[str, Any], resolve: Resolver) -> Definition:
    """Rebuild one definition from `to_dict()` output; `resolve` supplies referenced entities/sources."""
    kind = data.get("kind") if isinstance(data, Mapping) else None
    if kind not in KIND_GROUP:
        raise DefinitionError(
            f"stored definition {_name_of(data)!r} has kind {kind!r}; expected one of {', '.join(KIND_GROUP)}"
        )
    fields = {k: v for k, v in data.items() if k != "kind"}
    try:
        if kind == "entity":
            return Entity(**fields)
        if kind in ("stream_source", "batch_source"):
            fields["schema"] = EventSchema.from_dict(fields["schema"])
            return StreamSource(**fields) if kind == "stream_source" else BatchSource(**fields)
        if kind == "feature_view":
            fields["entity"] = _resolved(resolve, "entity", fields["entity"], data)
            fields["source"] = _resolved(resolve, "source", fields["source"], data)
            fields["aggregations"] = [Aggregation(**agg) for agg in fields.get("aggregations", ())]
            return FeatureView(**fields)
        fields["staleness"] = {ref: StalenessPolicy(**policy) for ref, policy in fields.get("staleness", {}).items()}
        return FeatureService(**fields)
    except (KeyError, TypeError) as exc:  # missing or unknown keys: a corrupt or foreign record
        raise DefinitionError(
            f"stored {kind} {_name_of(data)!r} does not match this featurestream's definitions ({exc}); "
            f"re-apply the repo with `featurestream apply`"
        ) from None


def repo_from_dicts(dicts: Iterable[Mapping[str, Any]]) -> FeatureRepo:
    """Rebuild a whole repo from `to_dict()` outputs in any order; views resolve within the same set."""
    by_group: dict[str, list[Mapping[str, Any]]] = {group: [] for group in _BUILD_ORDER}
    for data in dicts:
        kind = str(data.get("kind"))
        if kind not in KIND_GROUP:
            raise DefinitionError(
                f"stored definition {_name_of(data)!r} has kind {kind!r}; expected one of {', '.join(KIND_GROUP)}"
            )
        by_group[KIND_GROUP[kind]].append(data)
    built: dict[str, dict[str, Definition]] = {group: {} for group in _BUILD_ORDER}

    def resolve(group: str, name: str) -> Any:
        return built[group].get(name)

    for group in _BUILD_ORDER:
        for data in by_group[group]:
            item = definition_from_dict(data, resolve)
            built[group][item.name] = item
    return FeatureRepo.from_definitions([item for group in _BUILD_ORDER for item in built[group].values()])


def _resolved(resolve: Resolver, group: str, name: str, data: Mapping[str, Any]) -> Any:
    found = resolve(group, name)
    if found is None:
        raise DefinitionError(
            f"FeatureView {_name_of(data)!r} refers to {group} {name!r}, which is not defined; "
            f"declare the {group} in the repo or point the view at an existing one"
        )
    return found


def _name_of(data: object) -> object:
    return data.get("name") if isinstance(data, Mapping) else data
