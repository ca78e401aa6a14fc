"""Feature definitions: frozen, keyword-only specs declared once in a feature repo.

Each spec validates itself on construction (errors name the object and the
fix), carries no runtime state and has a content `fingerprint` that the
registry versions. The stream worker, the batch jobs and the serving layer
all read these same objects.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, cast, get_args

import orjson

from feature_store.durations import Duration, format_ms, to_ms
from feature_store.errors import DefinitionError
from feature_store.windows import default_hop_ms
from schemas import EventSchema

__all__ = [
    "AggFunction",
    "Aggregation",
    "BatchSource",
    "Entity",
    "FeatureService",
    "FeatureView",
    "Source",
    "StalenessPolicy",
    "StreamSource",
    "fingerprint_of",
]

AggFunction = Literal["count", "sum", "mean", "min", "max", "last", "stddev"]
AGG_FUNCTIONS: tuple[str, ...] = get_args(AggFunction)
NUMERIC_TYPES = frozenset({"int", "float"})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def fingerprint_of(data: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of `data` (sorted keys): equal content, equal print."""
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise DefinitionError(
            f"{kind} name {name!r} is not valid; use letters, digits and '_' and start with a letter"
        )


@dataclass(frozen=True, kw_only=True)
class Entity:
    """What features describe (a user, a merchant), identified by one join key column."""

    name: str
    join_key: str
    dtype: Literal["string", "int"] = "string"
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("Entity", self.name)
        _check_name(f"Entity {self.name!r} join_key", self.join_key)
        if self.dtype not in ("string", "int"):
            raise DefinitionError(f"Entity {self.name!r}: dtype must be 'string' or 'int', got {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "entity", "name": self.name, "join_key": self.join_key, "dtype": self.dtype,
                "description": self.description}

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.to_dict())


@dataclass(frozen=True, kw_only=True)
class StreamSource:
    """A Kafka topic of events validated against `schema`.

    `key` is the field used as the message key (events of one key share a
    partition). Events older than the partition watermark minus
    `allowed_lateness` are late (logged, not applied online); events more than
    `future_tolerance` ahead of the worker's clock are rejected.
    """

    name: str
    schema: EventSchema
    event_time: str
    key: str
    topic: str = ""
    partitions: int = 4
    allowed_lateness: Duration = 0
    future_tolerance: Duration = "5m"
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("StreamSource", self.name)
        if not self.topic:
            object.__setattr__(self, "topic", self.name)
        where = f"StreamSource {self.name!r}"
        _require_column(where, self.schema, self.event_time, "event_time", want={"timestamp"})
        _require_column(where, self.schema, self.key, "key", want={"string", "int"})
        if self.schema.field(self.key).required is False:
            raise DefinitionError(f"{where}: key field {self.key!r} must be required in schema {self.schema.name!r}")
        if not isinstance(self.partitions, int) or self.partitions < 1:
            raise DefinitionError(f"{where}: partitions must be a positive integer, got {self.partitions!r}")
        object.__setattr__(self, "allowed_lateness", to_ms(self.allowed_lateness, what=f"{where} allowed_lateness"))
        object.__setattr__(self, "future_tolerance", to_ms(self.future_tolerance, what=f"{where} future_tolerance"))

    @property
    def allowed_lateness_ms(self) -> int:
        return cast(int, self.allowed_lateness)  # normalized to ms in __post_init__

    @property
    def future_tolerance_ms(self) -> int:
        return cast(int, self.future_tolerance)

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "stream_source", "name": self.name, "schema": self.schema.to_dict(),
                "event_time": self.event_time, "key": self.key, "topic": self.topic,
                "partitions": self.partitions, "allowed_lateness": self.allowed_lateness_ms,
                "future_tolerance": self.future_tolerance_ms, "description": self.description}

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.to_dict())


@dataclass(frozen=True, kw_only=True)
class BatchSource:
    """Parquet files (a path or glob, relative paths are under the data dir).

    `created_time` breaks ties between rows with the same event time (newest
    created wins); without it, later rows in file order win.
    """

    name: str
    schema: EventSchema
    path: str
    event_time: str
    key: str
    created_time: str | None = None
    partitions: int = 1
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("BatchSource", self.name)
        where = f"BatchSource {self.name!r}"
        if not self.path:
            raise DefinitionError(f"{where}: path is empty; give a Parquet file or glob like 'profiles/*.parquet'")
        _require_column(where, self.schema, self.event_time, "event_time", want={"timestamp"})
        _require_column(where, self.schema, self.key, "key", want={"string", "int"})
        if self.created_time is not None:
            _require_column(where, self.schema, self.created_time, "created_time", want={"timestamp"})
        if not isinstance(self.partitions, int) or self.partitions < 1:
            raise DefinitionError(f"{where}: partitions must be a positive integer, got {self.partitions!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "batch_source", "name": self.name, "schema": self.schema.to_dict(), "path": self.path,
                "event_time": self.event_time, "key": self.key, "created_time": self.created_time,
                "partitions": self.partitions, "description": self.description}

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.to_dict())


