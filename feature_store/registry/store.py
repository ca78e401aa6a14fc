"""The registry: every applied version of every definition, in one SQLite file.

SQLite in WAL mode lets the worker, the API and batch jobs read while an
apply writes: readers see the state before or after an apply, never half of
it, because an apply writes all its records in one transaction. History is
append-only (triggers refuse UPDATE and DELETE): a version, once applied,
stays readable forever, so `as_of(t)` answers which definitions were live
at time `t` (epoch ms, UTC).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from feature_store.errors import DefinitionError, RegistryError, UnknownFeatureError
from feature_store.registry.plan import KINDS, Change, FieldChange, Kind, Plan, make_plan
from feature_store.repo import FeatureRepo, load_repo
from feature_store.serialization import KIND_GROUP, repo_from_dicts

if TYPE_CHECKING:
    from feature_store.settings import Settings

__all__ = ["Registry", "VersionRecord", "load_live_repo"]

_FORMAT = 1  # PRAGMA user_version of the file layout below
_BUSY_MS = 15_000  # how long a writer waits for another apply before giving up
_DDL = """
CREATE TABLE IF NOT EXISTS applies (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    applied_by  TEXT    NOT NULL,
    applied_at  INTEGER NOT NULL              -- epoch ms, strictly increasing
);
CREATE TABLE IF NOT EXISTS versions (
    kind              TEXT    NOT NULL CHECK (kind IN ('entity', 'source', 'view', 'service')),
    name              TEXT    NOT NULL,
    version           INTEGER NOT NULL,       -- 1, 2, ... per (kind, name), across removals
    action            TEXT    NOT NULL CHECK (action IN ('add', 'change', 'remove')),
    fingerprint       TEXT,                   -- NULL for removals
    state_fingerprint TEXT,                   -- views only: the print in their online keys
    definition        TEXT,                   -- JSON of to_dict(); NULL for removals
    breaking          INTEGER NOT NULL DEFAULT 0,
    reason            TEXT    NOT NULL DEFAULT '',
    diff              TEXT    NOT NULL DEFAULT '[]',
    apply_id          INTEGER NOT NULL REFERENCES applies (id),
    applied_by        TEXT    NOT NULL,
    applied_at        INTEGER NOT NULL,
    PRIMARY KEY (kind, name, version)
);
CREATE INDEX IF NOT EXISTS versions_by_time ON versions (applied_at);
CREATE TRIGGER IF NOT EXISTS versions_no_update BEFORE UPDATE ON versions
    BEGIN SELECT RAISE(ABORT, 'registry history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS versions_no_delete BEFORE DELETE ON versions
    BEGIN SELECT RAISE(ABORT, 'registry history is append-only'); END;
"""
_LIVE_AT = """
SELECT v.kind, v.name, v.version, v.action, v.fingerprint, v.state_fingerprint, v.definition, v.breaking,
       v.reason, v.diff, v.apply_id, v.applied_by, v.applied_at
FROM versions AS v
JOIN (SELECT kind, name, MAX(version) AS version FROM versions WHERE applied_at <= ? GROUP BY kind, name) AS last
  USING (kind, name, version)
WHERE v.action != 'remove'
"""
_COLUMNS = ("kind, name, version, action, fingerprint, state_fingerprint, definition, breaking, reason, diff, "
            "apply_id, applied_by, applied_at")
_FOREVER = 2**62

log = structlog.get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class VersionRecord:
    """One immutable registry record: a definition as applied (or its removal)."""

    kind: Kind
    name: str
    version: int
    action: str
    """'add', 'change' or 'remove'."""
    fingerprint: str | None
    state_fingerprint: str | None
    definition: Mapping[str, Any] | None
    """The applied `to_dict()`; None for a removal."""
    breaking: bool
    reason: str
    diff: tuple[FieldChange, ...]
    """The changed fields, as the plan showed them."""
    apply_id: int
    applied_by: str
    applied_at: int
    """Epoch ms (UTC) of the apply; the version is live from then until the next record."""


class Registry:
    """Versioned definitions in a SQLite file shared by every featurestream process.

    Cheap to construct. Each thread uses its own connection, so one Registry
    may be shared by threads; several processes may open the same file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._cache: tuple[int, FeatureRepo] | None = None
        self._cache_lock = threading.Lock()
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, timeout=_BUSY_MS / 1000, isolation_level=None)
            try:
                self._prepare(con)
            finally:
                con.close()
        except (sqlite3.Error, OSError) as exc:
            raise RegistryError(
                f"cannot open the registry {str(self.path)!r}: {exc}; point FEATURESTREAM_REGISTRY at a writable "
                f"path (or remove a file that is not a featurestream registry)"
            ) from None

    # -- reading -----------------------------------------------------------------------

    def generation(self) -> int:
        """Number of the last apply (0 for none): poll it to notice a new apply cheaply."""
        with self._read() as con:
            return self._generation(con)

    def current(self) -> FeatureRepo:
        """The live definitions (cached until the next apply)."""
        with self._read() as con:
            generation = self._generation(con)
            with self._cache_lock:
                if self._cache is not None and self._cache[0] == generation:
                    return self._cache[1]
            repo = self._repo_at(con, _FOREVER)
        with self._cache_lock:
            self._cache = (generation, repo)
        return repo

    def as_of(self, t_ms: int) -> FeatureRepo:
        """The definitions live at `t_ms` (epoch ms): every record applied at or before `t_ms`, latest wins."""
        with self._read() as con:
            return self._repo_at(con, t_ms)

    def history(self, kind: str, name: str) -> list[VersionRecord]:
        """Every record of one definition, oldest first; `kind` is entity, source, view or service.

        The `to_dict()` kind names (feature_view, stream_source, ...) are accepted too.
        """
        group = _kind(kind)
        with self._read() as con:
            rows = con.execute(f"SELECT {_COLUMNS} FROM versions WHERE kind = ? AND name = ? ORDER BY version",
                               (group, name)).fetchall()
        return [_record(row) for row in rows]

    def version_of(self, view_name: str) -> int:
        """The current version number of a live feature view (bumped by every applied change)."""
        with self._read() as con:
            row = con.execute(
                "SELECT version, action FROM versions WHERE kind = 'view' AND name = ? ORDER BY version DESC LIMIT 1",
                (view_name,),
            ).fetchone()
        if row is None or row[1] == "remove":
            state = "was removed" if row else "was never applied"
            raise UnknownFeatureError(
                f"feature view {view_name!r} {state}; declare it in the repo and run `featurestream apply`"
            )
        return int(row[0])

    # -- planning and applying ---------------------------------------------------------

    def plan(self, repo: FeatureRepo) -> Plan:
        """What `apply(repo)` would do now; raises DefinitionError/SchemaError for a repo it would refuse."""
        with self._read() as con:
            return make_plan(self._repo_at(con, _FOREVER), self._versions(con), repo)

    def apply(self, repo: FeatureRepo, *, applied_by: str, dry_run: bool = False,
              expected: Plan | None = None) -> Plan:
        """Validate `repo` as a whole and store its changes in one transaction; nothing on any error.

        `expected` is a plan shown to a user: if the registry moved since, the
        apply is refused (RegistryError) rather than applying something else.
        Returns the plan, `applied=True` when records were written.
        """
        if dry_run:
            return self.plan(repo)
        with self._connection() as con:
            try:
                con.execute("BEGIN IMMEDIATE")  # one writer at a time; readers carry on (WAL)
                plan = make_plan(self._repo_at(con, _FOREVER), self._versions(con), repo)
                if expected is not None and not plan.same_changes(expected):
                    raise RegistryError(
                        f"the registry {str(self.path)!r} changed since the plan was shown; run the apply again"
                    )
                if plan.is_empty:
                    con.execute("ROLLBACK")
                    return plan
                self._write(con, plan, applied_by)
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        log.info("registry.applied", registry=str(self.path), applied_by=applied_by, added=len(plan.added),
                 changed=len(plan.changed), removed=len(plan.removed), breaking=len(plan.breaking))
        return Plan(changes=plan.changes, warnings=plan.warnings, applied=True)

    # -- internals ---------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection (opened once: a fresh one costs ~20x a query); dropped after an error."""
        con = self._open_connection()
        try:
            yield con
        except sqlite3.Error as exc:
            self._local.__dict__.pop("con", None)
            con.close()
            raise RegistryError(f"registry {str(self.path)!r}: {exc}; check the file and retry") from None

    def _open_connection(self) -> sqlite3.Connection:
        held = getattr(self._local, "con", None)
        if held is not None and held[0] == os.getpid():  # a forked child opens its own
            return held[1]  # type: ignore[no-any-return]  # thread-local storage is untyped
        con = sqlite3.connect(self.path, timeout=_BUSY_MS / 1000, isolation_level=None, check_same_thread=True)
        con.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
        self._local.con = (os.getpid(), con)
        return con

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends); the Registry stays usable."""
        held = self._local.__dict__.pop("con", None)
        if held is not None and held[0] == os.getpid():
            held[1].close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees one snapshot (WAL)."""
        with self._connection() as con:
            con.execute("BEGIN")
            try:
                yield con
            finally:
                con.execute("COMMIT")

    def _prepare(self, con: sqlite3.Connection) -> None:
        mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RegistryError(f"registry {str(self.path)!r}: SQLite refused WAL mode ({mode}); use a local disk")
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _FORMAT):
            raise RegistryError(
                f"registry {str(self.path)!r} has format {version}, this featurestream reads format {_FORMAT}; "
                f"upgrade featurestream"
            )
        if version == 0:  # IF NOT EXISTS everywhere: two processes creating the file at once both succeed
            con.executescript(f"BEGIN IMMEDIATE;\n{_DDL}\nPRAGMA user_version = {_FORMAT};\nCOMMIT;")

    @staticmethod
    def _generation(con: sqlite3.Connection) -> int:
        return int(con.execute("SELECT COALESCE(MAX(id), 0) FROM applies").fetchone()[0])

    @staticmethod
    def _versions(con: sqlite3.Connection) -> dict[tuple[str, str], int]:
        rows = con.execute("SELECT kind, name, MAX(version) FROM versions GROUP BY kind, name").fetchall()
        return {(kind, name): int(version) for kind, name, version in rows}

    @staticmethod
    def _repo_at(con: sqlite3.Connection, t_ms: int) -> FeatureRepo:
        rows = con.execute(_LIVE_AT, (t_ms,)).fetchall()
        return repo_from_dicts(orjson.loads(row[6]) for row in rows)

    def _write(self, con: sqlite3.Connection, plan: Plan, applied_by: str) -> None:
        last = con.execute("SELECT COALESCE(MAX(applied_at), 0) FROM applies").fetchone()[0]
        applied_at = max(time.time_ns() // 1_000_000, int(last) + 1)  # strictly after the previous apply
        apply_id = con.execute("INSERT INTO applies (applied_by, applied_at) VALUES (?, ?)",
                               (applied_by, applied_at)).lastrowid
        con.executemany(
            f"INSERT INTO versions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [_row(change, apply_id, applied_by, applied_at) for change in plan.changes],
        )


def load_live_repo(settings: Settings, repo_path: Path | None = None) -> FeatureRepo:
    """The definitions a long-running process should use: the registry's, else the repo file at `repo_path`.

    Does not apply anything and does not create a registry file.
    """
    if settings.registry.exists():
        with Registry(settings.registry) as registry:
            repo = registry.current()
        if repo.views or repo.sources or repo.entities or repo.services:
            return repo
    if repo_path is not None:
        return load_repo(repo_path)
    raise DefinitionError(
        f"the registry {str(settings.registry)!r} holds no feature definitions; run `featurestream apply <repo>` "
        f"first (or set FEATURESTREAM_REGISTRY to the registry you applied to)"
    )


def _kind(kind: str) -> Kind:
    group = KIND_GROUP.get(kind, kind)
    for known in KINDS:
        if group == known:
            return known
    raise UnknownFeatureError(f"unknown definition kind {kind!r}; use one of {', '.join(KINDS)}")


def _row(change: Change, apply_id: int | None, applied_by: str, applied_at: int) -> tuple[Any, ...]:
    definition = None if change.definition is None else orjson.dumps(change.definition).decode()
    diff = orjson.dumps([[c.path, c.old, c.new, c.change] for c in change.diff]).decode()
    return (change.kind, change.name, change.new_version, change.action, change.fingerprint,
            change.state_fingerprint, definition, int(change.breaking), change.reason, diff, apply_id, applied_by,
            applied_at)


def _record(row: tuple[Any, ...]) -> VersionRecord:
    (kind, name, version, action, fingerprint, state_fp, definition, breaking, reason, diff, apply_id,
     applied_by, applied_at) = row
    return VersionRecord(
        kind=_kind(kind), name=name, version=int(version), action=action, fingerprint=fingerprint,
        state_fingerprint=state_fp, definition=None if definition is None else orjson.loads(definition),
        breaking=bool(breaking), reason=reason,
        diff=tuple(FieldChange(path=p, old=o, new=n, change=c) for p, o, n, c in orjson.loads(diff)),
        apply_id=int(apply_id), applied_by=applied_by, applied_at=int(applied_at),
    )
