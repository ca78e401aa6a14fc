"""`Field`: the type and presence rules of one event field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any, Literal, get_args

from schemas.errors import SchemaError

__all__ = ["FIELD_TYPES", "Field", "FieldType"]

FieldType = Literal["string", "int", "float", "bool", "timestamp"]
FIELD_TYPES: tuple[str, ...] = get_args(FieldType)
"""Allowed type names. `timestamp` values are held as int epoch milliseconds (UTC)."""

_KEYS = frozenset({"type", "required", "nullable", "description"})


@dataclass(frozen=True)
class Field:
    """One event field: its type, whether producers must send it, whether it may be null.

    An optional field (`required=False`) that is absent reads as null, so it
    also accepts an explicit null; `nullable` matters for required fields,
    which must be present but may then carry null.
    """

    type: FieldType
    _: KW_ONLY
    required: bool = True
    nullable: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if self.type not in FIELD_TYPES:
            raise SchemaError(
                f"Field type {self.type!r} is not supported; use one of {', '.join(FIELD_TYPES)}"
            )
        for flag in ("required", "nullable"):
            if not isinstance(getattr(self, flag), bool):
                raise SchemaError(f"Field {flag} must be True or False, got {getattr(self, flag)!r}")
        if not isinstance(self.description, str):
            raise SchemaError(f"Field description must be a string, got {self.description!r}")

    @property
    def accepts_null(self) -> bool:
        """True when null (or, for optional fields, absence) is a valid value."""
        return self.nullable or not self.required

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "required": self.required, "nullable": self.nullable,
                "description": self.description}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "field") -> Field:
        """Inverse of `to_dict`; unknown keys are refused so typos do not pass silently."""
        if not isinstance(data, Mapping):
            raise SchemaError(f"{where}: expected an object like {{'type': 'string'}}, got {data!r}")
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise SchemaError(f"{where}: unknown keys {unknown}; allowed keys are {sorted(_KEYS)}")
        if "type" not in data:
            raise SchemaError(f"{where}: 'type' is missing; use one of {', '.join(FIELD_TYPES)}")
        return cls(data["type"], required=data.get("required", True), nullable=data.get("nullable", False),
                   description=data.get("description", ""))
