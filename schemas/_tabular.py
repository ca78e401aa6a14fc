"""How schema fields are held in Arrow/Parquet and DuckDB.

Normalized events hold timestamps as int epoch milliseconds; columns built
from them keep that (int64 / BIGINT) so the stream and batch paths compare
plain integers. `arrow_schema(epoch_ms=False)` gives the logical view with
real Arrow timestamps; casting an epoch-ms table to it is zero-copy.
pyarrow is imported on first use: producers that only validate never pay for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from schemas.errors import SchemaError
from schemas.fields import Field

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["DUCKDB_TYPES", "all_nullable", "arrow_schema", "rows_to_arrow", "to_arrow"]

DUCKDB_TYPES: dict[str, str] = {
    "string": "VARCHAR",
    "int": "BIGINT",
    "float": "DOUBLE",
    "bool": "BOOLEAN",
    "timestamp": "BIGINT",  # epoch milliseconds, UTC
}


def arrow_schema(
    fields: Sequence[tuple[str, Field]], *, epoch_ms: bool, metadata: dict[str, str],
) -> pa.Schema:
    """Arrow schema in field order; timestamps as int64 epoch ms or as timestamp[ms, UTC]."""
    import pyarrow as pa  # lazy: see module docstring

    types = {
        "string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
        "timestamp": pa.int64() if epoch_ms else pa.timestamp("ms", tz="UTC"),
    }
    return pa.schema(
        [
            pa.field(name, types[field.type], nullable=field.accepts_null,
                     metadata={"featurestream.type": field.type})
            for name, field in fields
        ],
        metadata=metadata,
    )


def to_arrow(schema: pa.Schema, events: Sequence[dict[str, Any]], *, label: str) -> pa.Table:
    """Build the table column by column from normalized events (the output of validate)."""
    import pyarrow as pa  # lazy: see module docstring

    columns = []
    for column in schema:
        name = column.name
        try:
            values = [event[name] for event in events]
            array = pa.array(values, type=column.type)
        except KeyError:
            raise SchemaError(
                f"to_arrow: an event lacks field {name!r} of {label}; pass events returned by validate() "
                "or validate_batch()"
            ) from None
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as exc:
            raise SchemaError(
                f"to_arrow: field {name!r} of {label} holds a value that is not {column.type} ({exc}); "
                "pass events returned by validate() or validate_batch()"
            ) from None
        if not column.nullable and array.null_count:
            raise SchemaError(
                f"to_arrow: field {name!r} of {label} is not nullable but holds nulls; "
                "pass events returned by validate() or validate_batch()"
            )
        columns.append(array)
    return pa.Table.from_arrays(columns, schema=schema)


def all_nullable(schema: pa.Schema) -> pa.Schema:
    """`schema` with every field nullable (tables whose invalid rows are all null)."""
    import pyarrow as pa  # lazy: see module docstring

    return pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)


def rows_to_arrow(schema: pa.Schema, rows: Sequence[dict[str, Any] | None], *, label: str) -> pa.Table:
    """Like `to_arrow`, with None rows (invalid records) as all-null rows; `schema` fields are nullable."""
    import pyarrow as pa  # lazy: see module docstring

    if all(row is not None for row in rows):
        return to_arrow(schema, rows, label=label)  # type: ignore[arg-type]  # no None left
    columns = []
    for column in schema:
        name = column.name
        columns.append(pa.array([None if row is None else row[name] for row in rows], type=column.type))
    return pa.Table.from_arrays(columns, schema=schema)
