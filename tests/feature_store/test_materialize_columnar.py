"""The column-wise encoders materialization uses, against the per-value reference (msgpack, murmur2).

`msgpack_rows` must give `msgpack.packb` bytes exactly; `hash_fields` may
use wider int/float forms but must decode to the same values and types;
`partitions` must agree with `partition_for` (the producers' partitioner).
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_store._columnar import bulk, concat, hash_fields, msgpack_rows, partitions, text
from feature_store.online import partition_for

_INT64 = st.integers(-(2**63), 2**63 - 1)
_EDGES = st.sampled_from([0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, -1, -32, -33, -128, -129,
                          -32768, -32769, -(2**31), -(2**31) - 1, 2**63 - 1, -(2**63)])
_COLUMNS = {
    "int": (pa.int64(), st.one_of(_INT64, _EDGES)),
    "int32": (pa.int32(), st.integers(-(2**31), 2**31 - 1)),
    "float": (pa.float64(), st.floats(allow_nan=True, allow_infinity=True)),
    "str": (pa.string(), st.text(max_size=40) | st.sampled_from(["x" * 31, "x" * 32, "é" * 200, "y" * 70_000])),
    "bool": (pa.bool_(), st.booleans()),
}


@st.composite
def _tables(draw: Any, kinds: list[str] | None = None) -> tuple[list[pa.Array], list[list[Any]]]:
    chosen = kinds or draw(st.lists(st.sampled_from(sorted(_COLUMNS)), min_size=1, max_size=18))
    rows = draw(st.integers(1, 12))
    columns, values = [], []
    for kind in chosen:
        arrow_type, strategy = _COLUMNS[kind]
        column = draw(st.lists(st.none() | strategy, min_size=rows, max_size=rows))
        columns.append(pa.array(column, arrow_type))
        values.append(column)
    return columns, [list(row) for row in zip(*values, strict=True)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


@settings(max_examples=200, deadline=None)
@given(table=_tables(), null_as_false=st.booleans())
def test_msgpack_rows_are_packb_bytes(table: tuple[list[pa.Array], list[list[Any]]], null_as_false: bool) -> None:
    columns, rows = table
    got = msgpack_rows(columns, null_as_false=null_as_false).to_pylist()
    assert got == [msgpack.packb([False if null_as_false and v is None else v for v in row]) for row in rows]


def _parse(command: bytes) -> tuple[bytes, list[Any]]:
    """`$n\\r\\nfield\\r\\n$m\\r\\nvalue\\r\\n` -> (field, unpacked value)."""
    end = command.index(b"\r\n")
    size = int(command[1:end])
    field, rest = command[end + 2:end + 2 + size], command[end + 4 + size:]
    end = rest.index(b"\r\n")
    size = int(rest[1:end])
    assert rest[end + 2 + size:] == b"\r\n"
    return field, msgpack.unpackb(rest[end + 2:end + 2 + size])


@settings(max_examples=200, deadline=None)
@given(table=_tables(), fields=st.lists(st.integers(-5, 2**62) | st.sampled_from([1_769_731_200_000]),
                                        min_size=12, max_size=12), same_width=st.booleans())
def test_hash_fields_decode_to_the_same_values(table: tuple[list[pa.Array], list[list[Any]]], fields: list[int],
                                               same_width: bool) -> None:
    columns, rows = table
    field = pa.array([1_769_731_200_000 + 3_600_000 * i if same_width else fields[i] for i in range(len(rows))])
    got = [_parse(c) for c in hash_fields(field, columns).to_pylist()]
    want = [_parse(c) for c in concat(bulk(text(field)), bulk(msgpack_rows(columns, null_as_false=True))).to_pylist()]
    for (got_field, got_values), (want_field, want_values) in zip(got, want, strict=True):
        assert got_field == want_field
        assert len(got_values) == len(want_values)
        assert all(_same(a, b) for a, b in zip(got_values, want_values, strict=True)), (got_values, want_values)


@settings(max_examples=100, deadline=None)
@given(keys=st.lists(st.text(max_size=12), min_size=1, max_size=30) | st.lists(_INT64, min_size=1, max_size=30),
       count=st.integers(1, 16))
def test_partitions_match_partition_for(keys: list[Any], count: int) -> None:
    assert partitions(pa.array(keys), count).tolist() == [partition_for(k, count) for k in keys]
