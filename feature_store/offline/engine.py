"""DuckDB connections for batch jobs, and running a long query with progress.

One place sets memory, threads and the spill directory, so a 1M x 10M
training set streams through DuckDB (spilling to disk when it must) instead
of filling memory.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from feature_store.errors import OfflineStoreError

__all__ = ["Progress", "connect", "run_with_progress", "sql_list", "sql_str"]

Progress = Callable[[float], None]
"""Called with a completion fraction in [0, 1] while a job runs."""

_POLL_S = 0.2


def connect(data_dir: Path, *, memory_limit: str = "60%", threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that spills to `<data_dir>/.duckdb_tmp`; progress is tracked but never printed."""
    tmp = Path(data_dir) / ".duckdb_tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(":memory:", config={
        "threads": threads or max(os.cpu_count() or 1, 1),
        "temp_directory": str(tmp),
        "preserve_insertion_order": True,
    })
    if memory_limit.endswith("%"):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        memory_limit = f"{int(total * float(memory_limit[:-1]) / 100) // 2**20}MB"
    con.execute(f"SET memory_limit = {sql_str(memory_limit)}")
    con.execute("SET enable_progress_bar = true")
    con.execute("SET enable_progress_bar_print = false")
    return con


def sql_str(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def sql_list(values: list[str]) -> str:
    """A SQL list literal of strings: ['a', 'b']."""
    return "[" + ", ".join(sql_str(v) for v in values) + "]"


def run_with_progress(con: duckdb.DuckDBPyConnection, job: Callable[[], Any], progress: Progress | None) -> Any:
    """Run `job` (queries on `con`) and report DuckDB's query progress while it runs.

    The job runs in a helper thread so this thread can poll
    `query_progress()`; DuckDB errors come back as OfflineStoreError.
    """
    result: list[Any] = []
    error: list[BaseException] = []

    def work() -> None:
        try:
            result.append(job())
        except BaseException as exc:  # handed to the calling thread below
            error.append(exc)

    if progress is None:
        work()
    else:
        thread = threading.Thread(target=work, name="duckdb-job", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(_POLL_S)
            done = con.query_progress()
            if done >= 0:
                progress(min(done, 100.0) / 100.0)
        progress(1.0)
    if error:
        exc = error[0]
        if isinstance(exc, duckdb.Error):
            first = str(exc).splitlines()[0]
            raise OfflineStoreError(f"offline query failed: {first}") from exc
        raise exc
    return result[0]
