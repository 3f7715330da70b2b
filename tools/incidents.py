"""The embedded incident tracker: issues, labels and comments in one SQLite file.

The worker and the CLI open the same file from different processes, so every call takes its own
short-lived connection (WAL journal, busy timeout) and every write runs in a `BEGIN IMMEDIATE`
transaction: the write lock is taken up front, so a read-then-write (dedup by fingerprint, idempotent
comments) cannot interleave with another writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Literal

from tools.base import (
    Clock,
    Comment,
    ConfigError,
    Issue,
    NotFound,
    Refused,
    SystemClock,
    ToolError,
    TransientError,
)
from tools.redact import redact_out

STATUS_PREFIX = "status:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS issues (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    title       TEXT NOT NULL,
    body        TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('open', 'closed')),
    fingerprint TEXT,
    created_at  REAL NOT NULL,
    closed_at   REAL
);
-- At most one open issue per fingerprint, enforced by the database and not only by the code path.
CREATE UNIQUE INDEX IF NOT EXISTS issues_open_fingerprint
    ON issues (fingerprint) WHERE state = 'open' AND fingerprint IS NOT NULL;
CREATE TABLE IF NOT EXISTS labels (
    issue_id INTEGER NOT NULL REFERENCES issues (id) ON DELETE CASCADE,
    name     TEXT NOT NULL,
    PRIMARY KEY (issue_id, name)
);
CREATE TABLE IF NOT EXISTS comments (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    issue_id   INTEGER NOT NULL REFERENCES issues (id) ON DELETE CASCADE,
    author     TEXT NOT NULL,
    body       TEXT NOT NULL,
    key        TEXT,
    created_at REAL NOT NULL,
    -- Keys are scoped to one issue: a key such as "diagnosis" reused on a later incident must post a new
    -- comment there, not silently return the old incident's comment. NULL keys never collide.
    UNIQUE (issue_id, key)
);
CREATE INDEX IF NOT EXISTS comments_issue ON comments (issue_id, id);
"""


