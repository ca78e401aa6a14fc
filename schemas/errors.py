"""The one exception root of featurestream.

It lives in the bottom layer (`schemas`) so that every package, including
`schemas` itself, raises from the same tree. `feature_store.errors` re-exports
it with the rest of the hierarchy; import errors from there.
"""

from __future__ import annotations


class FeatureStoreError(Exception):
    """Root of every error featurestream raises on purpose.

    Messages name the object at fault and say what to do about it.
    """


class SchemaError(FeatureStoreError, ValueError):
    """An event or a schema change does not satisfy the declared schema.

    `errors` holds one human-readable line per offending field.
    """

    def __init__(self, message: str, *, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors: list[str] = list(errors or [])
