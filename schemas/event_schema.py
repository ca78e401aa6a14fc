"""`EventSchema`: a versioned, named set of fields that every event of a source obeys."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import orjson

from schemas import _columnar, _tabular
from schemas._json_schema import event_json_schema
from schemas._validator import EventValidator
from schemas.errors import SchemaError
from schemas.fields import Field

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["BatchValidation", "EventSchema", "TableValidation"]

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")  # schema names double as topic names
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # usable as SQL and Arrow column names unquoted
_DICT_KEYS = frozenset({"name", "version", "description", "fields", "require_any"})
_RAW_JSON = (bytes, bytearray, memoryview, str)


@dataclass(frozen=True, kw_only=True)
class BatchValidation:
    """Outcome of `validate_batch`: good events normalized, bad ones with a one-line reason.

    `valid_index[i]` is the input position of `valid[i]`; `invalid` holds
    (input position, reason) pairs, reasons joining the field errors with "; ".
    """

    valid: list[dict[str, Any]]
    valid_index: list[int]
    invalid: list[tuple[int, str]]


@dataclass(frozen=True, kw_only=True)
class TableValidation:
    """Outcome of `validate_records`: row i of `table` is record i normalized (all null when invalid).

    `table` has the columns of `arrow_schema(epoch_ms=True)`, every one
    nullable; `invalid` holds (input position, reason) pairs as in `validate_batch`.
    """

    table: pa.Table
    invalid: list[tuple[int, str]]


@dataclass(frozen=True, init=False)
class EventSchema:
    """A named, versioned event schema: the contract between producers and feature views.

    `fields` is held as an ordered tuple of (name, Field) pairs so the schema
    is immutable and hashable; pass a dict. `require_any` lists groups of
    fields of which at least one must be set (not null) in every event.
    """

    name: str
    version: int
    fields: tuple[tuple[str, Field], ...]
    description: str = ""
    require_any: tuple[tuple[str, ...], ...] = ()

    def __init__(
        self, *, name: str, version: int, fields: Mapping[str, Field] | Iterable[tuple[str, Field]],
        description: str = "", require_any: Iterable[Iterable[str]] = (),
    ) -> None:
        pairs = tuple(fields.items()) if isinstance(fields, Mapping) else tuple(fields)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "fields", pairs)
        object.__setattr__(self, "description", description)
        if isinstance(require_any, str) or any(isinstance(group, str) for group in require_any):
            raise SchemaError(f"EventSchema {name!r}: require_any takes groups of names, e.g. [('a', 'b')]")
        object.__setattr__(self, "require_any", tuple(tuple(group) for group in require_any))
        self._check()

    def _check(self) -> None:
        if not isinstance(self.name, str) or not _SCHEMA_NAME.match(self.name):
            raise SchemaError(
                f"EventSchema name {self.name!r} is not valid; use letters, digits, '_', '.', '-' "
                "and start with a letter or '_'"
            )
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise SchemaError(f"EventSchema {self.name!r}: version must be an int >= 1, got {self.version!r}")
        if not isinstance(self.description, str):
            raise SchemaError(f"EventSchema {self.name!r}: description must be a string")
        if not self.fields:
            raise SchemaError(f"EventSchema {self.label}: declare at least one field")
        seen: set[str] = set()
        for pair in self.fields:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise SchemaError(f"EventSchema {self.label}: fields must be (name, Field) pairs, got {pair!r}")
            field_name, field = pair
            if not isinstance(field_name, str) or not _FIELD_NAME.match(field_name):
                raise SchemaError(
                    f"EventSchema {self.label}: field name {field_name!r} is not valid; use letters, "
                    "digits and '_' and start with a letter or '_'"
                )
            if field_name in seen:
                raise SchemaError(f"EventSchema {self.label}: field {field_name!r} is declared twice")
            seen.add(field_name)
            if not isinstance(field, Field):
                raise SchemaError(
                    f"EventSchema {self.label}: field {field_name!r} must be a Field, e.g. Field('string'), "
                    f"got {field!r}"
                )
        for group in self.require_any:
            fields = dict(self.fields)
            unknown = [name for name in group if name not in fields]
            if not group or unknown:
                raise SchemaError(
                    f"EventSchema {self.label}: require_any group {group!r} must name fields of the schema "
                    f"(unknown: {unknown}); fields are {', '.join(fields)}"
                )
            always_set = [name for name in group if not fields[name].accepts_null]
            if always_set:
                raise SchemaError(
                    f"EventSchema {self.label}: require_any group {group!r} always holds because "
                    f"{always_set} can never be null; drop the group or make those fields optional"
                )

    # -- reading the schema ------------------------------------------------------------

    @property
    def label(self) -> str:
        """`name vN`, as error messages show the schema."""
        return f"{self.name} v{self.version}"

    @property
    def columns(self) -> dict[str, str]:
        """Field name -> type name, in declaration order."""
        return {name: field.type for name, field in self.fields}

    def field(self, name: str) -> Field:
        for field_name, field in self.fields:
            if field_name == name:
                return field
        raise SchemaError(f"field {name!r} is not in {self.label}; fields are {', '.join(self.columns)}")

    # -- identity and (de)serialization ------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form; `from_dict` inverts it and `fingerprint` hashes it."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "fields": [{"name": name, **field.to_dict()} for name, field in self.fields],
            "require_any": [list(group) for group in self.require_any],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EventSchema:
        if not isinstance(data, Mapping):
            raise SchemaError(f"EventSchema.from_dict expects an object, got {type(data).__name__}")
        unknown = sorted(set(data) - _DICT_KEYS)
        missing = sorted({"name", "version", "fields"} - set(data))
        if unknown or missing:
            raise SchemaError(
                f"EventSchema.from_dict({data.get('name')!r}): unknown keys {unknown}, missing keys {missing}; "
                f"expected the keys of EventSchema.to_dict(): {sorted(_DICT_KEYS)}"
            )
        fields = data["fields"]
        if not isinstance(fields, list):
            raise SchemaError(f"EventSchema.from_dict({data['name']!r}): 'fields' must be a list of objects")
        pairs = []
        for index, item in enumerate(fields):
            if not isinstance(item, Mapping) or "name" not in item:
                raise SchemaError(
                    f"EventSchema.from_dict({data['name']!r}): fields[{index}] must be an object with a 'name'"
                )
            rest = {key: value for key, value in item.items() if key != "name"}
            pairs.append((item["name"], Field.from_dict(rest, where=f"field {item['name']!r}")))
        return cls(name=data["name"], version=data["version"], fields=pairs,
                   description=data.get("description", ""), require_any=data.get("require_any", ()))

    @cached_property
    def fingerprint(self) -> str:
        """sha256 hex of the canonical JSON of `to_dict()`: equal content, equal fingerprint."""
        return hashlib.sha256(orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)).hexdigest()

    def to_json_schema(self) -> dict[str, Any]:
        """JSON Schema (draft 7) of the structural rules; timestamp parsing is `to_epoch_ms`'s."""
        return event_json_schema(title=self.label, description=self.description, fields=self.fields,
                                 require_any=self.require_any)

    def __getstate__(self) -> dict[str, Any]:
        # the compiled validator holds generated code; pickles carry only the spec
        return {key: value for key, value in self.__dict__.items() if key not in ("_validator", "_records_schema")}

    # -- validation --------------------------------------------------------------------

    @cached_property
    def _validator(self) -> EventValidator:
        return EventValidator(label=self.label, fields=self.fields, require_any=self.require_any,
                              json_schema=self.to_json_schema())

    def validate(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Return a normalized copy of `event`, or raise `SchemaError` listing every bad field.

        Normalized: every declared field present in declaration order (absent
        optional fields as None), timestamps as int epoch ms (UTC), floats as
        finite float, ints as int. Unknown fields and bools given for ints are
        refused. The input is never modified.
        """
        out, errors = self._validator.check(event)
        if out is None:
            raise SchemaError(f"event does not match {self.label}: {'; '.join(errors)}", errors=errors)
        return out

    def validate_batch(self, events: Sequence[Mapping[str, Any] | bytes]) -> BatchValidation:
        """Validate many events (dicts or raw JSON bytes) at once; never raises for a bad event."""
        check = self._validator.check
        valid: list[dict[str, Any]] = []
        valid_index: list[int] = []
        invalid: list[tuple[int, str]] = []
        for index, item in enumerate(events):
            if isinstance(item, _RAW_JSON):
                try:
                    item = orjson.loads(item)
                except orjson.JSONDecodeError as exc:
                    invalid.append((index, f"not valid JSON: {exc}"))
                    continue
            out, errors = check(item)
            if out is None:
                invalid.append((index, "; ".join(errors)))
            else:
                valid.append(out)
                valid_index.append(index)
        return BatchValidation(valid=valid, valid_index=valid_index, invalid=invalid)

    def validate_records(self, values: Sequence[bytes | None]) -> TableValidation:
        """Validate raw JSON records (None: a tombstone, invalid) into one Arrow table; never raises.

        Same verdicts, values and reasons as `validate_batch`. A batch of good
        compact JSON objects with epoch-ms timestamps takes the columnar path
        (`schemas._columnar`, one Arrow parse); any other batch is judged
        record by record.
        """
        schema = self._records_schema
        table = _columnar.read_valid(values, schema, self.fields, self.require_any)  # type: ignore[arg-type]
        if table is not None:  # (a None, a tombstone, fails its join: those go record by record)
            return TableValidation(table=table, invalid=[])
        result = self.validate_batch([b"null" if v is None else v for v in values])
        rows: list[dict[str, Any] | None] = [None] * len(values)
        for index, event in zip(result.valid_index, result.valid, strict=True):
            rows[index] = event
        return TableValidation(table=_tabular.rows_to_arrow(schema, rows, label=self.label), invalid=result.invalid)

    def validate_record_groups(self, groups: Sequence[Sequence[bytes | None]]) -> list[TableValidation]:
        """`validate_records` of each group, with one columnar parse for all of them when every record is good.

        The columnar path's cost is mostly fixed (one Arrow parse, a dozen
        compute calls), so the stream worker validates a fetch's partitions
        together. When that parse refuses the whole, each group is judged on
        its own: a bad record sends only its own group down the per-record path.
        """
        if len(groups) == 1:
            return [self.validate_records(groups[0])]
        values = [value for group in groups for value in group]
        # a None (tombstone) is refused there, as in validate_records
        table = _columnar.read_valid(values, self._records_schema, self.fields, self.require_any)  # type: ignore[arg-type]
        if table is None:
            return [self.validate_records(group) for group in groups]
        out = []
        start = 0
        for group in groups:
            out.append(TableValidation(table=table.slice(start, len(group)), invalid=[]))
            start += len(group)
        return out

    @cached_property
    def _records_schema(self) -> pa.Schema:
        schema = self.arrow_schema(epoch_ms=True)
        return _tabular.all_nullable(schema)

    # -- storage types -----------------------------------------------------------------

    def arrow_schema(self, *, epoch_ms: bool = False) -> pa.Schema:
        """Arrow schema; timestamps are timestamp[ms, UTC], or int64 epoch ms with `epoch_ms=True`.

        `to_arrow` builds tables with `arrow_schema(epoch_ms=True)`;
        `table.cast(schema.arrow_schema())` turns them into real timestamps.
        """
        metadata = {"featurestream.schema": self.name, "featurestream.version": str(self.version),
                    "featurestream.fingerprint": self.fingerprint}
        return _tabular.arrow_schema(self.fields, epoch_ms=epoch_ms, metadata=metadata)

    def to_arrow(self, valid_events: Sequence[dict[str, Any]]) -> pa.Table:
        """Arrow table of normalized events; timestamp columns are int64 epoch milliseconds (UTC)."""
        return _tabular.to_arrow(self.arrow_schema(epoch_ms=True), valid_events, label=self.label)

    def duckdb_columns(self) -> dict[str, str]:
        """Field name -> DuckDB type; timestamps are BIGINT epoch milliseconds (UTC)."""
        return {name: _tabular.DUCKDB_TYPES[field.type] for name, field in self.fields}
