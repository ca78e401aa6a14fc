"""The model registry: immutable versions, content-addressed artifacts, stages and an audit trail.

Metadata lives in SQLite (`models.sqlite` next to the definitions registry),
artifacts under `<data_dir>/models/artifacts/<sha256>`. A version never
changes after `register`; only its stage does (staging, production,
archived), and every stage change is recorded with who, when and why. At
most one version per model is in production; `rollback` returns production
to the version that held it before. Loading re-hashes the artifact and
refuses it (ModelIntegrityError) when the hash differs.

Both serving (HTTP) and the stream worker (online learning) register
versions, so writes run in `BEGIN IMMEDIATE` transactions.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from feature_store.errors import DefinitionError, ModelIntegrityError, RegistryError, UnknownFeatureError
from feature_store.models.flavors import FLAVORS, Flavor, LoadedModel, artifact_bytes, load_model
from feature_store.sqlite_store import open_store
from schemas import now_ms

if TYPE_CHECKING:
    from feature_store.settings import Settings

__all__ = ["STAGES", "AuditEntry", "ModelRegistry", "ModelVersion", "Stage"]

Stage = Literal["staging", "production", "archived"]
STAGES: tuple[Stage, ...] = ("staging", "production", "archived")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, flavor TEXT NOT NULL, sha256 TEXT NOT NULL,
    size INTEGER NOT NULL, stage TEXT NOT NULL, feature_service TEXT, service_fingerprint TEXT,
    features TEXT NOT NULL, metrics TEXT NOT NULL, params TEXT NOT NULL, training_set_ref TEXT,
    data_start INTEGER, data_end INTEGER, fallback TEXT, description TEXT NOT NULL,
    created_at INTEGER NOT NULL, created_by TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version INTEGER NOT NULL,
    action TEXT NOT NULL, from_stage TEXT, to_stage TEXT NOT NULL, actor TEXT NOT NULL,
    reason TEXT NOT NULL, at INTEGER NOT NULL
);
"""


@dataclass(frozen=True, kw_only=True)
class ModelVersion:
    """One registered, immutable model version and its lineage."""

    name: str
    version: int
    flavor: Flavor
    sha256: str
    size: int
    stage: Stage
    feature_service: str | None
    service_fingerprint: str | None
    features: tuple[str, ...]
    metrics: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    training_set_ref: str | None = None
    data_range: tuple[int, int] | None = None
    fallback: str | None = None
    description: str = ""
    created_at: int = 0
    created_by: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "flavor": self.flavor, "sha256": self.sha256,
                "size": self.size, "stage": self.stage, "feature_service": self.feature_service,
                "service_fingerprint": self.service_fingerprint, "features": list(self.features),
                "metrics": dict(self.metrics), "params": dict(self.params),
                "training_set_ref": self.training_set_ref,
                "data_range": list(self.data_range) if self.data_range else None, "fallback": self.fallback,
                "description": self.description, "created_at": self.created_at, "created_by": self.created_by}


@dataclass(frozen=True)
class AuditEntry:
    """One stage change: who moved which version from where to where, when (epoch ms) and why."""

    name: str
    version: int
    action: str
    from_stage: str | None
    to_stage: str
    actor: str
    reason: str
    at: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "action": self.action, "from_stage": self.from_stage,
                "to_stage": self.to_stage, "actor": self.actor, "reason": self.reason, "at": self.at}



