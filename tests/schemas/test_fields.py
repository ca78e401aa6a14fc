from __future__ import annotations

import dataclasses

import pytest

from schemas import FIELD_TYPES, Field
from schemas.errors import SchemaError


def test_defaults_are_required_and_not_nullable() -> None:
    field = Field("float")
    assert (field.type, field.required, field.nullable, field.description) == ("float", True, False, "")
    assert not field.accepts_null


@pytest.mark.parametrize(
    ("field", "accepts_null"),
    [
        (Field("int", required=False), True),
        (Field("int", nullable=True), True),
        (Field("int", required=False, nullable=True), True),
        (Field("int"), False),
    ],
)
def test_accepts_null(field: Field, accepts_null: bool) -> None:
    assert field.accepts_null is accepts_null


def test_unknown_type_names_allowed_types() -> None:
    with pytest.raises(SchemaError, match="'double' is not supported; use one of string, int, float, bool, timestamp"):
        Field("double")  # type: ignore[arg-type]  # deliberately wrong


def test_flags_must_be_bools() -> None:
    with pytest.raises(SchemaError, match="required must be True or False"):
        Field("int", required="yes")  # type: ignore[arg-type]  # deliberately wrong


def test_keyword_only_after_type() -> None:
    with pytest.raises(TypeError):
        Field("int", False)  # type: ignore[call-arg]  # deliberately positional


def test_frozen_and_hashable() -> None:
    field = Field("string")
    with pytest.raises(dataclasses.FrozenInstanceError):
        field.required = False  # type: ignore[misc]  # deliberately mutating
    assert hash(field) == hash(Field("string"))


@pytest.mark.parametrize("type_name", FIELD_TYPES)
def test_dict_round_trip(type_name: str) -> None:
    field = Field(type_name, required=False, nullable=True, description="why")  # type: ignore[arg-type]
    assert Field.from_dict(field.to_dict()) == field


def test_from_dict_refuses_unknown_keys() -> None:
    with pytest.raises(SchemaError, match=r"field 'amount': unknown keys \['nullabel'\]"):
        Field.from_dict({"type": "int", "nullabel": True}, where="field 'amount'")
