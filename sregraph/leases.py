"""Incident leases: at most one worker process runs an incident at a time, on one machine or many.

A lease is a row (incident, owner, expiry by the database's clock). Taking one succeeds only when no live lease
exists; the holder renews it every `ttl/3` from a heartbeat thread. A worker that dies stops renewing, and after
`ttl` another worker may take the incident and resume it from its last checkpoint.

The holder never acts on a lease it cannot prove: it counts its lease valid until `ttl - margin` after it *sent*
the last renewal that succeeded (measured on its own monotonic clock). The database set the expiry from a later
instant, so the holder's deadline always falls before the expiry another worker waits for. A worker cut off
from the database therefore stops acting (the fence below raises) before its lease can be taken over.

Every lease taken is written to `lease_log` with its last expiry and its release, so a test (or an auditor) can
check from the database alone that no two workers ever held an incident at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tools.base import SregraphError
from tools.sql import Database, SqlError

log = logging.getLogger("sregraph.leases")

MIGRATIONS = [
    """
CREATE TABLE IF NOT EXISTS leases (incident_id TEXT PRIMARY KEY, owner TEXT NOT NULL,
    acquired_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS lease_log (incident_id TEXT NOT NULL, owner TEXT NOT NULL,
    acquired_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL, released_at DOUBLE PRECISION,
    PRIMARY KEY (incident_id, owner, acquired_at))
""",
]
"""The leases' schema (tools.sql migrations)."""


class LeaseLost(SregraphError):
    """This worker no longer holds (or cannot prove it holds) the incident's lease: it must stop acting."""


def new_owner() -> str:
    """A name for this worker process, unique across machines and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass
class _Held:
    acquired_at: float
    """Database time the lease was taken (identifies this tenure)."""
    deadline: float
    """Local monotonic time after which the holder may no longer act."""


class Leases:
    """This worker's leases on one database, renewed by a heartbeat thread while any is held."""

    def __init__(
        self,
        db: Database,
        owner: str | None = None,
        ttl_s: float = 15.0,
        monotonic: Callable[[], float] = time.monotonic,
        reap_local: bool = True,
    ) -> None:
        self.db = db
        self.owner = owner or new_owner()
        self.ttl_s = ttl_s
        self.margin_s = ttl_s / 5
        """Kept in hand: an action checked just before the deadline still ends before the expiry."""
        self.monotonic = monotonic
        self.reap_local = reap_local
        """Take over at once a lease whose holder was a process of this machine that no longer exists (a restart
        after a crash need not wait out the ttl); other machines' leases always run their course."""
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.db.migrate("leases", MIGRATIONS)

    # ------------------------------------------------------------------ taking and giving back

    def acquire(self, incident_id: str) -> bool:
        """Take the incident's lease; False while another worker holds a live one."""
        sent = self.monotonic()
        with self.db.connect() as conn:
            now = float(conn.execute(f"SELECT {self.db.now_sql}").fetchone()[0])
            taken = conn.execute(
                "INSERT INTO leases VALUES (?, ?, ?, ?) ON CONFLICT (incident_id) DO UPDATE SET owner = excluded.owner,"
                " acquired_at = excluded.acquired_at, expires_at = excluded.expires_at WHERE leases.expires_at < ?",
                (incident_id, self.owner, now, now + self.ttl_s, now),
            ).rowcount
            if taken != 1 and self.reap_local:
                taken = self._reap(conn, incident_id, now)
            if taken == 1:
                # The insert may have waited for a holder giving the lease back: the tenure starts now, after that
                # release committed, not when this transaction read the clock.
                now = float(conn.execute(f"SELECT {self.db.now_sql}").fetchone()[0])
                conn.execute(
                    "UPDATE leases SET acquired_at = ?, expires_at = ? WHERE incident_id = ? AND owner = ?",
                    (now, now + self.ttl_s, incident_id, self.owner),
                )
                conn.execute(
                    "INSERT INTO lease_log VALUES (?, ?, ?, ?, NULL)",
                    (incident_id, self.owner, now, now + self.ttl_s),
                )
        if taken != 1:
            return False
        with self._lock:
            self._held[incident_id] = _Held(now, sent + self.ttl_s - self.margin_s)
            if self._thread is None:
                # The heartbeat runs while this worker holds a lease, and ends with the last one.
                self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
                self._thread.start()
        return True

    def _reap(self, conn: Any, incident_id: str, now: float) -> int:
        """Take a live lease from a dead process of this machine; 1 if taken."""
        row = conn.execute(
            "SELECT owner, acquired_at FROM leases WHERE incident_id = ?", (incident_id,)
        ).fetchone()
        if row is None or not _dead_here(row[0]):
            return 0
        taken = int(
            conn.execute(
                "UPDATE leases SET owner = ?, acquired_at = ?, expires_at = ? "
                "WHERE incident_id = ? AND owner = ? AND acquired_at = ?",
                (self.owner, now, now + self.ttl_s, incident_id, row[0], row[1]),
            ).rowcount
        )
        if taken:
            # Its holder is gone, so its tenure ended no later than now.
            conn.execute(
                "UPDATE lease_log SET released_at = ? WHERE incident_id = ? AND owner = ? AND acquired_at = ?",
                (now, incident_id, row[0], row[1]),
            )
            log.info(
                "lease of %s taken over from %s, a process of this machine that has exited",
                incident_id,
                row[0],
            )
        return taken

    def release(self, incident_id: str) -> None:
        """Give the lease back (the incident is at a checkpoint): another worker may take it at once."""
        with self._lock:
            held = self._held.pop(incident_id, None)
        if held is None:
            return
        try:
            with self.db.connect() as conn:
                now = float(conn.execute(f"SELECT {self.db.now_sql}").fetchone()[0])
                conn.execute(
                    "DELETE FROM leases WHERE incident_id = ? AND owner = ? AND acquired_at = ?",
                    (incident_id, self.owner, held.acquired_at),
                )
                conn.execute(
                    "UPDATE lease_log SET released_at = ? WHERE incident_id = ? AND owner = ? AND acquired_at = ?"
                    " AND released_at IS NULL AND expires_at > ?",
                    (now, incident_id, self.owner, held.acquired_at, now),
                )
        except SqlError as exc:
            # Unreleased, it simply expires: another worker waits at most ttl_s longer.
            log.warning(
                "lease of %s not released (%s); it expires in at most %.0f s", incident_id, exc, self.ttl_s
            )

    # ------------------------------------------------------------------ proving it

    def valid(self, incident_id: str) -> bool:
        """Whether this worker may still act on the incident."""
        with self._lock:
            held = self._held.get(incident_id)
        return held is not None and self.monotonic() < held.deadline

    def check(self, incident_id: str) -> None:
        """Raise LeaseLost unless `valid(incident_id)`."""
        if not self.valid(incident_id):
            raise LeaseLost(
                f"incident {incident_id}: this worker's lease is gone or unconfirmed; it stops here"
            )

    def held(self) -> list[str]:
        """Incidents this worker holds a lease on (valid or not yet given back)."""
        with self._lock:
            return sorted(self._held)

    def live_elsewhere(self) -> set[str]:
        """Incidents with a live lease of another worker."""
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT incident_id FROM leases WHERE owner <> ? AND expires_at >= {self.db.now_sql}",
                (self.owner,),
            ).fetchall()
        return {r[0] for r in rows}

    # ------------------------------------------------------------------ heartbeat

    def renew(self) -> None:
        """Extend every lease held; one the database no longer gives this worker is dropped (it stops acting)."""
        with self._lock:
            held = dict(self._held)
        if not held:
            return
        sent = self.monotonic()
        renewed: set[str] = set()
        with self.db.connect() as conn:
            now = float(conn.execute(f"SELECT {self.db.now_sql}").fetchone()[0])
            for incident_id, lease in held.items():
                if sent >= lease.deadline:
                    continue  # the worker has already stopped acting on it: it must not come back to life
                done = conn.execute(
                    "UPDATE leases SET expires_at = ? WHERE incident_id = ? AND owner = ? AND acquired_at = ?"
                    " AND expires_at >= ?",
                    (now + self.ttl_s, incident_id, self.owner, lease.acquired_at, now),
                ).rowcount
                if done == 1:
                    conn.execute(
                        "UPDATE lease_log SET expires_at = ? WHERE incident_id = ? AND owner = ? AND acquired_at = ?",
                        (now + self.ttl_s, incident_id, self.owner, lease.acquired_at),
                    )
                    renewed.add(incident_id)
        with self._lock:
            for incident_id, lease in held.items():
                current = self._held.get(incident_id)
                if current is not lease:
                    continue  # released meanwhile
                if incident_id in renewed:
                    current.deadline = sent + self.ttl_s - self.margin_s
                else:
                    current.deadline = 0.0
                    log.error("lease of %s lost: another worker may take it", incident_id)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            with self._lock:
                if not self._held:
                    self._thread = None
                    return
            try:
                self.renew()
            except SqlError as exc:
                # Unconfirmed leases run out on their own deadline; the next beat tries again.
                log.error("lease heartbeat failed: %s", exc)
        with self._lock:
            self._thread = None

    def stop_heartbeat(self) -> None:
        """Stop renewing (the worker is stopping; idempotent)."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=self.ttl_s)


def _dead_here(owner: str) -> bool:
    """Whether `owner` (new_owner's host:pid:token) names a process of this machine that no longer runs."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, another user's
    return _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """A process that exited but whose parent has not reaped it yet (it can no longer act)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def lease_log(db: Database) -> list[dict[str, Any]]:
    """Every lease ever taken, oldest first: incident, owner, acquired, last expiry, released (or None)."""
    with db.read() as conn:
        rows = conn.execute(
            "SELECT incident_id, owner, acquired_at, expires_at, released_at FROM lease_log ORDER BY acquired_at"
        ).fetchall()
    return [
        dict(zip(("incident_id", "owner", "acquired_at", "expires_at", "released_at"), r, strict=True))
        for r in rows
    ]


def overlaps(log_rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of tenures of one incident that overlap in time (each ends at its release, else its last expiry)."""
    by_incident: dict[str, list[dict[str, Any]]] = {}
    for row in log_rows:
        by_incident.setdefault(row["incident_id"], []).append(row)
    bad = []
    for rows in by_incident.values():
        rows.sort(key=lambda r: r["acquired_at"])
        latest: dict[str, Any] | None = None
        for row in rows:
            if latest is not None and row["acquired_at"] < _end(latest):
                bad.append((latest, row))
            if latest is None or _end(row) > _end(latest):
                latest = row
    return bad


def _end(row: dict[str, Any]) -> float:
    return float(row["released_at"] if row["released_at"] is not None else row["expires_at"])
