from __future__ import annotations

import pickle
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import duckdb
import fastjsonschema
import orjson
import pyarrow as pa
import pytest

from schemas import EventSchema, Field
from schemas.errors import SchemaError

TXN = EventSchema(
    name="transactions",
    version=2,
    description="Card transactions.",
    fields={
        "user_id": Field("string"),
        "amount": Field("float"),
        "count": Field("int", required=False),
        "created_at": Field("timestamp"),
        "is_card": Field("bool", nullable=True),
        "note": Field("string", required=False, nullable=True),
    },
)
GOOD: dict[str, Any] = {"user_id": "u1", "amount": 9.5, "count": 2, "created_at": 1_704_067_200_000, "is_card": True}
UNKNOWN_FOO = "unknown field 'foo' (not in transactions v2; add it to the schema or drop it)"


def errors_of(event: Mapping[str, Any], schema: EventSchema = TXN) -> list[str]:
    with pytest.raises(SchemaError) as info:
        schema.validate(event)
    return info.value.errors


# -- construction ------------------------------------------------------------------------------


def test_fields_are_an_ordered_tuple_and_columns_a_dict() -> None:
    assert isinstance(TXN.fields, tuple)
    assert [name for name, _ in TXN.fields] == ["user_id", "amount", "count", "created_at", "is_card", "note"]
    assert TXN.columns == {"user_id": "string", "amount": "float", "count": "int", "created_at": "timestamp",
                           "is_card": "bool", "note": "string"}
    assert TXN.field("count") == Field("int", required=False)
    assert TXN.label == "transactions v2"


def test_unknown_field_lookup_names_the_fields() -> None:
    with pytest.raises(SchemaError, match="field 'nope' is not in transactions v2; fields are user_id, amount"):
        TXN.field("nope")


def test_schema_is_frozen_hashable_and_keyword_only() -> None:
    with pytest.raises(AttributeError):
        TXN.version = 3  # type: ignore[misc]  # deliberately mutating
    assert hash(TXN) == hash(EventSchema.from_dict(TXN.to_dict()))
    with pytest.raises(TypeError):
        EventSchema("transactions", 1, {"a": Field("int")})  # type: ignore[call-arg]  # deliberately positional


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "bad name"}, "EventSchema name 'bad name' is not valid"),
        ({"version": 0}, "version must be an int >= 1, got 0"),
        ({"version": True}, "version must be an int >= 1, got True"),
        ({"fields": {}}, "declare at least one field"),
        ({"fields": {"user id": Field("string")}}, "field name 'user id' is not valid"),
        ({"fields": {"a": "string"}}, r"field 'a' must be a Field, e.g. Field\('string'\)"),
        ({"fields": [("a", Field("int")), ("a", Field("int"))]}, "field 'a' is declared twice"),
        ({"require_any": [("a", "zz")]}, r"require_any group \('a', 'zz'\) must name fields of the schema"),
        ({"require_any": [("a", "b")]}, r"always holds because \['a'\] can never be null"),
        ({"require_any": ["b"]}, "require_any takes groups of names"),
    ],
)
def test_invalid_schemas_name_the_problem(kwargs: dict[str, Any], match: str) -> None:
    spec: dict[str, Any] = {"name": "s", "version": 1,
                            "fields": {"a": Field("int"), "b": Field("int", required=False)}}
    with pytest.raises(SchemaError, match=match):
        EventSchema(**(spec | kwargs))


# -- identity -------------------------------------------------------------------------------


def test_to_dict_from_dict_round_trip_through_json() -> None:
    data = orjson.loads(orjson.dumps(TXN.to_dict()))
    again = EventSchema.from_dict(data)
    assert again == TXN
    assert again.fingerprint == TXN.fingerprint
    assert again.to_dict() == TXN.to_dict()


def test_from_dict_is_strict() -> None:
    with pytest.raises(SchemaError, match=r"unknown keys \['colour'\], missing keys \['version'\]"):
        EventSchema.from_dict({"name": "s", "fields": [], "colour": "red"})
    with pytest.raises(SchemaError, match=r"fields\[0\] must be an object with a 'name'"):
        EventSchema.from_dict({"name": "s", "version": 1, "fields": [{"type": "int"}]})


