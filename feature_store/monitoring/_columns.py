"""Turn the column shapes users hand us (Arrow, pandas, numpy, lists) into plain Python lists.

One place so every check sees the same nulls: None, NaN and pandas NA all count as null.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["is_null", "split_nulls", "to_list"]


def to_list(column: Any) -> list[Any]:
    """Python values of an Arrow array/chunked array, pandas Series, numpy array or iterable."""
    if hasattr(column, "to_pylist"):  # pyarrow Array / ChunkedArray
        return list(column.to_pylist())
    if hasattr(column, "tolist"):  # pandas Series, numpy array
        return list(column.tolist())
    return list(column)


def is_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    try:  # pandas.NA and friends refuse bool(); they are null
        return bool(value != value)
    except TypeError:
        return True


def split_nulls(values: Iterable[Any]) -> tuple[list[Any], int]:
    """(non-null values, number of nulls)."""
    kept: list[Any] = []
    nulls = 0
    for v in values:
        if is_null(v):
            nulls += 1
        else:
            kept.append(v)
    return kept, nulls
