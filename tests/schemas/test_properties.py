"""Property tests: random schemas, random events drawn from them, random mutations."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import FIELD_TYPES, EventSchema, Field
from schemas.errors import SchemaError
from schemas.timestamps import MAX_EPOCH_MS, MIN_EPOCH_MS

INT64 = {"min_value": -(2**63), "max_value": 2**63 - 1}
PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True)
fields = st.builds(Field, st.sampled_from(FIELD_TYPES), required=st.booleans(), nullable=st.booleans())
schemas = st.dictionaries(names, fields, min_size=1, max_size=8).map(
    lambda declared: EventSchema(name="random", version=1, fields=declared)
)

_offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda minutes: timezone(timedelta(minutes=minutes)))
_iso_times = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=_offsets).map(
    lambda moment: moment.isoformat().replace("+00:00", "Z")
)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "string": st.text(max_size=20),
    "int": st.integers(**INT64) | st.integers(-(2**53), 2**53).map(float),
    "float": st.floats(allow_nan=False, allow_infinity=False) | st.integers(**INT64),
    "bool": st.booleans(),
    "timestamp": st.integers(MIN_EPOCH_MS, MAX_EPOCH_MS) | st.floats(MIN_EPOCH_MS, MAX_EPOCH_MS) | _iso_times,
}
WRONG: dict[str, list[Any]] = {
    "string": [1, 1.5, True, ["a"], {"a": 1}],
    "int": ["1", 1.5, True, [1], 2**63],
    "float": ["1.5", True, [1.0], float("nan"), float("inf")],
    "bool": [1, "true", 0.0, [True]],
    "timestamp": [True, [1], {"t": 1}, "not a time", "2024-01-01T00:00:00", float("inf"), 10**20],
}


def value_of(field: Field) -> st.SearchStrategy[Any]:
    return VALUES[field.type] | st.none() if field.accepts_null else VALUES[field.type]


def events_of(schema: EventSchema) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {name: value_of(field) for name, field in schema.fields if field.required},
        optional={name: value_of(field) for name, field in schema.fields if not field.required},
    )


def mutate(data: st.DataObject, schema: EventSchema, event: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A copy of `event` broken in one random way, and the start of the line that must report it."""
    required = [name for name, field in schema.fields if field.required]
    kinds = ["wrong_type", "unknown"] + (["missing"] if required else [])
    kind = data.draw(st.sampled_from(kinds))
    broken = dict(event)
    if kind == "missing":
        name = data.draw(st.sampled_from(required))
        del broken[name]
        return broken, f"{name}: required field missing"
    if kind == "unknown":
        name = data.draw(names.filter(lambda candidate: candidate not in schema.columns))
        broken[name] = data.draw(st.integers() | st.text())
        return broken, f"unknown field {name!r} (not in random v1; add it to the schema or drop it)"
    name, field = data.draw(st.sampled_from(schema.fields))
    wrong = WRONG[field.type] + ([] if field.accepts_null else [None])
    broken[name] = data.draw(st.sampled_from(wrong))
    return broken, f"{name}: "


@PROPERTY_SETTINGS
@given(data=st.data(), schema=schemas)
def test_valid_events_are_accepted_and_normalized_idempotently(data: st.DataObject, schema: EventSchema) -> None:
    event = data.draw(events_of(schema))
    out = schema.validate(event)
    assert schema.validate(out) == out
    assert list(out) == list(schema.columns)
    for name, field in schema.fields:
        value: Any = out[name]
        if value is None:
            assert field.accepts_null
            continue
        expected = {"string": str, "int": int, "float": float, "bool": bool, "timestamp": int}[field.type]
        assert type(value) is expected
        if field.type == "timestamp":
            assert isinstance(value, int)
            assert MIN_EPOCH_MS <= value <= MAX_EPOCH_MS


@PROPERTY_SETTINGS
@given(data=st.data(), schema=schemas)
def test_mutated_events_are_refused_naming_the_field(data: st.DataObject, schema: EventSchema) -> None:
    broken, line_start = mutate(data, schema, data.draw(events_of(schema)))
    with pytest.raises(SchemaError) as info:
        schema.validate(broken)
    assert any(line.startswith(line_start) for line in info.value.errors), info.value.errors


def _batch_item(data: st.DataObject, schema: EventSchema) -> Any:
    event = data.draw(events_of(schema))
    kind = data.draw(st.sampled_from(["valid", "broken", "valid_json", "broken_json", "garbage"]))
    if kind in ("broken", "broken_json"):
        event, _ = mutate(data, schema, event)
    if kind in ("valid_json", "broken_json"):
        try:
            return orjson.dumps(event)
        except orjson.JSONEncodeError:  # e.g. an int beyond 64 bits: send the dict instead
            return event
    if kind == "garbage":
        return data.draw(st.binary(max_size=12) | st.sampled_from([b"[]", b"null", b"{", b'{"a": }']))
    return event


@PROPERTY_SETTINGS
@given(data=st.data(), schema=schemas)
def test_validate_batch_agrees_with_validate(data: st.DataObject, schema: EventSchema) -> None:
    items = [_batch_item(data, schema) for _ in range(data.draw(st.integers(0, 12)))]
    result = schema.validate_batch(items)
    expected_valid, expected_invalid = [], []
    for index, item in enumerate(items):
        if isinstance(item, bytes):
            try:
                item = orjson.loads(item)
            except orjson.JSONDecodeError:
                assert dict(result.invalid)[index].startswith("not valid JSON: ")
                expected_invalid.append((index, dict(result.invalid)[index]))
                continue
        try:
            expected_valid.append((index, schema.validate(item)))
        except SchemaError as exc:
            expected_invalid.append((index, "; ".join(exc.errors)))
    assert list(zip(result.valid_index, result.valid, strict=True)) == expected_valid
    assert result.invalid == expected_invalid