Source = StreamSource | BatchSource


def _require_column(where: str, schema: EventSchema, column: str, role: str, *, want: set[str]) -> None:
    columns = schema.columns
    if column not in columns:
        raise DefinitionError(
            f"{where}: {role} field {column!r} is not in schema {schema.name!r} v{schema.version} "
            f"(fields: {', '.join(columns)}); add it to the schema or name an existing field"
        )
    if columns[column] not in want:
        raise DefinitionError(
            f"{where}: {role} field {column!r} has type {columns[column]!r}; it must be one of {sorted(want)}"
        )


@dataclass(frozen=True, kw_only=True)
class Aggregation:
    """`function` over `column` in a sliding `window`, kept in tiles of `hop`.

    `column="*"` counts events (only with `function="count"`). The hop
    defaults by window length (see `windows.default_hop_ms`); the window must
    be a whole number of hops. `name` defaults to `<column>_<function>_<window>`.
    """

    column: str
    function: AggFunction
    window: Duration
    hop: Duration | None = None
    name: str = ""

    def __post_init__(self) -> None:
        where = f"Aggregation {self.name or self.column + '/' + str(self.function)!r}"
        if self.function not in AGG_FUNCTIONS:
            raise DefinitionError(f"{where}: unknown function {self.function!r}; use one of {', '.join(AGG_FUNCTIONS)}")
        if self.column == "*" and self.function != "count":
            raise DefinitionError(f"{where}: column '*' only works with function 'count'; name a column")
        if self.column != "*":
            _check_name(f"{where} column", self.column)
        window_ms = to_ms(self.window, what=f"{where} window")
        if window_ms <= 0:
            raise DefinitionError(f"{where}: window must be positive")
        hop_ms = default_hop_ms(window_ms) if self.hop is None else to_ms(self.hop, what=f"{where} hop")
        if hop_ms <= 0:
            raise DefinitionError(f"{where}: hop must be positive")
        if window_ms % hop_ms:
            raise DefinitionError(
                f"{where}: window {format_ms(window_ms)} is not a multiple of hop {format_ms(hop_ms)}; "
                f"pick a hop that divides the window"
            )
        object.__setattr__(self, "window", window_ms)
        object.__setattr__(self, "hop", hop_ms)
        if not self.name:
            column = "events" if self.column == "*" else self.column
            object.__setattr__(self, "name", f"{column}_{self.function}_{format_ms(window_ms)}")
        _check_name("Aggregation", self.name)

    @property
    def window_ms(self) -> int:
        return cast(int, self.window)  # normalized to ms in __post_init__

    @property
    def hop_ms(self) -> int:
        return cast(int, self.hop)  # normalized to ms in __post_init__

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "function": self.function, "window": self.window_ms,
                "hop": self.hop_ms, "name": self.name}


