"""Durable record of every mutating action, keyed by an idempotency key.

The engineer writes `started` before touching anything and `done`/`failed` after, in their own transactions,
so a run resumed after a crash can tell a completed action (never repeated) from an unfinished one (checked
and finished). The same table answers cooldown questions across incidents.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel

_SCHEMA = """
CREATE TABLE IF NOT EXISTS actions (
    key TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    service TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    ref TEXT NOT NULL DEFAULT '',
    before TEXT NOT NULL DEFAULT '{}',
    started_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS actions_service ON actions (service, kind, started_at);
"""


class LedgerEntry(BaseModel):
    """One row of the ledger."""

    key: str
    incident_id: str
    service: str
    kind: str
    status: str
    detail: str
    ref: str
    before: dict[str, Any]
    started_at: float
    finished_at: float | None


class ActionLedger:
    """SQLite-backed idempotency ledger."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.row_factory = sqlite3.Row
        return conn

    def get(self, key: str) -> LedgerEntry | None:
        """The entry for `key`, if any."""
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM actions WHERE key = ?", (key,)).fetchone()
        conn.close()
        return _entry(row) if row else None

    def start(self, key: str, incident_id: str, service: str, kind: str, before: dict[str, Any], now: float) -> None:
        """Record that an action is about to run (a no-op if the key exists)."""
        with self._lock, self._connect() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO actions (key, incident_id, service, kind, status, before, started_at)"
                " VALUES (?, ?, ?, ?, 'started', ?, ?)",
                (key, incident_id, service, kind, json.dumps(before), now),
            )
        conn.close()

    def finish(self, key: str, status: str, detail: str, ref: str, now: float) -> None:
        """Record the outcome of an action."""
        with self._lock, self._connect() as conn:
            conn.execute(
                "UPDATE actions SET status = ?, detail = ?, ref = ?, finished_at = ? WHERE key = ?",
                (status, detail, ref, now, key),
            )
        conn.close()

    def last_action_at(self, service: str, kind: str) -> float | None:
        """When an action of this kind last ran on this service and took effect (for cooldowns)."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT MAX(COALESCE(finished_at, started_at)) FROM actions"
                " WHERE service = ? AND kind = ? AND status IN ('started', 'done')",
                (service, kind),
            ).fetchone()
        conn.close()
        return row[0] if row and row[0] is not None else None

    def for_incident(self, incident_id: str) -> list[LedgerEntry]:
        """Every action of one incident, oldest first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM actions WHERE incident_id = ? ORDER BY started_at", (incident_id,)
            ).fetchall()
        conn.close()
        return [_entry(r) for r in rows]

    def all(self) -> list[LedgerEntry]:
        """Every action, oldest first."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM actions ORDER BY started_at").fetchall()
        conn.close()
        return [_entry(r) for r in rows]


def _entry(row: sqlite3.Row) -> LedgerEntry:
    data = dict(row)
    data["before"] = json.loads(data["before"] or "{}")
    return LedgerEntry.model_validate(data)
