"""API tokens with roles, and the audit log of every mutating API call, in one SQLite file (`data_dir/api.db`).

A token is shown once, when it is created; only its SHA-256 is stored. Tokens are 256 random bits, so a fast
hash is enough (a password needs a slow one because people choose guessable ones; nobody guesses 2^256).
Roles: a viewer reads, an operator also approves, rejects, acknowledges, sends alerts and telemetry, an admin also
reads the audit log; an application's `ingest` token only sends telemetry (which steers the agents, so a viewer
may not).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tools.base import ConfigError, NotFound

Role = Literal["ingest", "viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("ingest", "viewer", "operator", "admin")
"""Weakest first: each of viewer, operator, admin may do what the ones before it may. `ingest` is an
application's: it may only send telemetry (as may operators and admins, not viewers), not read incidents."""

TOKEN_PREFIX = "srg_"
"""Makes a leaked token recognisable to secret scanners and to `tools.redact`."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    principal TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
"""


@dataclass(frozen=True)
class Principal:
    """Who made a call: the token's name and role."""

    name: str
    role: Role

    def may(self, role: Role) -> bool:
        """Whether this principal's role includes `role`."""
        if role == "ingest":
            # Telemetry steers the agents, so sending it is an operator's power, or an application's own token's.
            return self.role in ("ingest", "operator", "admin")
        return self.role != "ingest" and ROLES.index(self.role) >= ROLES.index(role)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiStore:
    """Tokens and the audit log. Every call opens its own connection, so threads may share one store."""

    def __init__(self, path: Path | str, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        with self._connect() as conn:
            # WAL: readers (token checks) never wait for the audit log's writers.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=self.busy_timeout_s)) as conn, conn:
            yield conn

    # ------------------------------------------------------------------ tokens

    def create_token(self, name: str, role: str) -> str:
        """A new token for `name` with `role`; the only time the token itself is seen."""
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        if not name.strip() or len(name) > 100:
            raise ConfigError("a token's name must be 1 to 100 characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._connect() as conn:
            live = conn.execute(
                "SELECT 1 FROM tokens WHERE name = ? AND revoked_at IS NULL", (name,)
            ).fetchone()
            if live:
                raise ConfigError(f"a token named {name!r} exists; revoke it first")
            conn.execute("DELETE FROM tokens WHERE name = ?", (name,))
            conn.execute(
                "INSERT INTO tokens (name, hash, role, created_at) VALUES (?, ?, ?, ?)",
                (name, _digest(token), role, time.time()),
            )
        return token

    def revoke(self, name: str) -> None:
        """Revoke the token named `name`; NotFound if there is no live one."""
        with self._connect() as conn:
            done = conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (time.time(), name)
            ).rowcount
        if not done:
            raise NotFound(f"no live token named {name!r}")

    def tokens(self) -> list[dict[str, Any]]:
        """Every token's name, role and dates (never the token or its hash)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT name, role, created_at, revoked_at FROM tokens ORDER BY created_at"
            ).fetchall()
        return [{"name": r[0], "role": r[1], "created_at": r[2], "revoked_at": r[3]} for r in rows]

    def verify(self, token: str) -> Principal | None:
        """The principal of a live token, or None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        with self._connect() as conn:
            row = conn.execute(
                "SELECT name, role FROM tokens WHERE hash = ? AND revoked_at IS NULL", (_digest(token),)
            ).fetchone()
        return Principal(row[0], row[1]) if row else None

    # ------------------------------------------------------------------ audit

    def audit(
        self, principal: str, method: str, path: str, status: int, detail: dict[str, Any] | None = None
    ) -> None:
        """Record one mutating call (allowed or not)."""
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO audit (at, principal, method, path, status, detail) VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), principal, method, path[:500], status, json.dumps(detail or {}, default=str)),
            )

    def audit_log(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """The newest audit entries first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, at, principal, method, path, status, detail FROM audit ORDER BY id DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return [
            {
                "id": r[0],
                "at": r[1],
                "principal": r[2],
                "method": r[3],
                "path": r[4],
                "status": r[5],
                "detail": json.loads(r[6]),
            }
            for r in rows
        ]
