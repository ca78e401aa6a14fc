from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from schemas import to_epoch_ms
from schemas.errors import SchemaError
from schemas.timestamps import MAX_EPOCH_MS, MIN_EPOCH_MS

JAN_1_2024_MS = 1_704_067_200_000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-01T00:00:00Z", JAN_1_2024_MS),
        ("2024-01-01T00:00:00+00:00", JAN_1_2024_MS),
        ("2024-01-01T02:00:00+02:00", JAN_1_2024_MS),
        ("2023-12-31T19:00:00-05:00", JAN_1_2024_MS),
        ("2024-01-01T00:00:00.123Z", JAN_1_2024_MS + 123),
        ("2024-01-01T00:00:00.123999Z", JAN_1_2024_MS + 123),  # floored to the millisecond
        (JAN_1_2024_MS, JAN_1_2024_MS),
        (float(JAN_1_2024_MS) + 0.9, JAN_1_2024_MS),
        (0, 0),
        (-1.5, -2),  # floor, not truncation, before 1970 too
        (datetime(2024, 1, 1, tzinfo=UTC), JAN_1_2024_MS),
        (datetime(2024, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))), JAN_1_2024_MS),
        (datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC), -1),
    ],
)
def test_to_epoch_ms_normalizes(value: int | float | str | datetime, expected: int) -> None:
    assert to_epoch_ms(value) == expected
    assert type(to_epoch_ms(value)) is int


@pytest.mark.parametrize("value", ["2024-01-01T00:00:00", "2024-01-01", datetime(2024, 1, 1)])
def test_naive_times_are_refused_with_the_fix(value: str | datetime) -> None:
    with pytest.raises(SchemaError, match=r"has no timezone; add one like \+00:00 or Z"):
        to_epoch_ms(value)


@pytest.mark.parametrize("value", [True, False, "yesterday", "", float("nan"), float("inf"), None, [1], b"1"])
def test_non_times_are_refused(value: object) -> None:
    with pytest.raises(SchemaError, match="expected epoch milliseconds or an ISO-8601 string with a timezone"):
        to_epoch_ms(value)  # type: ignore[arg-type]  # deliberately wrong types


def test_schema_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no timezone"):
        to_epoch_ms("2024-01-01T00:00:00")


@pytest.mark.parametrize("value", [MAX_EPOCH_MS + 1, MIN_EPOCH_MS - 1, 1e20])
def test_out_of_range_is_refused(value: int | float) -> None:
    with pytest.raises(SchemaError, match="outside years 1-9999"):
        to_epoch_ms(value)


def test_range_bounds_are_inclusive() -> None:
    assert to_epoch_ms(MAX_EPOCH_MS) == MAX_EPOCH_MS
    assert to_epoch_ms(MIN_EPOCH_MS) == MIN_EPOCH_MS
    assert to_epoch_ms("9999-12-31T23:59:59.999Z") == MAX_EPOCH_MS
    assert to_epoch_ms("0001-01-01T00:00:00Z") == MIN_EPOCH_MS
