"""Validate and normalize events of one schema, fast on the good path.

Good events pass one compiled JSON Schema check (fastjsonschema generates
plain Python once per schema) and a short normalization. Only a failing event
pays for the explanation: a twin check compiled with `fast_fail=False`
reports every offending field, so a producer can fix all of them in one go.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import fastjsonschema

from schemas._describe import describe
from schemas.errors import SchemaError
from schemas.fields import Field
from schemas.timestamps import to_epoch_ms

__all__ = ["EventValidator"]

_Check = Callable[[Any], Any]
_EXPECTED: dict[str, str] = {
    "string": "string",
    "int": "int",
    "float": "float",
    "bool": "bool",
    "timestamp": "timestamp (epoch ms or an ISO-8601 string with a timezone)",
}


class EventValidator:
    """The compiled form of one `EventSchema`; build it once and reuse it."""

    def __init__(
        self, *, label: str, fields: Sequence[tuple[str, Field]], require_any: Sequence[Sequence[str]],
        json_schema: Mapping[str, Any],
    ) -> None:
        self._label = label
        self._json_schema = dict(json_schema)
        self._fast: _Check = fastjsonschema.compile(self._json_schema)
        self._collect: _Check | None = None  # the collect-every-error twin, compiled on first failure
        self._names = tuple(name for name, _ in fields)
        self._known = frozenset(self._names)
        self._types = {name: field.type for name, field in fields}
        self._required = tuple(name for name, field in fields if field.required)
        self._timestamps = tuple(name for name, field in fields if field.type == "timestamp")
        self._floats = tuple(name for name, field in fields if field.type == "float")
        self._ints = tuple(name for name, field in fields if field.type == "int")
        self._require_any = tuple(tuple(group) for group in require_any)

    def check(self, event: object) -> tuple[dict[str, Any] | None, list[str]]:
        """(normalized copy, []) for a good event, (None, one line per problem) otherwise."""
        if type(event) is not dict:
            if not isinstance(event, Mapping):
                return None, [f"event: expected an object of field names to values, got {describe(event)}"]
            event = dict(event)
        try:
            self._fast(event)
        except fastjsonschema.JsonSchemaValueException as exc:
            return None, self._explain(event, exc.message)
        out = {name: event.get(name) for name in self._names}
        problems: dict[str, str] = {}
        self._normalize(out, problems)
        if problems:  # the compiled check already enforced require_any; normalizing keeps values non-null
            return None, [problems[name] for name in self._names if name in problems]
        return out, []

    def _explain(self, event: dict[Any, Any], failure: str) -> list[str]:
        """One line per problem of an event the compiled check refused, in field order."""
        problems, unknown = self._structure(event)
        out = {name: event.get(name) for name in self._names}
        self._normalize(out, problems)
        lines = [problems[name] for name in self._names if name in problems]
        lines += unknown
        lines += self._missing_groups(out, problems)
        return lines or [f"event: {failure}"]  # the two compiled checks disagree: still refuse

    def _structure(self, event: dict[Any, Any]) -> tuple[dict[str, str], list[str]]:
        """Every structural problem of a failing event: missing, unknown and mistyped fields."""
        if self._collect is None:
            self._collect = fastjsonschema.compile(self._json_schema, fast_fail=False)
        problems = {name: f"{name}: required field missing" for name in self._required if name not in event}
        unknown = [
            f"unknown field {key!r} (not in {self._label}; add it to the schema or drop it)"
            for key in event if key not in self._known
        ]
        errors: list[fastjsonschema.JsonSchemaValueException] = []
        try:
            self._collect(event)
        except fastjsonschema.JsonSchemaValuesException as exc:
            errors = exc.errors
        except fastjsonschema.JsonSchemaValueException as exc:
            errors = [exc]
        for error in errors:
            name = (error.name or "").removeprefix("data.")
            if name in self._known:  # root-level rules (required, unknown, anyOf) are judged by name above
                problems[name] = self._field_line(name, error.value, error.rule)
        return problems, unknown

    def _field_line(self, name: str, value: Any, rule: str | None) -> str:
        if rule in ("minimum", "maximum"):
            return f"{name}: {describe(value)} is outside the int64 range"
        if value is None:
            return f"{name}: expected {self._types[name]}, got null (the field is not nullable)"
        return f"{name}: expected {_EXPECTED[self._types[name]]}, got {describe(value)}"

    def _normalize(self, out: dict[str, Any], problems: dict[str, str]) -> None:
        """In place: timestamps to epoch ms, floats to finite float, ints to plain int.

        Fields already in `problems` keep their raw value and are not judged twice.
        """
        for name in self._timestamps:
            value = out[name]
            if value is None or name in problems:
                continue
            try:
                out[name] = to_epoch_ms(value)
            except SchemaError as exc:
                problems[name] = f"{name}: {exc}"
        for name in self._floats:
            value = out[name]
            if value is None or name in problems or (type(value) is float and math.isfinite(value)):
                continue
            try:
                number = float(value)
            except (OverflowError, ValueError):  # an int beyond float range, Decimal('sNaN')
                number = math.inf
            if math.isfinite(number):
                out[name] = number
            else:
                problems[name] = f"{name}: expected a finite float, got {describe(value)}"
        for name in self._ints:
            value = out[name]
            if value is not None and type(value) is not int and name not in problems:
                out[name] = int(value)  # an integral float such as 3.0, or an int subclass

    def _missing_groups(self, out: dict[str, Any], problems: dict[str, str]) -> list[str]:
        return [
            f"{', '.join(group)}: {self._label} needs at least one of these set, but all are missing "
            f"or null; send {' or '.join(group)}"
            for group in self._require_any
            if all(out[name] is None and name not in problems for name in group)
        ]
