"""One way to open the small SQLite stores (model registry, runs, approvals).

WAL mode lets the worker, the API and batch jobs read while one writes;
sqlite errors become RegistryError naming the store, so callers see one
error tree.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from feature_store.errors import RegistryError

__all__ = ["open_store"]


@contextmanager
def open_store(path: Path, what: str, *, rows: bool = True) -> Iterator[sqlite3.Connection]:
    """An autocommit connection to `path`, closed on exit; `what` names the store in errors.

    `rows=True` returns `sqlite3.Row` (access by column name), else plain tuples.
    """
    try:
        db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    except sqlite3.Error as exc:
        raise RegistryError(f"cannot open the {what} {str(path)!r}: {exc}") from None
    try:
        if rows:
            db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        yield db
    except sqlite3.Error as exc:
        raise RegistryError(f"{what} {str(path)!r} failed: {exc}") from None
    finally:
        db.close()