class LocalIncidentSurface:
    """IncidentSurface over a local SQLite file, safe to share between threads and processes."""

    def __init__(self, path: Path | str, clock: Clock | None = None, *, busy_timeout_s: float = 10.0) -> None:
        """Open (and create if needed) the tracker database at `path`."""
        if str(path) == ":memory:":
            # A connection per call would give every call its own empty in-memory database.
            raise ConfigError("path: ':memory:' is not supported; give a file path")
        self.path = Path(path)
        self.clock: Clock = clock or SystemClock()
        self._busy_timeout_s = busy_timeout_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"path: cannot create directory for {self.path}: {exc}") from exc
        with self._connect() as conn:
            try:
                # WAL lets readers (the CLI) run while the worker writes; the setting persists in the file.
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
            except sqlite3.DatabaseError as exc:
                raise _translate(exc, f"cannot initialise incident database {self.path}") from exc

    # ------------------------------------------------------------------ connections

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise _translate(exc, f"cannot open incident database {self.path}") from exc
        with closing(conn):
            conn.row_factory = sqlite3.Row
            try:
                conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
                conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as exc:
                raise _translate(exc, f"cannot configure incident database {self.path}") from exc
            yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _translate(exc, "cannot start a write transaction") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise _translate(exc, "write failed") from exc
            except BaseException:
                _rollback(conn)
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            try:
                yield conn
            except sqlite3.Error as exc:
                raise _translate(exc, "read failed") from exc

    # ------------------------------------------------------------------ IncidentSurface

    def open_issue(self, title: str, body: str, labels: list[str], fingerprint: str) -> tuple[Issue, bool]:
        """Open an issue, or return the open one with this fingerprint; the bool says whether it is new."""
        with self._write() as conn:
            existing = _open_id(conn, fingerprint)
            if existing is not None:
                return self._load(conn, existing), False
            cur = conn.execute(
                "INSERT INTO issues (title, body, state, fingerprint, created_at)"
                " VALUES (?, ?, 'open', ?, ?)",
                (redact_out(title), redact_out(body), fingerprint, self.clock.now()),
            )
            issue_id = int(cur.lastrowid or 0)
            _add_labels(conn, issue_id, labels)
            return self._load(conn, issue_id), True

    def find_open(self, fingerprint: str) -> Issue | None:
        """The open issue with this fingerprint, if any."""
        with self._read() as conn:
            issue_id = _open_id(conn, fingerprint)
            return None if issue_id is None else self._load(conn, issue_id)

    def get(self, issue_id: int) -> Issue:
        """One issue with its labels and comments; NotFound if missing."""
        with self._read() as conn:
            return self._load(conn, issue_id)

    def list_issues(self, state: Literal["open", "closed", "all"] = "open") -> list[Issue]:
        """Issues in a state, newest first, with labels and comments."""
        if state not in ("open", "closed", "all"):
            raise ConfigError(f"state: expected open, closed or all, got {state!r}")
        with self._read() as conn:
            if state == "all":
                rows = conn.execute("SELECT id FROM issues ORDER BY created_at DESC, id DESC").fetchall()
            else:
                rows = conn.execute(
                    "SELECT id FROM issues WHERE state = ? ORDER BY created_at DESC, id DESC", (state,)
                ).fetchall()
            return [self._load(conn, int(row["id"])) for row in rows]

    def comment(
        self, issue_id: int, body: str, key: str | None = None, *, author: str = "sregraph"
    ) -> Comment:
        """Add a comment; a repeated `key` on the same issue returns the first comment instead."""
        with self._write() as conn:
            _require(conn, issue_id)
            if key is not None:
                row = conn.execute(
                    "SELECT * FROM comments WHERE issue_id = ? AND key = ?", (issue_id, key)
                ).fetchone()
                if row is not None:
                    return _comment(row)
            cur = conn.execute(
                "INSERT INTO comments (issue_id, author, body, key, created_at) VALUES (?, ?, ?, ?, ?)",
                (issue_id, author, redact_out(body), key, self.clock.now()),
            )
            row = conn.execute("SELECT * FROM comments WHERE id = ?", (cur.lastrowid,)).fetchone()
            return _comment(row)

    def set_labels(self, issue_id: int, add: list[str], remove: list[str] | None = None) -> Issue:
        """Remove then add labels; a label appears at most once."""
        with self._write() as conn:
            _require(conn, issue_id)
            if remove:
                conn.executemany(
                    "DELETE FROM labels WHERE issue_id = ? AND name = ?",
                    [(issue_id, name) for name in remove],
                )
            _add_labels(conn, issue_id, add)
            return self._load(conn, issue_id)

    def close(self, issue_id: int) -> Issue:
        """Close the issue; closing a closed issue changes nothing."""
        with self._write() as conn:
            row = _require(conn, issue_id)
            if row["state"] != "closed":
                conn.execute(
                    "UPDATE issues SET state = 'closed', closed_at = ? WHERE id = ?",
                    (self.clock.now(), issue_id),
                )
            return self._load(conn, issue_id)

    # ------------------------------------------------------------------ extras

    def reopen(self, issue_id: int) -> Issue:
        """Reopen a closed issue; Refused if another issue with its fingerprint is already open."""
        with self._write() as conn:
            row = _require(conn, issue_id)
            if row["state"] == "open":
                return self._load(conn, issue_id)
            fingerprint = row["fingerprint"]
            other = _open_id(conn, fingerprint) if fingerprint is not None else None
            if other is not None:
                raise Refused(
                    f"cannot reopen issue {issue_id}: issue {other} with fingerprint {fingerprint!r} is open"
                )
            conn.execute("UPDATE issues SET state = 'open', closed_at = NULL WHERE id = ?", (issue_id,))
            return self._load(conn, issue_id)

    def set_status(self, issue_id: int, status: str) -> Issue:
        """Make `status:<status>` the issue's only status label."""
        name = status if status.startswith(STATUS_PREFIX) else STATUS_PREFIX + status
        if name == STATUS_PREFIX:
            raise ConfigError("status: must not be empty")
        with self._write() as conn:
            _require(conn, issue_id)
            conn.execute(
                "DELETE FROM labels WHERE issue_id = ? AND name GLOB 'status:*' AND name != ?",
                (issue_id, name),
            )
            _add_labels(conn, issue_id, [name])
            return self._load(conn, issue_id)

    def status(self, issue_id: int) -> str | None:
        """The issue's status (without the `status:` prefix), if it has one."""
        statuses = [label for label in self.get(issue_id).labels if label.startswith(STATUS_PREFIX)]
        return statuses[0][len(STATUS_PREFIX) :] if statuses else None

    def comments_since(self, issue_id: int, after_id: int = 0) -> list[Comment]:
        """Comments on the issue whose id is greater than `after_id`, oldest first."""
        with self._read() as conn:
            _require(conn, issue_id)
            rows = conn.execute(
                "SELECT * FROM comments WHERE issue_id = ? AND id > ? ORDER BY id", (issue_id, after_id)
            ).fetchall()
            return [_comment(row) for row in rows]

    # ------------------------------------------------------------------ helpers

    def _load(self, conn: sqlite3.Connection, issue_id: int) -> Issue:
        row = _require(conn, issue_id)
        labels = conn.execute(
            "SELECT name FROM labels WHERE issue_id = ? ORDER BY rowid", (issue_id,)
        ).fetchall()
        comments = conn.execute(
            "SELECT * FROM comments WHERE issue_id = ? ORDER BY id", (issue_id,)
        ).fetchall()
        return Issue(
            id=int(row["id"]),
            title=row["title"],
            body=row["body"],
            state=row["state"],
            labels=[label["name"] for label in labels],
            fingerprint=row["fingerprint"],
            url=f"local://incidents/{row['id']}",
            comments=[_comment(comment) for comment in comments],
            created_at=float(row["created_at"]),
        )


def _require(conn: sqlite3.Connection, issue_id: int) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM issues WHERE id = ?", (issue_id,)).fetchone()
    if row is None:
        raise NotFound(f"incident issue {issue_id} does not exist")
    return row


def _open_id(conn: sqlite3.Connection, fingerprint: str) -> int | None:
    row = conn.execute(
        "SELECT id FROM issues WHERE fingerprint = ? AND state = 'open' ORDER BY id LIMIT 1", (fingerprint,)
    ).fetchone()
    return None if row is None else int(row["id"])


def _add_labels(conn: sqlite3.Connection, issue_id: int, names: list[str]) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO labels (issue_id, name) VALUES (?, ?)",
        [(issue_id, name) for name in dict.fromkeys(names) if name],
    )


def _comment(row: sqlite3.Row) -> Comment:
    return Comment(
        id=int(row["id"]), author=row["author"], body=row["body"], created_at=float(row["created_at"])
    )


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite rolls some failed transactions back by itself; a second ROLLBACK would raise.
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _translate(exc: sqlite3.Error, what: str) -> ToolError:
    # "locked"/"busy" means another process held the write lock past the busy timeout: a retry can succeed.
    message = f"{what}: {exc}"
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
        return TransientError(message)
    return ToolError(message)