def test_fingerprint_is_stable_and_content_addressed() -> None:
    same = EventSchema(name="transactions", version=2, description="Card transactions.", fields=dict(TXN.fields))
    assert same.fingerprint == TXN.fingerprint
    assert len(TXN.fingerprint) == 64
    assert int(TXN.fingerprint, 16) >= 0
    changed = [
        EventSchema(name="transactions", version=3, description="Card transactions.", fields=dict(TXN.fields)),
        EventSchema(name="transactions", version=2, description="Card transactions.",
                    fields=dict(TXN.fields) | {"amount": Field("int")}),
        EventSchema(name="transactions", version=2, description="Card transactions.",
                    fields=dict(TXN.fields) | {"extra": Field("int", required=False)}),
        EventSchema(name="transactions", version=2, description="Other.", fields=dict(TXN.fields)),
    ]
    assert len({TXN.fingerprint, *(schema.fingerprint for schema in changed)}) == 5


def test_pickles_without_the_compiled_validator() -> None:
    TXN.validate(GOOD)  # builds the cached validator
    again = pickle.loads(pickle.dumps(TXN))
    assert again == TXN
    assert again.validate(GOOD) == TXN.validate(GOOD)


# -- validate -----------------------------------------------------------------------------------


def test_validate_returns_a_normalized_copy() -> None:
    event = {"user_id": "u1", "amount": 3, "created_at": "2024-01-01T02:00:00+02:00", "is_card": None}
    out = TXN.validate(event)
    assert out == {"user_id": "u1", "amount": 3.0, "count": None, "created_at": 1_704_067_200_000,
                   "is_card": None, "note": None}
    assert type(out["amount"]) is float
    assert list(out) == list(TXN.columns)
    assert event["created_at"] == "2024-01-01T02:00:00+02:00"  # input untouched


def test_validate_accepts_any_mapping() -> None:
    assert TXN.validate(MappingProxyType(GOOD)) == TXN.validate(GOOD)


def test_integral_floats_are_ints() -> None:
    out = TXN.validate(GOOD | {"count": 3.0})
    assert out["count"] == 3
    assert type(out["count"]) is int


def test_wrong_type_names_field_expected_and_got() -> None:
    assert errors_of(GOOD | {"amount": "abc"}) == ["amount: expected float, got string 'abc'"]


def test_bool_is_not_an_int() -> None:
    assert errors_of(GOOD | {"count": True}) == ["count: expected int, got bool True"]


def test_non_integral_float_is_not_an_int() -> None:
    assert errors_of(GOOD | {"count": 1.5}) == ["count: expected int, got float 1.5"]


def test_ints_beyond_int64_are_refused() -> None:
    assert errors_of(GOOD | {"count": 2**63}) == [f"count: int {2**63} is outside the int64 range"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 10**400])
def test_floats_must_be_finite(value: float) -> None:
    (line,) = errors_of(GOOD | {"amount": value})
    assert line.startswith("amount: expected a finite float, got ")


def test_null_for_a_not_nullable_field() -> None:
    assert errors_of(GOOD | {"amount": None}) == ["amount: expected float, got null (the field is not nullable)"]


def test_required_nullable_field_must_be_present() -> None:
    event = {key: value for key, value in GOOD.items() if key != "is_card"}
    assert errors_of(event) == ["is_card: required field missing"]


def test_unknown_field_names_schema_version_and_fix() -> None:
    assert errors_of(GOOD | {"foo": 1}) == [UNKNOWN_FOO]


def test_naive_timestamp_names_field_and_fix() -> None:
    assert errors_of(GOOD | {"created_at": "2024-01-01T00:00:00"}) == [
        "created_at: time '2024-01-01T00:00:00' has no timezone; add one like +00:00 or Z"
    ]


def test_unparseable_timestamp_names_field() -> None:
    (line,) = errors_of(GOOD | {"created_at": "soon"})
    assert line == "created_at: expected epoch milliseconds or an ISO-8601 string with a timezone, got string 'soon'"


def test_bool_timestamp_is_refused() -> None:
    (line,) = errors_of(GOOD | {"created_at": True})
    assert line.startswith("created_at: expected timestamp")


def test_every_offending_field_is_listed_in_field_order() -> None:
    event = {"amount": "abc", "count": True, "created_at": "2024-01-01T00:00:00", "is_card": 1, "foo": 1}
    with pytest.raises(SchemaError) as info:
        TXN.validate(event)
    assert info.value.errors == [
        "user_id: required field missing",
        "amount: expected float, got string 'abc'",
        "count: expected int, got bool True",
        "created_at: time '2024-01-01T00:00:00' has no timezone; add one like +00:00 or Z",
        "is_card: expected bool, got int 1",
        UNKNOWN_FOO,
    ]
    assert str(info.value).startswith("event does not match transactions v2: user_id: required field missing; ")


def test_long_values_are_shortened_in_messages() -> None:
    (line,) = errors_of(GOOD | {"amount": "x" * 500})
    assert line.endswith("...")
    assert len(line) < 120


