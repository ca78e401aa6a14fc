"""Row-level transforms: DuckDB SQL expressions, one definition for both paths.

The stream path runs `transformed_sql` over a micro-batch registered in DuckDB;
the batch path runs the very same SQL over the offline event log.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import duckdb

from feature_store.errors import DefinitionError
from schemas import EventSchema

__all__ = ["DUCKDB_TYPES", "transform_output_types", "transformed_sql"]

DUCKDB_TYPES = {"string": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN", "timestamp": "BIGINT"}
"""How each schema type is held in DuckDB; timestamps are epoch milliseconds."""

_BACK = {"VARCHAR": "string", "BIGINT": "int", "INTEGER": "int", "SMALLINT": "int", "TINYINT": "int",
         "HUGEINT": "int", "UBIGINT": "int", "UINTEGER": "int", "DOUBLE": "float", "FLOAT": "float",
         "BOOLEAN": "bool"}


def transformed_sql(relation: str, transform: Mapping[str, str]) -> str:
    """`SELECT *, <expr> AS <name>, ... FROM <relation>`: the source rows plus transform columns."""
    extra = "".join(f", ({expr}) AS {name}" for name, expr in transform.items())
    return f"SELECT *{extra} FROM {relation}"


def transform_output_types(view: str, schema: EventSchema, transform: Mapping[str, str]) -> dict[str, str]:
    """Bind the transform against an empty table of `schema` and return each output's type.

    Binding catches unknown columns and type errors at declaration time, with
    DuckDB's own message in ours. Cached: a registry rebuild binds every view.
    """
    if not transform:
        return {}
    return dict(_bound_types(view, schema, tuple(transform.items())))


@lru_cache(maxsize=1024)
def _bound_types(view: str, schema: EventSchema, transform: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    con = duckdb.connect(":memory:")
    try:
        columns = ", ".join(f'"{name}" {DUCKDB_TYPES[dtype]}' for name, dtype in schema.columns.items())
        con.execute(f"CREATE TABLE source ({columns})")
        types: dict[str, str] = {}
        for name, expr in transform:
            try:
                described = con.execute(f"DESCRIBE SELECT ({expr}) AS {name} FROM source").fetchall()
            except duckdb.Error as exc:
                first_line = str(exc).splitlines()[0]
                raise DefinitionError(
                    f"FeatureView {view!r}: transform {name!r} = {expr!r} does not run on schema "
                    f"{schema.name!r} v{schema.version}: {first_line}; fix the SQL expression"
                ) from None
            duck_type = str(described[0][1]).upper()
            if duck_type.startswith("DECIMAL"):
                duck_type = "DOUBLE"
            if duck_type not in _BACK:
                raise DefinitionError(
                    f"FeatureView {view!r}: transform {name!r} yields {duck_type}; cast it to VARCHAR, BIGINT, "
                    f"DOUBLE or BOOLEAN"
                )
            types[name] = _BACK[duck_type]
        return tuple(types.items())
    finally:
        con.close()
