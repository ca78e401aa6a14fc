"""Translate our field types into JSON Schema (draft 7) for structural checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas.fields import Field

__all__ = ["INT64_MAX", "INT64_MIN", "event_json_schema", "field_json_schema"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
DRAFT = "http://json-schema.org/draft-07/schema#"

_JSON_TYPES: dict[str, list[str]] = {
    "string": ["string"],
    "int": ["integer"],
    "float": ["number"],
    "bool": ["boolean"],
    # Parsing and the timezone rule live in `to_epoch_ms`, which names the fix.
    "timestamp": ["number", "string"],
}
_TIMESTAMP_NOTE = "event time: epoch milliseconds (number) or an ISO-8601 string with a timezone"


def field_json_schema(field: Field) -> dict[str, Any]:
    """The JSON Schema of one field's value (null included when the field accepts it)."""
    types = _JSON_TYPES[field.type] + (["null"] if field.accepts_null else [])
    schema: dict[str, Any] = {"type": types[0] if len(types) == 1 else types}
    if field.type == "int":  # Arrow, DuckDB and Redis hold ints as int64
        schema["minimum"] = INT64_MIN
        schema["maximum"] = INT64_MAX
    description = field.description or (_TIMESTAMP_NOTE if field.type == "timestamp" else "")
    if description:
        schema["description"] = description
    return schema


def event_json_schema(
    *, title: str, description: str, fields: Sequence[tuple[str, Field]],
    require_any: Sequence[Sequence[str]],
) -> dict[str, Any]:
    """The JSON Schema of a whole event: known fields only, required ones present."""
    schema: dict[str, Any] = {
        "$schema": DRAFT,
        "title": title,
        "type": "object",
        "properties": {name: field_json_schema(field) for name, field in fields},
        "required": [name for name, field in fields if field.required],
        "additionalProperties": False,
    }
    if description:
        schema["description"] = description
    if require_any:
        schema["allOf"] = [
            {"anyOf": [{"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in group]}
            for group in require_any
        ]
    return schema