def test_non_mapping_event_is_refused() -> None:
    assert errors_of([1, 2]) == ["event: expected an object of field names to values, got array [1, 2]"]  # type: ignore[arg-type]


# -- validate_batch -----------------------------------------------------------------------------


def test_batch_mixes_dicts_bytes_and_bad_json() -> None:
    batch: list[Any] = [
        GOOD,
        orjson.dumps(GOOD | {"created_at": "2024-01-01T00:00:00Z"}),
        b'{"user_id": ',
        GOOD | {"amount": "abc", "foo": 1},
        b"[1]",
        bytearray(orjson.dumps(GOOD)),
    ]
    result = TXN.validate_batch(batch)
    assert result.valid_index == [0, 1, 5]
    assert result.valid == [TXN.validate(GOOD)] * 3
    assert [index for index, _ in result.invalid] == [2, 3, 4]
    assert result.invalid[0][1].startswith("not valid JSON: ")
    assert result.invalid[1][1] == f"amount: expected float, got string 'abc'; {UNKNOWN_FOO}"
    assert result.invalid[2][1] == "event: expected an object of field names to values, got array [1]"


def test_batch_never_raises_on_garbage() -> None:
    result = TXN.validate_batch([None, 3, b"", b"\xff", "not json", {1: 2}])  # type: ignore[list-item, dict-item]
    assert result.valid == []
    assert [index for index, _ in result.invalid] == [0, 1, 2, 3, 4, 5]


def test_empty_batch() -> None:
    result = TXN.validate_batch([])
    assert (result.valid, result.valid_index, result.invalid) == ([], [], [])


# -- JSON Schema, Arrow, DuckDB ----------------------------------------------------------------


def test_json_schema_is_usable_by_other_validators() -> None:
    schema = TXN.to_json_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["required"] == ["user_id", "amount", "created_at", "is_card"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["note"]["type"] == ["string", "null"]
    orjson.dumps(schema)  # JSON-serializable
    check = fastjsonschema.compile(schema)
    check(GOOD)
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        check(GOOD | {"count": True})


def test_arrow_schema_types() -> None:
    schema = TXN.arrow_schema()
    assert [(field.name, field.type, field.nullable) for field in schema] == [
        ("user_id", pa.string(), False),
        ("amount", pa.float64(), False),
        ("count", pa.int64(), True),
        ("created_at", pa.timestamp("ms", tz="UTC"), False),
        ("is_card", pa.bool_(), True),
        ("note", pa.string(), True),
    ]
    assert schema.metadata[b"featurestream.fingerprint"] == TXN.fingerprint.encode()
    assert TXN.arrow_schema(epoch_ms=True).field("created_at").type == pa.int64()


def test_to_arrow_keeps_epoch_ms_and_casts_to_timestamps() -> None:
    result = TXN.validate_batch([GOOD, GOOD | {"count": None, "is_card": None, "note": "hi"}])
    table = TXN.to_arrow(result.valid)
    assert table.schema.equals(TXN.arrow_schema(epoch_ms=True))
    assert table.column("created_at").to_pylist() == [1_704_067_200_000] * 2
    assert table.column("note").to_pylist() == [None, "hi"]
    cast = table.cast(TXN.arrow_schema())
    assert cast.column("created_at").type == pa.timestamp("ms", tz="UTC")
    assert TXN.to_arrow([]).num_rows == 0


def test_to_arrow_refuses_unnormalized_events() -> None:
    with pytest.raises(SchemaError, match="an event lacks field 'note'"):
        TXN.to_arrow([GOOD])
    with pytest.raises(SchemaError, match="field 'created_at' of transactions v2 holds a value that is not int64"):
        TXN.to_arrow([TXN.validate(GOOD) | {"created_at": "2024-01-01T00:00:00Z"}])
    with pytest.raises(SchemaError, match="field 'amount' of transactions v2 is not nullable but holds nulls"):
        TXN.to_arrow([TXN.validate(GOOD) | {"amount": None}])


def test_duckdb_columns_load_normalized_events() -> None:
    columns = TXN.duckdb_columns()
    assert columns == {"user_id": "VARCHAR", "amount": "DOUBLE", "count": "BIGINT", "created_at": "BIGINT",
                       "is_card": "BOOLEAN", "note": "VARCHAR"}
    con = duckdb.connect()
    con.execute(f"CREATE TABLE t ({', '.join(f'{name} {kind}' for name, kind in columns.items())})")
    con.register("events", TXN.to_arrow([TXN.validate(GOOD)]))
    con.execute("INSERT INTO t SELECT * FROM events")
    assert con.execute("SELECT created_at, amount FROM t").fetchall() == [(1_704_067_200_000, 9.5)]
