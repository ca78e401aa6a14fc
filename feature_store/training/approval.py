"""Champion/challenger with four-eyes promotion, on top of the model registry's stages.

The registry knows stages (staging/production/archived), `promote` and
`rollback`; this module adds what a careful rollout needs:

- one *challenger* per model: a staging version that scores in shadow on live
  traffic (the stream worker logs its scores; they are never returned);
- a promotion *request* by one API key, with a reason and the metrics at the
  time, that only a *different* key can approve (or reject);
- the approval promotes through `ModelRegistry.promote` (so the registry's
  own audit has it) and records who requested, who approved, when and why;
- `rollback` is one call (the registry's), recorded here too.

State lives in `approvals.sqlite` next to the registry.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from feature_store.errors import ApprovalError, UnknownFeatureError
from feature_store.models import ModelRegistry, ModelVersion
from feature_store.sqlite_store import open_store
from schemas import now_ms

if TYPE_CHECKING:
    from feature_store.settings import Settings

__all__ = ["Approvals", "PromotionRequest"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS challengers (
    model TEXT PRIMARY KEY, version INTEGER NOT NULL, set_by TEXT NOT NULL, set_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, version INTEGER NOT NULL,
    requested_by TEXT NOT NULL, reason TEXT NOT NULL, metrics TEXT NOT NULL, requested_at INTEGER NOT NULL,
    status TEXT NOT NULL, decided_by TEXT, decided_at INTEGER, decision_reason TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, version INTEGER, action TEXT NOT NULL,
    actor TEXT NOT NULL, reason TEXT NOT NULL, metrics TEXT NOT NULL, at INTEGER NOT NULL
);
"""