@dataclass(frozen=True, kw_only=True)
class FeatureView:
    """Features of one entity computed from one source.

    Either `aggregations` (windowed, tiled) or `fields` (latest value: the
    newest row with `event_time <= t` and `event_time > t - ttl`) - not both.
    `transform` maps new column names to row-level DuckDB SQL expressions over
    the source's columns; it runs before aggregation, identically in the
    stream and the batch path.
    """

    name: str
    entity: Entity
    source: Source
    aggregations: Sequence[Aggregation] = ()
    fields: Sequence[str] = ()
    transform: Mapping[str, str] = field(default_factory=dict)
    ttl: Duration | None = None
    online: bool = True
    offline: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("FeatureView", self.name)
        where = f"FeatureView {self.name!r}"
        object.__setattr__(self, "aggregations", tuple(self.aggregations))
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "transform", _FrozenDict(self.transform))
        if bool(self.aggregations) == bool(self.fields):
            raise DefinitionError(
                f"{where}: declare either aggregations (windowed features) or fields (latest values), not "
                f"{'both' if self.aggregations else 'neither'}"
            )
        if self.ttl is not None:
            if self.aggregations:
                raise DefinitionError(f"{where}: ttl applies to latest-value views; windows bound aggregations")
            ttl_ms = to_ms(self.ttl, what=f"{where} ttl")
            if ttl_ms <= 0:
                raise DefinitionError(f"{where}: ttl must be positive (or None for no expiry)")
            object.__setattr__(self, "ttl", ttl_ms)
        columns = self.input_columns  # validates the transform
        if self.entity.join_key not in columns:
            raise DefinitionError(
                f"{where}: entity {self.entity.name!r} join key {self.entity.join_key!r} is not a column of source "
                f"{self.source.name!r} (columns: {', '.join(columns)}); add it to the schema or use another entity"
            )
        for agg in self.aggregations:
            self._check_aggregation(agg, columns)
        for name in self.fields:
            if name not in columns:
                raise DefinitionError(
                    f"{where}: field {name!r} is not a column of source {self.source.name!r} or the transform "
                    f"(columns: {', '.join(columns)})"
                )
        names = self.feature_names
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DefinitionError(f"{where}: duplicate feature names {duplicates}; give each aggregation a unique name")

    def _check_aggregation(self, agg: Aggregation, columns: Mapping[str, str]) -> None:
        where = f"FeatureView {self.name!r} aggregation {agg.name!r}"
        if agg.column == "*":
            return
        if agg.column not in columns:
            raise DefinitionError(
                f"{where}: column {agg.column!r} is not a column of source {self.source.name!r} or the transform "
                f"(columns: {', '.join(columns)})"
            )
        if agg.function in ("sum", "mean", "min", "max", "stddev") and columns[agg.column] not in NUMERIC_TYPES:
            raise DefinitionError(
                f"{where}: {agg.function} needs a numeric column but {agg.column!r} is {columns[agg.column]!r}; "
                f"cast it in the transform or use count/last"
            )

    @cached_property
    def input_columns(self) -> dict[str, str]:
        """Columns a view's features may use: the source schema plus the transform outputs."""
        from feature_store.transforms import transform_output_types  # duckdb binder, imported lazily

        columns = dict(self.source.schema.columns)
        for name in self.transform:
            _check_name(f"FeatureView {self.name!r} transform output", name)
            if name in columns:
                raise DefinitionError(
                    f"FeatureView {self.name!r}: transform output {name!r} shadows a source column; rename it"
                )
        columns.update(transform_output_types(self.name, self.source.schema, dict(self.transform)))
        return columns

    @property
    def is_windowed(self) -> bool:
        return bool(self.aggregations)

    @property
    def feature_names(self) -> list[str]:
        return [a.name for a in self.aggregations] if self.aggregations else list(self.fields)

    @property
    def ttl_ms(self) -> int | None:
        return None if self.ttl is None else cast(int, self.ttl)

    @property
    def hops_ms(self) -> list[int]:
        """Distinct hops of the view's aggregations, ascending: one tile series per hop."""
        return sorted({a.hop_ms for a in self.aggregations})

    @property
    def co_partitioned(self) -> bool:
        """True when the view's entity is the source's message key, so one partition holds each entity."""
        return self.entity.join_key == self.source.key

    def feature_type(self, feature: str) -> str:
        """Value type of a feature: 'int', 'float', 'string', ..."""
        columns = self.input_columns
        for agg in self.aggregations:
            if agg.name == feature:
                if agg.function == "count":
                    return "int"
                if agg.function in ("sum", "mean", "stddev"):
                    return "float"
                return "float" if agg.column == "*" else columns[agg.column]
        if feature in self.fields:
            return columns[feature]
        raise DefinitionError(f"FeatureView {self.name!r} has no feature {feature!r} (has: {self.feature_names})")

    def state_dict(self) -> dict[str, Any]:
        """What shapes the stored state; a change here needs new online keys and a backfill."""
        return {"entity": self.entity.join_key, "source": self.source.name, "key": self.source.key,
                "transform": dict(self.transform), "aggregations": [a.to_dict() for a in self.aggregations],
                "fields": list(self.fields)}

    @property
    def state_fingerprint(self) -> str:
        """Short print of `state_dict`; it is part of the online key, so a breaking change never mixes state."""
        return fingerprint_of(self.state_dict())[:8]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "feature_view", "name": self.name, "entity": self.entity.name, "source": self.source.name,
                "aggregations": [a.to_dict() for a in self.aggregations], "fields": list(self.fields),
                "transform": dict(self.transform), "ttl": self.ttl_ms, "online": self.online,
                "offline": self.offline, "description": self.description}

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.to_dict())


