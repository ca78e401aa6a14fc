"""One-line descriptions of offending values, shared by every error message."""

from __future__ import annotations

from typing import Any

_JSON_KIND: dict[type, str] = {
    str: "string",
    bool: "bool",
    int: "int",
    float: "float",
    dict: "object",
    list: "array",
    tuple: "array",
}
_MAX_REPR = 60


def describe(value: Any) -> str:
    """`string 'abc'`, `bool True`, `null`: the JSON kind, then a short repr."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > _MAX_REPR:
        text = text[: _MAX_REPR - 3] + "..."
    return f"{_JSON_KIND.get(type(value), type(value).__name__)} {text}"