class ModelRegistry:
    """Registered models of one deployment; cheap to build, one SQLite connection per call."""

    def __init__(self, db_path: Path, artifact_dir: Path) -> None:
        self.db_path = Path(db_path)
        self.artifact_dir = Path(artifact_dir)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """`models.sqlite` next to the registry file; artifacts under the data dir."""
        return cls(Path(settings.registry).parent / "models.sqlite", Path(settings.data_dir) / "models" / "artifacts")

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return open_store(self.db_path, "model registry")

    # ------------------------------------------------------------ writes

    def register(
        self,
        name: str,
        artifact: Any,
        *,
        flavor: Flavor,
        feature_service: str | None = None,
        service_fingerprint: str | None = None,
        features: Sequence[str] = (),
        metrics: Mapping[str, float] | None = None,
        training_set_ref: str | None = None,
        params: Mapping[str, Any] | None = None,
        data_range: tuple[int, int] | None = None,
        fallback: str | None = None,
        description: str = "",
        actor: str = "system",
    ) -> ModelVersion:
        """Store a new immutable version (stage `staging`) and return it.

        `artifact` is bytes, a model object (pickled) or, for `rule`, an
        expression. The artifact is loaded once here, so a version that
        cannot predict is never registered. `fallback` is a rule expression
        or `model@version` of a baseline model.
        """
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise DefinitionError(f"model name {name!r} is not valid; use letters, digits, '_' and '-'")
        if flavor not in FLAVORS:
            raise DefinitionError(f"model flavor {flavor!r} is not known; use one of {', '.join(FLAVORS)}")
        data = artifact_bytes(artifact, flavor)
        load_model(flavor, data, features=features)
        if fallback is not None:
            self._check_fallback(fallback)
        if data_range is not None and (len(data_range) != 2 or data_range[0] > data_range[1]):
            raise DefinitionError(f"data_range {data_range!r} must be (start_ms, end_ms) with start <= end")
        sha = hashlib.sha256(data).hexdigest()
        self._write_artifact(sha, data)
        now = now_ms()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT coalesce(max(version), 0) FROM versions WHERE name = ?", (name,)).fetchone()
            version = int(row[0]) + 1
            db.execute(
                "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (name, version, flavor, sha, len(data), "staging", feature_service, service_fingerprint,
                 orjson.dumps(list(features)).decode(), orjson.dumps(dict(metrics or {})).decode(),
                 orjson.dumps(dict(params or {})).decode(), training_set_ref,
                 data_range[0] if data_range else None, data_range[1] if data_range else None, fallback,
                 description, now, actor),
            )
            db.execute("INSERT INTO audit (name, version, action, from_stage, to_stage, actor, reason, at) "
                       "VALUES (?,?,?,?,?,?,?,?)", (name, version, "register", None, "staging", actor,
                                                     "registered", now))
            db.execute("COMMIT")
        return self.get(name, version)

    def promote(
        self, name: str, version: int, stage: Stage, *, actor: str = "system", reason: str = ""
    ) -> ModelVersion:
        """Move a version to `stage`; promoting to production archives the current production version."""
        if stage not in STAGES:
            raise DefinitionError(f"stage {stage!r} is not known; use one of {', '.join(STAGES)}")
        now = now_ms()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            current = self._row(db, name, version)
            if current["stage"] != stage:
                if stage == "production":
                    for old in db.execute("SELECT version FROM versions WHERE name = ? AND stage = 'production'",
                                          (name,)).fetchall():
                        self._move(db, name, old[0], "production", "archived", "replaced", actor,
                                   f"replaced by version {version}", now)
                self._move(db, name, version, current["stage"], stage, "promote", actor, reason, now)
            db.execute("COMMIT")
        return self.get(name, version)

    def rollback(self, name: str, *, actor: str = "system", reason: str = "") -> ModelVersion:
        """Production goes back to the version that was in production before the current one."""
        now = now_ms()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            self._require_model(db, name)
            stack = self._production_stack(db, name)
            if len(stack) < 2:
                raise RegistryError(
                    f"model {name!r} has no earlier production version to roll back to; promote a version instead"
                )
            current, previous = stack[-1], stack[-2]
            self._move(db, name, current, "production", "archived", "rollback", actor, reason or "rollback", now)
            prev_stage = self._row(db, name, previous)["stage"]
            self._move(db, name, previous, prev_stage, "production", "restore", actor,
                       reason or f"rollback from version {current}", now)
            db.execute("COMMIT")
        return self.get(name, previous)

    # ------------------------------------------------------------ reads

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """A version; None means the production version (UnknownFeatureError if there is none)."""
        with self._connect() as db:
            if version is None:
                row = db.execute("SELECT * FROM versions WHERE name = ? AND stage = 'production'",
                                 (name,)).fetchone()
                if row is None:
                    self._require_model(db, name)
                    raise UnknownFeatureError(
                        f"model {name!r} has no production version; promote one "
                        f"(featurestream models promote {name} VERSION) or ask for ?version=N"
                    )
            else:
                row = self._row(db, name, version)
        return _version_of(row)

    def list(self, name: str | None = None) -> builtins.list[ModelVersion]:
        """Every version (of `name`, or of all models), by name then version."""
        with self._connect() as db:
            if name is None:
                rows = db.execute("SELECT * FROM versions ORDER BY name, version").fetchall()
            else:
                rows = db.execute("SELECT * FROM versions WHERE name = ? ORDER BY version", (name,)).fetchall()
                if not rows:
                    self._require_model(db, name)
        return [_version_of(r) for r in rows]

    def names(self) -> builtins.list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT name FROM versions ORDER BY name").fetchall()]

    def audit(self, name: str) -> builtins.list[AuditEntry]:
        """Stage changes of a model, oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT name, version, action, from_stage, to_stage, actor, reason, at FROM audit "
                              "WHERE name = ? ORDER BY id", (name,)).fetchall()
        return [AuditEntry(*r) for r in rows]

    def load(self, version: ModelVersion) -> LoadedModel:
        """The predictor of a version, after re-hashing its artifact (ModelIntegrityError on mismatch)."""
        path = self._artifact_path(version.sha256)
        try:
            data = path.read_bytes()
        except OSError:
            raise ModelIntegrityError(
                f"artifact of model {version.name!r} version {version.version} is missing at {str(path)!r}; "
                f"register the model again"
            ) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != version.sha256:
            raise ModelIntegrityError(
                f"artifact of model {version.name!r} version {version.version} has sha256 {actual[:12]}..., "
                f"registered {version.sha256[:12]}...; it was modified and is refused - register the model again"
            )
        return load_model(version.flavor, data, features=version.features)

    # ------------------------------------------------------------ helpers

    def _check_fallback(self, fallback: str) -> None:
        if "@" in fallback:
            name, _, version = fallback.partition("@")
            if not version.isdigit():
                raise DefinitionError(f"fallback {fallback!r}: write a baseline model as name@version")
            self.get(name, int(version))
        else:
            from feature_store.expressions import parse

            parse(fallback)

    def _artifact_path(self, sha: str) -> Path:
        return self.artifact_dir / sha[:2] / sha

    def _write_artifact(self, sha: str, data: bytes) -> None:
        path = self._artifact_path(sha)
        if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == sha:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    @staticmethod
    def _row(db: sqlite3.Connection, name: str, version: int) -> sqlite3.Row:
        row = db.execute("SELECT * FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone()
        if row is not None:
            return row  # type: ignore[no-any-return]
        ModelRegistry._require_model(db, name)
        known = [r[0] for r in db.execute("SELECT version FROM versions WHERE name = ? ORDER BY version",
                                          (name,)).fetchall()]
        raise UnknownFeatureError(f"model {name!r} has no version {version} (versions: {known})")

    @staticmethod
    def _require_model(db: sqlite3.Connection, name: str) -> None:
        known = [r[0] for r in db.execute("SELECT version FROM versions WHERE name = ? ORDER BY version",
                                          (name,)).fetchall()]
        if not known:
            names = [r[0] for r in db.execute("SELECT DISTINCT name FROM versions ORDER BY name").fetchall()]
            raise UnknownFeatureError(f"unknown model {name!r} (models: {', '.join(names) or 'none registered'})")

    @staticmethod
    def _move(db: sqlite3.Connection, name: str, version: int, from_stage: str | None, to_stage: str, action: str,
              actor: str, reason: str, now: int) -> None:
        db.execute("UPDATE versions SET stage = ? WHERE name = ? AND version = ?", (to_stage, name, version))
        db.execute("INSERT INTO audit (name, version, action, from_stage, to_stage, actor, reason, at) "
                   "VALUES (?,?,?,?,?,?,?,?)", (name, version, action, from_stage, to_stage, actor, reason, now))

    @staticmethod
    def _production_stack(db: sqlite3.Connection, name: str) -> builtins.list[int]:
        """Versions that held production, oldest first, with rolled-back ones popped off."""
        stack: builtins.list[int] = []
        for version, action, from_stage, to_stage in db.execute(
            "SELECT version, action, from_stage, to_stage FROM audit WHERE name = ? ORDER BY id", (name,)
        ).fetchall():
            if to_stage == "production" and action == "promote":
                stack.append(version)
            elif action == "rollback" and stack:
                stack.pop()
            elif from_stage == "production" and to_stage != "production" and action == "promote":
                stack = [v for v in stack if v != version]  # demoted by hand: never roll back to it
        return stack


def _version_of(row: sqlite3.Row) -> ModelVersion:
    start, end = row["data_start"], row["data_end"]
    return ModelVersion(
        name=row["name"], version=row["version"], flavor=row["flavor"], sha256=row["sha256"], size=row["size"],
        stage=row["stage"], feature_service=row["feature_service"], service_fingerprint=row["service_fingerprint"],
        features=tuple(orjson.loads(row["features"])), metrics=orjson.loads(row["metrics"]),
        params=orjson.loads(row["params"]), training_set_ref=row["training_set_ref"],
        data_range=(start, end) if start is not None and end is not None else None, fallback=row["fallback"],
        description=row["description"], created_at=row["created_at"], created_by=row["created_by"],
    )
