"""The one timestamp normalizer: every event time becomes int epoch milliseconds (UTC).

Epoch milliseconds are what the stream path, Redis, DuckDB and Parquet all
hold, so conversions happen once, here, at the edge.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

from schemas._describe import describe
from schemas.errors import SchemaError

__all__ = ["MAX_EPOCH_MS", "MIN_EPOCH_MS", "now_ms", "to_epoch_ms"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_EPOCH_MS = -62_135_596_800_000
"""0001-01-01T00:00:00Z, the first instant a `datetime` can hold (inclusive)."""
MAX_EPOCH_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z, the last instant a `datetime` can hold (inclusive)."""

_EXPECTED = "expected epoch milliseconds or an ISO-8601 string with a timezone"


def now_ms() -> int:
    """The wall clock as int epoch milliseconds (UTC): the one clock helper everyone uses."""
    return time.time_ns() // 1_000_000


def to_epoch_ms(value: int | float | str | datetime) -> int:
    """Normalize an event time to int epoch milliseconds (UTC).

    Accepts int or float epoch milliseconds (floats are floored to the
    millisecond, like sub-millisecond digits of ISO strings and datetimes),
    ISO-8601 strings with a timezone (`Z`, `+02:00`) and timezone-aware
    datetimes. Naive times are refused rather than guessed: the same wall
    clock means different instants on different machines. Raises
    `SchemaError` (a `ValueError`) saying what to send instead.
    """
    if isinstance(value, bool):  # bool is an int subclass; True is not a time
        raise SchemaError(f"{_EXPECTED}, got {describe(value)}")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise SchemaError(f"{_EXPECTED}, got {describe(value)}")
        ms = math.floor(value)
    elif isinstance(value, str):
        ms = _iso_to_ms(value)
    elif isinstance(value, datetime):
        ms = _datetime_to_ms(value, shown=repr(value))
    else:
        raise SchemaError(f"{_EXPECTED}, got {describe(value)}")
    if not MIN_EPOCH_MS <= ms <= MAX_EPOCH_MS:
        raise SchemaError(
            f"{describe(value)} is outside years 1-9999 in epoch milliseconds; "
            "send milliseconds (not seconds or microseconds) since 1970-01-01T00:00:00Z"
        )
    return ms


def _iso_to_ms(text: str) -> int:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise SchemaError(f"{_EXPECTED}, got {describe(text)}") from None
    return _datetime_to_ms(parsed, shown=repr(text))


def _datetime_to_ms(value: datetime, *, shown: str) -> int:
    if value.tzinfo is None or value.utcoffset() is None:
        raise SchemaError(f"time {shown} has no timezone; add one like +00:00 or Z")
    delta = value - _EPOCH  # exact integer arithmetic; floor division keeps pre-1970 times consistent
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000
