"""Durable record of every mutating action, keyed by an idempotency key.

The engineer writes `started` before touching anything and `done`/`failed` after, in their own transactions,
so a run resumed after a crash can tell a completed action (never repeated) from an unfinished one (checked
and finished). The same table answers cooldown questions across incidents.

Notifications have a table of their own in the same file (`tools.notifier.IdempotentNotifier`): `sending`
before delivery, `sent` after, so a step re-run after a crash never notifies twice nor skips one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tools.sql import Database, SqliteDatabase

MIGRATIONS = [
    """
CREATE TABLE IF NOT EXISTS actions (
    key TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    service TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    ref TEXT NOT NULL DEFAULT '',
    before TEXT NOT NULL DEFAULT '{}',
    started_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS actions_service ON actions (service, kind, started_at);
CREATE TABLE IF NOT EXISTS notifications (
    key TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    event TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    sent_at DOUBLE PRECISION
);
""",
    "CREATE INDEX IF NOT EXISTS actions_incident ON actions (incident_id, started_at)",
]
"""The ledger's schema, one script per version (tools.sql's migrations); never edit one that shipped."""

Fence = Callable[[str], None]
"""Called with an incident id before its action or notification is recorded as starting; raises to stop it
(sregraph.leases: the worker no longer holds that incident's lease)."""


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
    """The idempotency ledger, on a SQLite file (a path) or a shared database (tools.sql)."""

    def __init__(self, db: Database | Path | str, fence: Fence | None = None) -> None:
        self.db: Database = db if not isinstance(db, Path | str) else SqliteDatabase(db)
        self.fence = fence
        """Checked before an action or a notification of an incident is recorded as starting."""
        self._lock = threading.Lock()
        self.db.migrate("ledger", MIGRATIONS)

    def _connect(self) -> Any:
        return self.db.connect()

    def _check(self, incident_id: str) -> None:
        if self.fence is not None:
            self.fence(incident_id)

    def get(self, key: str) -> LedgerEntry | None:
        """The entry for `key`, if any."""
        with self.db.read() as conn:
            row = conn.execute("SELECT * FROM actions WHERE key = ?", (key,)).fetchone()
        return _entry(row) if row else None

    def start(
        self, key: str, incident_id: str, service: str, kind: str, before: dict[str, Any], now: float
    ) -> None:
        """Record that an action is about to run (a no-op if the key exists)."""
        self._check(incident_id)
        with self._lock, self._connect() as conn:
            conn.execute(
                "INSERT INTO actions (key, incident_id, service, kind, status, before, started_at)"
                " VALUES (?, ?, ?, ?, 'started', ?, ?) ON CONFLICT (key) DO NOTHING",
                (key, incident_id, service, kind, json.dumps(before), now),
            )

    def finish(self, key: str, status: str, detail: str, ref: str, now: float) -> None:
        """Record the outcome of an action."""
        with self._lock, self._connect() as conn:
            conn.execute(
                "UPDATE actions SET status = ?, detail = ?, ref = ?, finished_at = ? WHERE key = ?",
                (status, detail, ref, now, key),
            )

    def last_action_at(self, service: str, kind: str) -> float | None:
        """When an action of this kind last ran on this service and took effect (for cooldowns)."""
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT MAX(COALESCE(finished_at, started_at)) FROM actions"
                " WHERE service = ? AND kind = ? AND status IN ('started', 'done')",
                (service, kind),
            ).fetchone()
        return row[0] if row and row[0] is not None else None

    def for_incident(self, incident_id: str) -> list[LedgerEntry]:
        """Every action of one incident, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT * FROM actions WHERE incident_id = ? ORDER BY started_at", (incident_id,)
            ).fetchall()
        return [_entry(r) for r in rows]

    # ------------------------------------------------------------------ notifications

    def notification_status(self, key: str) -> str | None:
        """`sending` (delivery began, outcome unknown), `sent`, or None for a notification never tried."""
        with self.db.read() as conn:
            row = conn.execute("SELECT status FROM notifications WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def notification_sending(self, key: str, incident_id: str, event: str, now: float) -> None:
        """Record that a notification is about to be delivered (a no-op if the key exists)."""
        self._check(incident_id)
        with self._lock, self._connect() as conn:
            conn.execute(
                "INSERT INTO notifications (key, incident_id, event, status, started_at)"
                " VALUES (?, ?, ?, 'sending', ?) ON CONFLICT (key) DO NOTHING",
                (key, incident_id, event, now),
            )

    def notification_sent(self, key: str, now: float) -> None:
        """Record that a notification was delivered."""
        with self._lock, self._connect() as conn:
            conn.execute("UPDATE notifications SET status = 'sent', sent_at = ? WHERE key = ?", (now, key))

    def notifications(self, incident_id: str | None = None) -> list[tuple[str, str, str]]:
        """(key, event, status) of the notifications of one incident (or all), oldest first."""
        query = "SELECT key, event, status FROM notifications"
        args: tuple[str, ...] = ()
        if incident_id is not None:
            query, args = query + " WHERE incident_id = ?", (incident_id,)
        with self.db.read() as conn:
            rows = conn.execute(query + " ORDER BY started_at, key", args).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def close(self) -> None:
        """Release the database handle."""
        self.db.close()

    def all(self) -> list[LedgerEntry]:
        """Every action, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute("SELECT * FROM actions ORDER BY started_at").fetchall()
        return [_entry(r) for r in rows]


def _entry(row: Any) -> LedgerEntry:
    data = {name: row[name] for name in row.keys()}  # noqa: SIM118 - a row iterates over its values
    data["before"] = json.loads(data["before"] or "{}")
    return LedgerEntry.model_validate(data)
