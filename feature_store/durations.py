"""Durations as users write them ("5m", "24h", timedelta) and as we compute (ms)."""

from __future__ import annotations

import re
from datetime import timedelta

from feature_store.errors import DefinitionError

__all__ = ["Duration", "format_ms", "to_ms"]

Duration = timedelta | str | int
"""A duration: a `timedelta`, a string like "90s", "5m", "24h", "7d", or int milliseconds."""

_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PATTERN = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")


def to_ms(value: Duration, *, what: str = "duration") -> int:
    """Return `value` in whole milliseconds; `what` names the field in errors."""
    if isinstance(value, bool):
        raise DefinitionError(f"{what}: expected a duration like '5m' or a timedelta, got {value!r}")
    if isinstance(value, timedelta):
        ms = value // timedelta(milliseconds=1)
    elif isinstance(value, int):
        ms = value
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if match is None:
            raise DefinitionError(
                f"{what}: cannot read {value!r}; write a whole number and a unit, e.g. '30s', '5m', '24h', '7d'"
            )
        ms = int(match.group(1)) * _UNIT_MS[match.group(2)]
    else:
        raise DefinitionError(f"{what}: expected a duration like '5m' or a timedelta, got {value!r}")
    if ms < 0:
        raise DefinitionError(f"{what}: must not be negative, got {value!r}")
    return ms


def format_ms(ms: int) -> str:
    """The shortest exact label for `ms` ("5m", "24h", "7d"), used in feature names."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_MS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