StalenessAction = Literal["serve", "default", "reject"]


@dataclass(frozen=True, kw_only=True)
class StalenessPolicy:
    """What serving does when a feature's event-time age exceeds `max_age`.

    serve: return the value with status 'stale'; default: return the declared
    default with status 'stale'; reject: refuse the request.
    """

    max_age: Duration
    action: StalenessAction = "serve"

    def __post_init__(self) -> None:
        if self.action not in ("serve", "default", "reject"):
            raise DefinitionError(f"StalenessPolicy: action must be serve, default or reject, got {self.action!r}")
        object.__setattr__(self, "max_age", to_ms(self.max_age, what="StalenessPolicy max_age"))

    @property
    def max_age_ms(self) -> int:
        return cast(int, self.max_age)

    def to_dict(self) -> dict[str, Any]:
        return {"max_age": self.max_age_ms, "action": self.action}


@dataclass(frozen=True, kw_only=True)
class FeatureService:
    """A named selection of features a model consumes.

    `features` holds "view:feature" references or whole views. `staleness`
    maps a reference (or "*" for all) to a policy. `request_fields` are
    values the caller sends with each request (name -> type); `derived` maps
    a new feature name to an expression over request fields and fetched
    features (see `feature_store.expressions`), computed identically in
    serving and in training sets.
    """

    name: str
    features: Sequence[str | FeatureView]
    staleness: Mapping[str, StalenessPolicy] = field(default_factory=dict)
    request_fields: Mapping[str, str] = field(default_factory=dict)
    derived: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("FeatureService", self.name)
        where = f"FeatureService {self.name!r}"
        refs: list[str] = []
        for item in self.features:
            if isinstance(item, FeatureView):
                refs.extend(f"{item.name}:{f}" for f in item.feature_names)
            elif isinstance(item, str) and item.count(":") == 1 and all(item.split(":")):
                refs.append(item)
            else:
                raise DefinitionError(f"{where}: feature {item!r} must be a FeatureView or a 'view:feature' string")
        if not refs:
            raise DefinitionError(f"{where}: select at least one feature")
        duplicates = sorted({r for r in refs if refs.count(r) > 1})
        if duplicates:
            raise DefinitionError(f"{where}: features listed twice: {duplicates}")
        object.__setattr__(self, "features", tuple(refs))
        for ref in self.staleness:
            if ref != "*" and ref not in refs:
                raise DefinitionError(f"{where}: staleness policy for {ref!r}, which the service does not select")
        object.__setattr__(self, "staleness", _FrozenDict(self.staleness))
        for name, dtype in self.request_fields.items():
            _check_name(f"{where} request field", name)
            if dtype not in ("string", "int", "float", "bool"):
                raise DefinitionError(f"{where}: request field {name!r} type must be string, int, float or bool")
        object.__setattr__(self, "request_fields", _FrozenDict(self.request_fields))
        for name in self.derived:
            _check_name(f"{where} derived feature", name)
        object.__setattr__(self, "derived", _FrozenDict(self.derived))

    @property
    def feature_refs(self) -> tuple[str, ...]:
        return tuple(str(f) for f in self.features)

    @property
    def view_names(self) -> list[str]:
        return sorted({ref.split(":")[0] for ref in self.feature_refs})

    def policy_for(self, ref: str) -> StalenessPolicy | None:
        return self.staleness.get(ref) or self.staleness.get("*")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "feature_service", "name": self.name, "features": list(self.feature_refs),
                "staleness": {k: v.to_dict() for k, v in sorted(self.staleness.items())},
                "request_fields": dict(self.request_fields), "derived": dict(self.derived),
                "description": self.description}

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.to_dict())


class _FrozenDict(dict[str, Any]):
    """A dict that refuses mutation and hashes by content, so specs stay frozen and hashable."""

    def __hash__(self) -> int:  # type: ignore[override]  # content hash for frozen specs
        return hash(orjson.dumps({k: _plain(v) for k, v in self.items()}, option=orjson.OPT_SORT_KEYS))

    def _readonly(self, *args: object, **kwargs: object) -> None:
        raise TypeError("definitions are frozen; build a new one instead")

    __setitem__ = __delitem__ = _readonly
    update = pop = popitem = clear = setdefault = _readonly  # type: ignore[assignment]


def _plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value