@dataclass(frozen=True, kw_only=True)
class PromotionRequest:
    """A request to put `version` of `model` in production, and its outcome."""

    id: int
    model: str
    version: int
    requested_by: str
    reason: str
    metrics: dict[str, Any]
    requested_at: int
    status: str  # pending, approved, rejected
    decided_by: str | None = None
    decided_at: int | None = None
    decision_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Approvals:
    """Challenger designation, promotion requests and their audit, for one model registry."""

    def __init__(self, registry: ModelRegistry, db_path: Path) -> None:
        self.registry = registry
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @classmethod
    def from_settings(cls, settings: Settings, registry: ModelRegistry | None = None) -> Approvals:
        return cls(registry or ModelRegistry.from_settings(settings),
                   Path(settings.registry).parent / "approvals.sqlite")

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return open_store(self.db_path, "approvals store")

    def _event(self, db: sqlite3.Connection, model: str, version: int | None, action: str, actor: str,
               reason: str, metrics: Mapping[str, Any] | None = None) -> None:
        db.execute("INSERT INTO events (model, version, action, actor, reason, metrics, at) VALUES (?,?,?,?,?,?,?)",
                   (model, version, action, actor, reason, orjson.dumps(dict(metrics or {})).decode(), now_ms()))

    # -- challenger
    def set_challenger(self, model: str, version: int, *, actor: str, reason: str = "") -> ModelVersion:
        """Make a registered, non-production version the one that scores in shadow."""
        mv = self.registry.get(model, version)
        if mv.stage == "production":
            raise ApprovalError(f"model {model!r} version {version} is already in production; "
                                "a challenger must be a staging version")
        if mv.stage == "archived":
            raise ApprovalError(f"model {model!r} version {version} is archived; register or pick a staging version")
        with self._connect() as db:
            db.execute("INSERT INTO challengers VALUES (?,?,?,?) ON CONFLICT(model) DO UPDATE SET "
                       "version = excluded.version, set_by = excluded.set_by, set_at = excluded.set_at",
                       (model, version, actor, now_ms()))
            self._event(db, model, version, "challenger", actor, reason or "set as challenger")
        return mv

    def clear_challenger(self, model: str, *, actor: str, reason: str = "") -> None:
        with self._connect() as db:
            db.execute("DELETE FROM challengers WHERE model = ?", (model,))
            self._event(db, model, None, "challenger_cleared", actor, reason or "cleared")

    def challenger(self, model: str) -> int | None:
        with self._connect() as db:
            row = db.execute("SELECT version FROM challengers WHERE model = ?", (model,)).fetchone()
        return int(row[0]) if row else None

    def challengers(self) -> dict[str, int]:
        with self._connect() as db:
            return {r[0]: int(r[1]) for r in db.execute("SELECT model, version FROM challengers").fetchall()}

    # -- four eyes
    def request_promotion(self, model: str, version: int, *, requester: str, reason: str,
                          metrics: Mapping[str, Any] | None = None) -> PromotionRequest:
        """Ask for `version` to go to production; a different key must approve."""
        if not reason.strip():
            raise ApprovalError("a promotion request needs a reason (why this version should serve)")
        mv = self.registry.get(model, version)
        if mv.stage == "production":
            raise ApprovalError(f"model {model!r} version {version} is already in production")
        snapshot = {"registered": dict(mv.metrics), **dict(metrics or {})}
        with self._connect() as db:
            cur = db.execute(
                "INSERT INTO requests (model, version, requested_by, reason, metrics, requested_at, status) "
                "VALUES (?,?,?,?,?,?,'pending')",
                (model, version, requester, reason, orjson.dumps(snapshot).decode(), now_ms()))
            self._event(db, model, version, "request", requester, reason, snapshot)
            request_id = int(cur.lastrowid or 0)
        return self.request(request_id)

    def approve(self, request_id: int, *, approver: str, reason: str = "") -> ModelVersion:
        """Approve with a second key: promotes the version to production (the registry archives the old one)."""
        req = self._pending(request_id)
        if approver == req.requested_by:
            raise ApprovalError(f"promotion request {request_id} was made by {approver!r}; "
                                "a different API key must approve it (four eyes)")
        why = reason or f"approved request {request_id}"
        promoted = self.registry.promote(
            req.model, req.version, "production", actor=f"{req.requested_by}+{approver}",
            reason=f"request {request_id} by {req.requested_by}: {req.reason}; approved by {approver}: {why}")
        with self._connect() as db:
            db.execute("UPDATE requests SET status='approved', decided_by=?, decided_at=?, decision_reason=? "
                       "WHERE id=?", (approver, now_ms(), why, request_id))
            db.execute("DELETE FROM challengers WHERE model = ? AND version = ?", (req.model, req.version))
            self._event(db, req.model, req.version, "approve", approver, why, req.metrics)
        return promoted

    def reject(self, request_id: int, *, approver: str, reason: str) -> PromotionRequest:
        req = self._pending(request_id)
        if approver == req.requested_by:
            raise ApprovalError(f"promotion request {request_id} was made by {approver!r}; "
                                "a different API key must decide it (four eyes)")
        with self._connect() as db:
            db.execute("UPDATE requests SET status='rejected', decided_by=?, decided_at=?, decision_reason=? "
                       "WHERE id=?", (approver, now_ms(), reason, request_id))
            self._event(db, req.model, req.version, "reject", approver, reason, req.metrics)
        return self.request(request_id)

    def rollback(self, model: str, *, actor: str, reason: str = "") -> ModelVersion:
        """One call: production goes back to the version before (the registry's rollback), audited here too."""
        before = self.registry.get(model)
        restored = self.registry.rollback(model, actor=actor, reason=reason or "rollback")
        with self._connect() as db:
            self._event(db, model, restored.version, "rollback", actor,
                        reason or f"rolled back from version {before.version}",
                        {"from_version": before.version, "from_metrics": dict(before.metrics)})
        return restored

    # -- reads
    def request(self, request_id: int) -> PromotionRequest:
        with self._connect() as db:
            row = db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            raise UnknownFeatureError(f"no promotion request {request_id}")
        data = dict(row)
        data["metrics"] = orjson.loads(data["metrics"])
        return PromotionRequest(**data)

    def _pending(self, request_id: int) -> PromotionRequest:
        req = self.request(request_id)
        if req.status != "pending":
            raise ApprovalError(f"promotion request {request_id} is already {req.status} by {req.decided_by!r}; "
                                "make a new request")
        return req

    def requests(self, model: str, *, status: str | None = None) -> list[PromotionRequest]:
        with self._connect() as db:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM requests WHERE model = ? AND (? IS NULL OR status = ?) ORDER BY id",
                (model, status, status)).fetchall()]
        return [self.request(i) for i in ids]

    def audit(self, model: str) -> list[dict[str, Any]]:
        """Every challenger change, request, decision and rollback, oldest first (who, when, why, metrics)."""
        with self._connect() as db:
            rows = db.execute("SELECT version, action, actor, reason, metrics, at FROM events WHERE model = ? "
                              "ORDER BY id", (model,)).fetchall()
        return [{"version": r["version"], "action": r["action"], "actor": r["actor"], "reason": r["reason"],
                 "metrics": orjson.loads(r["metrics"]), "at": r["at"]} for r in rows]
