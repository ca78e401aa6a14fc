"""Columnar validation of raw JSON records: one Arrow parse for a whole batch, exact or nothing.

The stream worker validates tens of thousands of records per fetch; the
per-record validator costs ~8 us each (a dict, a compiled check, a
normalizing copy) and the rows then go back into Arrow for DuckDB anyway.
`read_valid` parses the batch with `pyarrow.json` into the schema's Arrow
types and checks the remaining rules column by column. It answers only when
every record is a good event and the table holds exactly what `validate`
would have returned for each; on any doubt it returns None and the caller
runs the exact per-record path (which names every offending field).

Where pyarrow's parser is laxer than orjson + the validator, the batch is
refused here: NaN/Infinity literals (finite check), invalid UTF-8 (full
validation), nulls in required fields (absent and null look alike in a
column), ints for timestamp fields only (floats and ISO strings take the
exact path). A lone top-level `null` crashes pyarrow 26's reader, so the
framing check (each record one line, starting `{` and ending `}`) runs first.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from schemas.fields import Field
from schemas.timestamps import MAX_EPOCH_MS, MIN_EPOCH_MS

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["read_valid"]

_OPEN, _CLOSE = ord("{"), ord("}")


def read_valid(values: Sequence[bytes], schema: pa.Schema, fields: Sequence[tuple[str, Field]],
               require_any: Sequence[Sequence[str]]) -> pa.Table | None:
    """The batch as a table of `schema` (epoch-ms timestamps) if every record is a valid event, else None."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    n = len(values)
    if n == 0:
        return None
    try:
        data = b"\n".join(values)  # TypeError for None (a tombstone) or str: the exact path judges them
    except TypeError:
        return None
    # each record is exactly one line holding one object: no record is empty or spans lines, so a
    # row count of n means one row per record (a record with two objects would add a row)
    if data.count(b"\n") != n - 1:
        return None
    lengths = pa.array(map(len, values), pa.int64(), size=n)
    last = pc.subtract(pc.cumulative_sum(pc.add(lengths, 1)), 2)  # where each record's last byte is in `data`
    raw = pa.Array.from_buffers(pa.uint8(), len(data), [None, pa.py_buffer(data)])
    if not (pc.min(lengths).as_py() > 0
            and pc.all(pc.equal(raw.take(pc.add(pc.subtract(last, lengths), 1)), _OPEN)).as_py()
            and pc.all(pc.equal(raw.take(last), _CLOSE)).as_py()):
        return None
    parse = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    read = pj.ReadOptions(use_threads=False, block_size=len(data) + 1)  # one block: a large one costs to set up
    try:
        table = pj.read_json(io.BytesIO(data), read_options=read, parse_options=parse)
    except (pa.ArrowException, ValueError):  # a wrong type, an unknown or repeated field, bad syntax
        return None
    if table.num_rows != n:
        return None
    columns = []
    for (name, field), target in zip(fields, schema, strict=True):
        column = table.column(name).combine_chunks()
        if column.null_count and field.required:
            return None  # a required field absent (or null where null is allowed: the exact path tells)
        if field.type == "float" and column.null_count < n and not pc.all(pc.is_finite(column)).as_py():
            return None
        if field.type == "timestamp" and column.null_count < n:
            low, high = pc.min_max(column).values()
            if low.as_py() < MIN_EPOCH_MS or high.as_py() > MAX_EPOCH_MS:
                return None
        if field.type == "string":
            try:
                column.validate(full=True)  # UTF-8: orjson refuses what pyarrow let through
            except pa.ArrowInvalid:
                return None
        columns.append(column.cast(target.type) if column.type != target.type else column)
    for group in require_any:  # some field of the group set in every row
        unset = table.column(group[0]).is_null()
        for name in group[1:]:
            unset = pc.and_(unset, table.column(name).is_null())
        if pc.any(unset).as_py():
            return None
    return pa.Table.from_arrays(columns, schema=schema)
